package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestPrepareStateDir(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Run("created 0700", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "a", "state")
		if err := prepareStateDir(dir, log); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("state dir: %v, mode %v; want 0700", err, fi.Mode().Perm())
		}
	})
	t.Run("an older, wider one is narrowed", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		outside := filepath.Join(t.TempDir(), "outside")
		for _, err := range []error{
			os.Mkdir(dir, 0o755), os.Chmod(dir, 0o755),
			os.WriteFile(filepath.Join(dir, "announced.json"), []byte("{}"), 0o644),
			os.WriteFile(filepath.Join(dir, "identity.key"), []byte("k"), 0o600),
			os.Mkdir(filepath.Join(dir, "spool"), 0o755),
			os.WriteFile(outside, nil, 0o644),
			os.Symlink(outside, filepath.Join(dir, "link")),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		os.Chmod(filepath.Join(dir, "announced.json"), 0o644)
		os.Chmod(outside, 0o644)
		if err := prepareStateDir(dir, log); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]os.FileMode{
			".": 0o700, "announced.json": 0o600, "identity.key": 0o600, "spool": 0o700,
		} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil || fi.Mode().Perm() != want {
				t.Errorf("%s: %v, mode %04o; want %04o", name, err, fi.Mode().Perm(), want)
			}
		}
		if fi, _ := os.Stat(outside); fi.Mode().Perm() != 0o644 {
			t.Errorf("a file outside the state dir, linked from it, changed mode to %04o", fi.Mode().Perm())
		}
	})
	t.Run("not a directory", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		os.WriteFile(file, nil, 0o600)
		if err := prepareStateDir(file, log); err == nil {
			t.Error("a file was taken as the state dir")
		}
	})
}
