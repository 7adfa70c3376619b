package daemon

import (
	"runtime/debug"
	"sync"
)

// Version is the peerix version, set at build time with
// -ldflags "-X github.com/peerix/peerix/internal/daemon.Version=...".
var Version = "0.1.0-dev"

// Commit is the git commit peerix was built from, set at build time with
// -ldflags "-X github.com/peerix/peerix/internal/daemon.Commit=$(git rev-parse HEAD)"
// (the Makefile does). Without it, BuildCommit falls back to what the Go
// toolchain recorded (vcs.revision, when built inside a git checkout).
var Commit = ""

// commitLen: commits are shown abbreviated, as git does with some margin.
const commitLen = 12

var buildCommit = sync.OnceValue(func() string {
	c, dirty := Commit, false
	if c == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					c = s.Value
				case "vcs.modified":
					dirty = s.Value == "true"
				}
			}
		}
	}
	if c == "" {
		return "unknown"
	}
	if len(c) > commitLen {
		c = c[:commitLen]
	}
	if dirty {
		c += "-dirty"
	}
	return c
})

// BuildCommit is the abbreviated commit of this build ("-dirty" when the
// toolchain saw uncommitted changes), or "unknown".
func BuildCommit() string { return buildCommit() }

// FullVersion is the version with its commit: "0.1.0-dev (commit 1a2b3c4d5e6f)".
func FullVersion() string { return Version + " (commit " + BuildCommit() + ")" }
