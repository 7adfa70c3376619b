//go:build !unix

package connlimit

func nofile() int { return 0 }
