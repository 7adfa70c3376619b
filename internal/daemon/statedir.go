package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// prepareStateDir creates the state dir 0700, or narrows one that group or
// others may enter to 0700, and takes group and other access from the
// files in it (an older peerix wrote announced.json 0644): it holds the
// peer identity, what this machine shares and asked for, none of which is
// anybody else's business. Everything the daemon creates there later is
// 0600 (files) or 0700 (directories); restrictUmask makes sure of it.
func prepareStateDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state dir %s: not a directory", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if err := os.Chmod(dir, perm&^0o077); err != nil {
			return fmt.Errorf("state dir %s: mode %04o lets group or others in, and it cannot be narrowed: %w (chmod 700 %s)", dir, perm, err, dir)
		}
		log.Info("state dir narrowed: group and others had access", "dir", dir, "was", fmt.Sprintf("%04o", perm), "now", fmt.Sprintf("%04o", perm&^0o077))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink != 0 {
			continue // never follow a link out of the state dir
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			p := filepath.Join(dir, e.Name())
			if err := os.Chmod(p, perm&^0o077); err != nil {
				log.Warn("state file readable by group or others, and its mode cannot be narrowed", "file", p, "mode", fmt.Sprintf("%04o", perm), "err", err)
				continue
			}
			log.Info("state file narrowed: group and others had access", "file", p, "was", fmt.Sprintf("%04o", perm))
		}
	}
	return nil
}
