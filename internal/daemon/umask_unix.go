//go:build unix

package daemon

import "syscall"

// restrictUmask makes every file the daemon creates 0600 and every
// directory 0700, whatever mode the code creating it asked for: the daemon
// writes only in its state dir, which is nobody else's business.
func restrictUmask() { syscall.Umask(0o077) }
