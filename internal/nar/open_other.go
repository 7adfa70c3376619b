//go:build !unix

package nar

import (
	"io"
	"os"
)

func readSmall(path string, b []byte, off int64) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.ReadAt(b, off)
	if err == io.EOF {
		err = nil
	}
	return n, err
}

func openFile(path string) (*os.File, error) {
	return os.Open(path)
}
