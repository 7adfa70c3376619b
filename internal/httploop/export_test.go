package httploop

import "os"

// SetFileHolds replaces the check that a file holds a chunk's bytes, for
// a test (not parallel) to send one from a file that does not; it returns
// the restore.
func SetFileHolds(f func(*os.File, int64) bool) (restore func()) {
	old := fileHolds
	fileHolds = f
	return func() { fileHolds = old }
}
