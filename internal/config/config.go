// Package config turns the command line and TOML config file of `peerix serve`
// and `peerix tracker` into validated settings.
//
// There is one mechanism for both: a flag.FlagSet defines every option once,
// with its default and usage. The config file is TOML whose keys are named
// exactly like the flags (`store-root = "/x"`, `lan = true`, `p2p-port = 0`,
// `filter-pattern = ["*-secret*"]`); each key is applied through the same flag
// definition, type-checked against the flag's kind:
//
//	bool flag        TOML boolean
//	int flag         TOML integer
//	duration flag    TOML string, as for time.ParseDuration ("500ms", "2m")
//	string flag      TOML string
//	repeated flag    TOML array of strings (a single string is one element)
//
// Flags given on the command line win: the file's value for them is ignored.
// An unknown key, a key of the wrong type or a bad value is an error naming
// the key and the file. Repeated flags (--filter-pattern, --trusted-public-key)
// accumulate on the command line; a file's array replaces the default.
//
// Which file: --config FILE (it must exist); else the user's file if it
// exists ($XDG_CONFIG_HOME/peerix/NAME, XDG_CONFIG_HOME defaulting to
// $HOME/.config); else the system's (/etc/peerix/NAME) if it exists; else
// none. NAME is config.toml for `serve` and tracker.toml for `tracker` (the
// two take different keys, some of the same name, e.g. listen).
//
// --check-config is a flag of both commands but not a key of the file: the
// caller prints the effective configuration (WriteConfig) and exits instead
// of running, so that an operator or a package build can check a file and
// its flags without starting anything.
//
// -h/--help makes ParseServe and ParseTracker return flag.ErrHelp; the caller
// prints ServeUsage or TrackerUsage (to stdout) and exits 0. Every other error
// is one line, ready to print after "peerix: ".
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/peerix/peerix/internal/signing"
)

// Serve is the configuration of `peerix serve`.
type Serve struct {
	Listen     string        // --listen HOST:PORT of the HTTP binary cache; default 0.0.0.0:12304
	Mode       string        // --mode: p2p (default), lan or local
	StoreRoot  string        // --store-root: root of the Nix store to serve ("/" or a chroot store)
	StateDir   string        // --state-dir; default /var/lib/peerix
	Tracker    string        // --tracker URL (http or https, no trailing slash); "" = none
	P2PPort    int           // --p2p-port for libp2p TCP and QUIC; default 12306, 0 = any free port
	LAN        bool          // --lan: LAN discovery (default on in p2p and lan mode, off in local mode)
	LANPort    int           // --lan-port: UDP port of LAN discovery; default 12304
	LANTimeout time.Duration // --lan-timeout: how long to wait for LAN answers; default 500ms

	Upstream          string   // --upstream cache URL (no trailing slash); default https://cache.nixos.org
	Filter            string   // --filter: upstream, patterns or none; default upstream in p2p/lan mode, patterns in local mode
	FilterPatterns    []string // --filter-pattern GLOB, repeated: extra names never to share
	NoVerify          bool     // --no-verify: hand peers' narinfos to Nix unverified
	TrustedPublicKeys []string // --trusted-public-key KEY, repeated, "name:base64" (checked to parse)

	// Priority is the nix-cache-info Priority (--priority). Nix asks caches in
	// increasing order; the default 30 (as nix-serve and harmonia) puts peerix
	// before cache.nixos.org (40).
	Priority int

	SigningKeyFile string // --signing-key-file, else $NIX_SECRET_KEY_FILE; "" = do not sign
	Verbose        bool   // --verbose: debug logging
	ConfigFile     string // the config file that was read, "" if none
	CheckConfig    bool   // --check-config: print the effective configuration and exit
}

// Tracker is the configuration of `peerix tracker`.
type Tracker struct {
	Listen      string        // --listen HOST:PORT; default 0.0.0.0:12305
	DB          string        // --db: SQLite file path or postgres:// URL; default /var/lib/peerix-tracker/tracker.db
	RelayPort   int           // --relay-port of the libp2p relay; default 12307, 0 = any free port
	PeerTTL     time.Duration // --peer-ttl: a silent peer is dropped after this; default 2m, must be > 0
	Verbose     bool          // --verbose: debug logging
	ConfigFile  string        // the config file that was read, "" if none
	CheckConfig bool          // --check-config: print the effective configuration and exit
}

// Modes and filters --mode and --filter accept.
var (
	Modes   = []string{"p2p", "lan", "local"}
	Filters = []string{"upstream", "patterns", "none"}
)

// Default values that other packages may want to show or compare with.
const (
	DefaultServeListen   = "0.0.0.0:12304"
	DefaultTrackerListen = "0.0.0.0:12305"
	DefaultP2PPort       = 12306
	DefaultLANPort       = 12304
	DefaultPriority      = 30
	DefaultUpstream      = "https://cache.nixos.org"
	DefaultStateDir      = "/var/lib/peerix"
	DefaultTrackerDB     = "/var/lib/peerix-tracker/tracker.db"
	DefaultPeerTTL       = 2 * time.Minute
	DefaultLANTimeout    = 500 * time.Millisecond
)

// DefaultRelayPort, the tracker's, differs from DefaultP2PPort so that a
// daemon and a tracker on one machine do not clash with their defaults.
const DefaultRelayPort = 12307

// systemConfigDir holds the system-wide config files; a variable so tests
// need not depend on the machine's /etc.
var systemConfigDir = "/etc/peerix"

// maxConfigSize bounds the config file; real ones are a few hundred bytes.
const maxConfigSize = 1 << 20

func serveFlags(s *Serve) *flag.FlagSet {
	flags := newFlagSet("serve")
	flags.String("config", "", "read settings from `FILE` (default ~/.config/peerix/config.toml, else /etc/peerix/config.toml, if present)")
	flags.StringVar(&s.Listen, "listen", DefaultServeListen, "serve the HTTP binary cache on `HOST:PORT`")
	flags.StringVar(&s.Mode, "mode", "p2p", "`p2p|lan|local`: find peers through libp2p and the tracker (p2p), by LAN broadcast only (lan), or not at all (local)")
	flags.StringVar(&s.StoreRoot, "store-root", "/", "serve the Nix store under `DIR` (a chroot store, as made by nix --store DIR)")
	flags.StringVar(&s.StateDir, "state-dir", DefaultStateDir, "keep peer identity, stats and caches in `DIR`")
	flags.StringVar(&s.Tracker, "tracker", "", "tracker base `URL` (http or https) for p2p mode")
	flags.IntVar(&s.P2PPort, "p2p-port", DefaultP2PPort, "libp2p TCP and QUIC `PORT` (0: any free port)")
	flags.BoolVar(&s.LAN, "lan", true, "in p2p mode, also find peers on the LAN (summaries and UDP broadcast); --lan=false turns it off")
	flags.IntVar(&s.LANPort, "lan-port", DefaultLANPort, "UDP `PORT` of LAN discovery (the original peerix uses 12304)")
	flags.DurationVar(&s.LANTimeout, "lan-timeout", DefaultLANTimeout, "how long to wait for answers from LAN peers (a `DURATION`)")
	flags.StringVar(&s.Upstream, "upstream", DefaultUpstream, "upstream binary cache `URL` for the filter and verifier")
	flags.StringVar(&s.Filter, "filter", "", "`upstream|patterns|none`: which local paths peers may fetch: those the upstream has, all but the deny-list of secret-looking names, or all (default upstream in p2p and lan mode, patterns in local mode)")
	flags.Var(newStringList(&s.FilterPatterns), "filter-pattern", "never share store paths whose name matches `GLOB` (repeatable)")
	flags.BoolVar(&s.NoVerify, "no-verify", false, "hand peers' narinfos to Nix without verifying them")
	flags.Var(newStringList(&s.TrustedPublicKeys), "trusted-public-key", "accept peers' paths signed by `KEY` (name:base64; repeatable)")
	flags.IntVar(&s.Priority, "priority", DefaultPriority, "nix-cache-info `PRIORITY` (lower is asked first; cache.nixos.org is 40)")
	flags.StringVar(&s.SigningKeyFile, "signing-key-file", "", "sign local narinfos with the Nix secret key in `FILE` (default $NIX_SECRET_KEY_FILE)")
	flags.BoolVar(&s.Verbose, "verbose", false, "log debug messages")
	flags.BoolVar(&s.CheckConfig, "check-config", false, "print the effective configuration (flags, config file, defaults) as TOML and exit: 0 if it is valid")
	return flags
}

func trackerFlags(t *Tracker) *flag.FlagSet {
	flags := newFlagSet("tracker")
	flags.String("config", "", "read settings from `FILE` (default ~/.config/peerix/tracker.toml, else /etc/peerix/tracker.toml, if present)")
	flags.StringVar(&t.Listen, "listen", DefaultTrackerListen, "serve the tracker API on `HOST:PORT`")
	flags.StringVar(&t.DB, "db", DefaultTrackerDB, "a SQLite file path or a postgres:// `URL`")
	flags.IntVar(&t.RelayPort, "relay-port", DefaultRelayPort, "libp2p relay TCP and QUIC `PORT` (0: any free port)")
	flags.DurationVar(&t.PeerTTL, "peer-ttl", DefaultPeerTTL, "forget a peer that has not sent a heartbeat for `DURATION`")
	flags.BoolVar(&t.Verbose, "verbose", false, "log debug messages")
	flags.BoolVar(&t.CheckConfig, "check-config", false, "print the effective configuration (flags, config file, defaults) as TOML and exit: 0 if it is valid")
	return flags
}

// commandLineOnly are the flags that are not keys of the config file.
var commandLineOnly = map[string]bool{"config": true, "check-config": true}

// ServeKeys lists the keys of the config file of `peerix serve`, sorted:
// its flags but --config and --check-config.
func ServeKeys() []string { return fileKeys(serveFlags(&Serve{})) }

// TrackerKeys lists the keys of the config file of `peerix tracker`, sorted.
func TrackerKeys() []string { return fileKeys(trackerFlags(&Tracker{})) }

func fileKeys(flags *flag.FlagSet) []string {
	var keys []string
	flags.VisitAll(func(f *flag.Flag) {
		if !commandLineOnly[f.Name] {
			keys = append(keys, f.Name)
		}
	})
	return keys
}

func newFlagSet(name string) *flag.FlagSet {
	flags := flag.NewFlagSet("peerix "+name, flag.ContinueOnError)
	// Errors are returned, not printed; usage is printed by the caller.
	flags.SetOutput(io.Discard)
	flags.Usage = func() {}
	return flags
}

// ParseServe parses the arguments of `peerix serve` (without "serve") and
// the config file. getenv reads the environment (HOME, XDG_CONFIG_HOME,
// NIX_SECRET_KEY_FILE); pass os.Getenv. It returns flag.ErrHelp for -h/--help.
func ParseServe(args []string, getenv func(string) string) (*Serve, error) {
	getenv = orEmpty(getenv)
	s := &Serve{}
	flags := serveFlags(s)
	p, err := load(flags, args, getenv, "config.toml")
	if err != nil {
		return nil, err
	}
	s.ConfigFile = p.file
	s.Upstream = strings.TrimRight(s.Upstream, "/")
	s.Tracker = strings.TrimRight(s.Tracker, "/")

	if !slices.Contains(Modes, s.Mode) {
		return nil, p.errorf("mode", "must be one of %s, got %q", strings.Join(Modes, ", "), s.Mode)
	}
	if s.Filter == "" && !p.isSet("filter") {
		if s.Mode == "local" {
			// Local mode serves whoever reaches --listen (0.0.0.0 by
			// default) with no upstream to ask: the deny-list at least
			// keeps secret-looking paths in. --filter none serves all.
			s.Filter = "patterns"
		} else {
			s.Filter = "upstream"
		}
	}
	if !slices.Contains(Filters, s.Filter) {
		return nil, p.errorf("filter", "must be one of %s, got %q", strings.Join(Filters, ", "), s.Filter)
	}
	switch {
	case s.Mode == "local" && s.LAN && p.isSet("lan"):
		return nil, p.errorf("lan", "cannot be used with mode local, which looks for no peers (use --mode lan, or --mode p2p)")
	case s.Mode == "local":
		s.LAN = false
	case s.Mode == "lan" && !s.LAN:
		return nil, p.errorf("lan", "cannot be false in mode lan, which finds peers only on the LAN (use --mode local for none)")
	}
	if err := checkListen(s.Listen); err != nil {
		return nil, p.errorf("listen", "%v", err)
	}
	if err := checkPort(s.P2PPort); err != nil {
		return nil, p.errorf("p2p-port", "%v", err)
	}
	if err := checkPort(s.LANPort); err != nil {
		return nil, p.errorf("lan-port", "%v", err)
	}
	if s.LANTimeout <= 0 {
		return nil, p.errorf("lan-timeout", "must be positive, got %v", s.LANTimeout)
	}
	if err := checkHTTPURL(s.Upstream); err != nil {
		return nil, p.errorf("upstream", "%v", err)
	}
	if s.Tracker != "" {
		if err := checkHTTPURL(s.Tracker); err != nil {
			return nil, p.errorf("tracker", "%v", err)
		}
	}
	if s.StoreRoot == "" {
		return nil, p.errorf("store-root", "must not be empty")
	}
	if s.StateDir == "" {
		return nil, p.errorf("state-dir", "must not be empty")
	}
	if s.Priority < 0 {
		return nil, p.errorf("priority", "must be 0 or more, got %d", s.Priority)
	}
	for _, pat := range s.FilterPatterns {
		if _, err := filepath.Match(pat, ""); err != nil || pat == "" {
			return nil, p.errorf("filter-pattern", "bad pattern %q", pat)
		}
	}
	if _, err := signing.ParsePublicKeys(s.TrustedPublicKeys); err != nil {
		return nil, p.errorf("trusted-public-key", "%v", err)
	}
	if s.SigningKeyFile == "" {
		s.SigningKeyFile = getenv("NIX_SECRET_KEY_FILE")
	}
	return s, nil
}

// ParseTracker parses the arguments of `peerix tracker` (without "tracker")
// and the config file, as ParseServe does.
func ParseTracker(args []string, getenv func(string) string) (*Tracker, error) {
	getenv = orEmpty(getenv)
	t := &Tracker{}
	flags := trackerFlags(t)
	p, err := load(flags, args, getenv, "tracker.toml")
	if err != nil {
		return nil, err
	}
	t.ConfigFile = p.file
	if err := checkListen(t.Listen); err != nil {
		return nil, p.errorf("listen", "%v", err)
	}
	if err := checkPort(t.RelayPort); err != nil {
		return nil, p.errorf("relay-port", "%v", err)
	}
	if t.PeerTTL <= 0 {
		return nil, p.errorf("peer-ttl", "must be positive, got %v", t.PeerTTL)
	}
	if err := checkDB(t.DB); err != nil {
		return nil, p.errorf("db", "%v", err)
	}
	return t, nil
}

// orEmpty makes a nil getenv an empty environment.
func orEmpty(getenv func(string) string) func(string) string {
	if getenv == nil {
		return func(string) string { return "" }
	}
	return getenv
}

// ServeUsage writes the usage of `peerix serve` to w.
func ServeUsage(w io.Writer) {
	printUsage(w, "serve", serveFlags(&Serve{}), "config.toml", `mode = "lan", filter-pattern = ["*-secret*"]`)
}

// TrackerUsage writes the usage of `peerix tracker` to w.
func TrackerUsage(w io.Writer) {
	printUsage(w, "tracker", trackerFlags(&Tracker{}), "tracker.toml", `peer-ttl = "90s", verbose = true`)
}

func printUsage(w io.Writer, cmd string, flags *flag.FlagSet, file, example string) {
	fmt.Fprintf(w, "usage: peerix %s [flags]\n\nflags:\n", cmd)
	WriteFlags(w, flags)
	fmt.Fprintf(w, `
Every flag but --config and --check-config is also a key of the TOML config
file, named like the flag (e.g. %s).
Flags win over the file. The file is --config FILE, else
~/.config/peerix/%s, else %s, if present.
`, example, file, filepath.Join(systemConfigDir, file))
}

// WriteFlags lists flags as every peerix subcommand's --help does:
//
//	--name PLACEHOLDER
//	      what it does (default value)
func WriteFlags(w io.Writer, flags *flag.FlagSet) {
	flags.VisitAll(func(f *flag.Flag) {
		placeholder, usage := flag.UnquoteUsage(f)
		if _, ok := f.Value.(*stringList); ok {
			placeholder = strings.TrimSuffix(placeholder, " ...")
		}
		if placeholder == "" || placeholder == "value" && isBool(f) {
			fmt.Fprintf(w, "  --%s\n", f.Name)
		} else {
			fmt.Fprintf(w, "  --%s %s\n", f.Name, placeholder)
		}
		fmt.Fprintf(w, "        %s", usage)
		if d := f.DefValue; d != "" && d != "false" && d != "[]" && !strings.Contains(usage, "(default") {
			fmt.Fprintf(w, " (default %s)", d)
		}
		fmt.Fprintln(w)
	})
}

// ServeFlags and TrackerFlags are the flags of `peerix serve` and `peerix
// tracker` (for shell completion; parse with ParseServe and ParseTracker).
func ServeFlags() *flag.FlagSet { return serveFlags(&Serve{}) }

// TrackerFlags: see ServeFlags.
func TrackerFlags() *flag.FlagSet { return trackerFlags(&Tracker{}) }

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// parsed records where each option's value came from, for error messages.
type parsed struct {
	flags   *flag.FlagSet
	file    string          // config file read, "" if none
	cmdline map[string]bool // flags given on the command line
	inFile  map[string]bool // flags whose value came from the file
}

func (p *parsed) isSet(name string) bool { return p.cmdline[name] || p.inFile[name] }

// errorf makes the one-line error for a bad value of option name, naming
// where the value came from: `--mode: ...` or `config FILE: key "mode": ...`.
func (p *parsed) errorf(name, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if p.inFile[name] {
		return fmt.Errorf("config %s: key %q: %s", p.file, name, msg)
	}
	return fmt.Errorf("--%s: %s", name, msg)
}

// load parses args into flags, then applies the config file's keys to the flags
// not given on the command line.
func load(flags *flag.FlagSet, args []string, getenv func(string) string, fileName string) (*parsed, error) {
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, flag.ErrHelp
		}
		return nil, flagError(flags, err)
	}
	if flags.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (peerix %s takes only flags)", flags.Arg(0), strings.TrimPrefix(flags.Name(), "peerix "))
	}
	p := &parsed{flags: flags, cmdline: map[string]bool{}, inFile: map[string]bool{}}
	flags.Visit(func(f *flag.Flag) { p.cmdline[f.Name] = true })

	file, required := "", false
	if p.cmdline["config"] {
		file, required = flags.Lookup("config").Value.String(), true
		if file == "" {
			return nil, errors.New("--config: must name a file")
		}
	} else {
		file = findConfigFile(getenv, fileName)
	}
	if file == "" {
		return p, nil
	}
	data, err := readConfig(file)
	if err != nil {
		if !required && errors.Is(err, fs.ErrNotExist) {
			return p, nil // vanished since we looked
		}
		return nil, fmt.Errorf("config %s: %v", file, err)
	}
	p.file = file
	if err := p.apply(data); err != nil {
		return nil, err
	}
	return p, nil
}

// flagError rewrites the flag package's messages to name flags as users
// write them (--name rather than -name) and to say what a value should be.
func flagError(flags *flag.FlagSet, err error) error {
	msg := err.Error()
	for _, prefix := range []string{"flag provided but not defined: -", "bad flag syntax: "} {
		if rest, ok := strings.CutPrefix(msg, prefix); ok {
			return fmt.Errorf("unknown flag --%s", strings.TrimLeft(rest, "-"))
		}
	}
	if rest, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Errorf("--%s: needs a value", strings.TrimLeft(rest, "-"))
	}
	// invalid value "x" for flag -p2p-port: parse error
	// invalid boolean value "x" for -lan: parse error
	if strings.HasPrefix(msg, "invalid ") {
		for _, sep := range []string{" for flag -", " for -"} {
			if i := strings.Index(msg, sep); i >= 0 {
				name, cause, _ := strings.Cut(msg[i+len(sep):], ": ")
				return fmt.Errorf("--%s: %s: %s", name, msg[:i], explainCause(flags.Lookup(name), cause))
			}
		}
	}
	return err
}

// explainCause replaces the flag package's terse "parse error" by what the
// value of flag f should look like.
func explainCause(f *flag.Flag, cause string) string {
	if f == nil {
		return cause
	}
	getter, ok := f.Value.(flag.Getter)
	if !ok {
		return cause
	}
	switch getter.Get().(type) {
	case bool:
		return "want true or false"
	case int, int64, uint, uint64:
		if cause == "value out of range" {
			return "out of range"
		}
		return "want an integer"
	case time.Duration:
		return `want a duration such as "500ms", "30s" or "2m"`
	}
	return cause
}

// findConfigFile returns the first existing default config file, or "".
// A path that exists but cannot be examined is returned, so that reading it
// reports the problem instead of silently skipping it.
func findConfigFile(getenv func(string) string, fileName string) string {
	var candidates []string
	if dir := getenv("XDG_CONFIG_HOME"); filepath.IsAbs(dir) {
		candidates = append(candidates, filepath.Join(dir, "peerix", fileName))
	} else if home := getenv("HOME"); home != "" {
		candidates = append(candidates, filepath.Join(home, ".config", "peerix", fileName))
	}
	candidates = append(candidates, filepath.Join(systemConfigDir, fileName))
	for _, c := range candidates {
		_, err := os.Stat(c)
		if err == nil || !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return c
		}
	}
	return ""
}

func readConfig(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, unwrapPathError(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, unwrapPathError(err)
	}
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("larger than %d bytes", maxConfigSize)
	}
	return data, nil
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// apply decodes a TOML document and sets each key through its flag.
func (p *parsed) apply(data []byte) error {
	var doc map[string]any
	if _, err := toml.Decode(string(data), &doc); err != nil {
		return fmt.Errorf("config %s: %s", p.file, oneLine(err.Error()))
	}
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		f := p.flags.Lookup(key)
		if f == nil {
			return fmt.Errorf("config %s: unknown key %q%s", p.file, key, p.suggest(key))
		}
		if commandLineOnly[key] {
			return fmt.Errorf("config %s: key %q cannot be set in a config file", p.file, key)
		}
		// Type-check even a key the command line overrides: the file is
		// wrong either way, and would break once the flag is dropped.
		values, err := flagValues(f, doc[key])
		if err != nil {
			return fmt.Errorf("config %s: key %q: %v", p.file, key, err)
		}
		if p.cmdline[key] {
			continue // the command line wins
		}
		if list, ok := f.Value.(*stringList); ok {
			list.reset()
		}
		for _, v := range values {
			if err := p.flags.Set(key, v); err != nil {
				return fmt.Errorf("config %s: key %q: invalid value %q: %s", p.file, key, v, explainCause(f, oneLine(err.Error())))
			}
		}
		p.inFile[key] = true
	}
	return nil
}

// suggest returns ` (did you mean "x"?)` for a near-miss key, or "".
func (p *parsed) suggest(key string) string {
	best, bestDist := "", 3
	p.flags.VisitAll(func(f *flag.Flag) {
		if commandLineOnly[f.Name] {
			return
		}
		if d := editDistance(key, f.Name); d < bestDist {
			best, bestDist = f.Name, d
		}
	})
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// flagValues converts a decoded TOML value to the strings to Set on flag f,
// checking the TOML type against the flag's kind.
func flagValues(f *flag.Flag, v any) ([]string, error) {
	getter, ok := f.Value.(flag.Getter)
	if !ok {
		return nil, errors.New("cannot be set in a config file")
	}
	switch getter.Get().(type) {
	case bool:
		if b, ok := v.(bool); ok {
			return []string{strconv.FormatBool(b)}, nil
		}
		return nil, wrongType("a boolean (true or false)", v)
	case int, int64, uint, uint64:
		if i, ok := v.(int64); ok {
			return []string{strconv.FormatInt(i, 10)}, nil
		}
		return nil, wrongType("an integer", v)
	case time.Duration:
		if s, ok := v.(string); ok {
			return []string{s}, nil
		}
		return nil, wrongType(`a duration string such as "500ms" or "2m"`, v)
	case string:
		if s, ok := v.(string); ok {
			return []string{s}, nil
		}
		return nil, wrongType("a string", v)
	case []string:
		switch v := v.(type) {
		case string:
			return []string{v}, nil
		case []any:
			out := make([]string, 0, len(v))
			for i, e := range v {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("want an array of strings, element %d is %s", i+1, tomlType(e))
				}
				out = append(out, s)
			}
			return out, nil
		}
		return nil, wrongType("an array of strings", v)
	}
	return nil, errors.New("cannot be set in a config file")
}

func wrongType(want string, got any) error {
	return fmt.Errorf("want %s, got %s", want, tomlType(got))
}

func tomlType(v any) string {
	switch v := v.(type) {
	case bool:
		return "boolean " + strconv.FormatBool(v)
	case int64:
		return "integer " + strconv.FormatInt(v, 10)
	case float64:
		return "float " + strconv.FormatFloat(v, 'g', -1, 64)
	case string:
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return "string " + strconv.Quote(v)
	case time.Time:
		return "datetime"
	case []any, []map[string]any:
		return "array"
	case map[string]any:
		return "table"
	}
	return fmt.Sprintf("%T", v)
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// stringList is a repeatable string flag. Values given on the command line
// accumulate; the first Set replaces the default.
type stringList struct {
	p       *[]string
	changed bool
}

func newStringList(p *[]string) *stringList { return &stringList{p: p} }

func (l *stringList) String() string {
	if l == nil || l.p == nil {
		return "[]"
	}
	return "[" + strings.Join(*l.p, " ") + "]"
}

func (l *stringList) Set(v string) error {
	if !l.changed {
		*l.p = nil
		l.changed = true
	}
	*l.p = append(*l.p, v)
	return nil
}

func (l *stringList) Get() any { return *l.p }

func (l *stringList) reset() {
	*l.p = []string{}
	l.changed = true
}

func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want HOST:PORT, got %q", addr)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("bad host %q in %q", host, addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("bad port %q in %q (want 0 to 65535)", port, addr)
	}
	return nil
}

func checkPort(n int) error {
	if n < 0 || n > 65535 {
		return fmt.Errorf("must be a port number from 0 to 65535, got %d", n)
	}
	return nil
}

func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("want an http:// or https:// URL, got %q", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("want a URL without query or fragment, got %q", s)
	}
	return nil
}

func checkDB(db string) error {
	if db == "" {
		return errors.New("must not be empty (a SQLite file path or a postgres:// URL)")
	}
	if scheme, _, ok := strings.Cut(db, "://"); ok && !strings.ContainsAny(scheme, "/") {
		if scheme != "postgres" && scheme != "postgresql" {
			return fmt.Errorf("unsupported URL scheme %q (want a SQLite file path or a postgres:// URL)", scheme)
		}
	}
	return nil
}
