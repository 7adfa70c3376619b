//go:build unix

package nar_test

import (
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"

	"github.com/peerix/peerix/internal/nar"
)

func TestUnsupported(t *testing.T) {
	dir := t.TempDir()
	fifo := dir + "/sub/fifo"
	mkdir(t, dir+"/sub")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	for _, p := range []string{dir, fifo} {
		if _, err := nar.Size(p); !errors.Is(err, nar.ErrUnsupported) || !strings.Contains(err.Error(), fifo) {
			t.Errorf("Size(%s) error = %v, want ErrUnsupported naming %s", p, err, fifo)
		}
		if _, err := nar.Dump(io.Discard, p, 0); !errors.Is(err, nar.ErrUnsupported) || !strings.Contains(err.Error(), fifo) {
			t.Errorf("Dump(%s) error = %v, want ErrUnsupported naming %s", p, err, fifo)
		}
		if _, err := io.ReadAll(nar.Open(p, 0)); !errors.Is(err, nar.ErrUnsupported) {
			t.Errorf("Open(%s) ReadAll error = %v, want ErrUnsupported", p, err)
		}
	}
}
