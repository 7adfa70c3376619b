//go:build unix

package connlimit

import "syscall"

func nofile() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	if l.Cur > 1<<30 {
		return 1 << 30
	}
	return int(l.Cur)
}
