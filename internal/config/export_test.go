package config

import "flag"

// SetSystemConfigDir points the system-wide config directory (/etc/peerix)
// elsewhere for a test and returns a function restoring it.
func SetSystemConfigDir(dir string) (restore func()) {
	old := systemConfigDir
	systemConfigDir = dir
	return func() { systemConfigDir = old }
}

// FlagNames lists the flags of `peerix serve` or `peerix tracker`.
func FlagNames(cmd string) []string {
	var flags *flag.FlagSet
	if cmd == "serve" {
		flags = serveFlags(&Serve{})
	} else {
		flags = trackerFlags(&Tracker{})
	}
	var names []string
	flags.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	return names
}
