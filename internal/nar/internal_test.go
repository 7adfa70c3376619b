package nar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

// TestChangeAfterLstat changes a file between the lstat of the walk and the
// reading of its contents, for every body size class and for offsets
// inside the body.
func TestChangeAfterLstat(t *testing.T) {
	defer func() { testHookOpen = nil }()
	changes := map[string]func(path string) error{
		"grow": func(path string) error {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.Write([]byte("x"))
			return err
		},
		"shrink": func(path string) error {
			fi, err := os.Stat(path)
			if err != nil {
				return err
			}
			return os.Truncate(path, fi.Size()-1)
		},
		"remove": os.Remove,
		"replace with directory": func(path string) error {
			if err := os.Remove(path); err != nil {
				return err
			}
			return os.Mkdir(path, 0o755)
		},
	}
	for name, change := range changes {
		for _, size := range []int{0, 1, 100, smallFile, smallFile + 1, bufSize + 1, 3 << 20} {
			if size == 0 && name == "shrink" {
				continue
			}
			for _, skipInBody := range []int64{0, 1, int64(size) / 2} {
				if skipInBody > 0 && skipInBody >= int64(size) {
					continue
				}
				t.Run(fmt.Sprintf("%s/%d/%d", name, size, skipInBody), func(t *testing.T) {
					dir := t.TempDir()
					path := dir + "/f"
					if err := os.WriteFile(dir+"/e", []byte("before"), 0o644); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(path, bytes.Repeat([]byte("y"), size), 0o644); err != nil {
						t.Fatal(err)
					}
					var full bytes.Buffer
					if _, err := Dump(&full, dir, 0); err != nil {
						t.Fatal(err)
					}
					off := int64(0)
					if skipInBody > 0 {
						body := bytes.LastIndex(full.Bytes(), []byte("contents")) + 16
						off = int64(body) + skipInBody
					}
					testHookOpen = func(p string) {
						if p == path {
							if err := change(p); err != nil {
								t.Error(err)
							}
						}
					}
					defer func() { testHookOpen = nil }()
					_, err := Dump(io.Discard, dir, off)
					if !errors.Is(err, ErrChanged) {
						t.Fatalf("error = %v, want ErrChanged", err)
					}
					if !strings.Contains(err.Error(), path) {
						t.Fatalf("error %q does not name %s", err, path)
					}
				})
			}
		}
	}
}

func TestStrLen(t *testing.T) {
	for n, want := range map[int64]int64{0: 8, 1: 16, 7: 16, 8: 16, 9: 24, 13: 24} {
		if got := strLen(n); got != want {
			t.Errorf("strLen(%d) = %d, want %d", n, got, want)
		}
	}
}
