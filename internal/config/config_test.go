package config_test

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/config"
)

const (
	pubKey1 = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
	pubKey2 = "test1:tLAEn+EeaBUJYqEpTd2yeerr7Ic6+0vWe+aXL/vYUpE="
)

func TestMain(m *testing.M) {
	// Never read the machine's /etc/peerix in tests.
	config.SetSystemConfigDir("/nonexistent/peerix-config-test")
	os.Exit(m.Run())
}

// env is a fake environment: getenv for the given variables only.
type env map[string]string

func (e env) get(k string) string { return e[k] }

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func defaultServe() config.Serve {
	return config.Serve{
		Listen:     "0.0.0.0:12304",
		Mode:       "p2p",
		StoreRoot:  "/",
		StateDir:   "/var/lib/peerix",
		P2PPort:    12306,
		LAN:        true,
		LANPort:    12304,
		LANTimeout: 500 * time.Millisecond,
		Upstream:   "https://cache.nixos.org",
		Filter:     "upstream",
		Priority:   30,
	}
}

// normalize treats nil and empty lists alike, so tests compare meaning.
func normalize(s config.Serve) config.Serve {
	if len(s.FilterPatterns) == 0 {
		s.FilterPatterns = nil
	}
	if len(s.TrustedPublicKeys) == 0 {
		s.TrustedPublicKeys = nil
	}
	return s
}

func TestServe(t *testing.T) {
	dir := t.TempDir()
	allKeys := writeFile(t, dir, "all.toml", `
listen = "127.0.0.1:8080"
mode = "lan"
store-root = "/srv/store"
state-dir = "/tmp/state"
tracker = "https://tracker.example.org/peerix/"
p2p-port = 0
lan = true
lan-port = 4000
lan-timeout = "2s"
upstream = "http://cache.example.org/"
filter = "patterns"
filter-pattern = ["*-secret*", "nixos-system-*"]
no-verify = true
trusted-public-key = ["`+pubKey1+`", "`+pubKey2+`"]
priority = 10
signing-key-file = "/etc/nix/key.sec"
verbose = true
`)
	fromAllKeys := config.Serve{
		Listen:            "127.0.0.1:8080",
		Mode:              "lan",
		StoreRoot:         "/srv/store",
		StateDir:          "/tmp/state",
		Tracker:           "https://tracker.example.org/peerix",
		P2PPort:           0,
		LAN:               true,
		LANPort:           4000,
		LANTimeout:        2 * time.Second,
		Upstream:          "http://cache.example.org",
		Filter:            "patterns",
		FilterPatterns:    []string{"*-secret*", "nixos-system-*"},
		NoVerify:          true,
		TrustedPublicKeys: []string{pubKey1, pubKey2},
		Priority:          10,
		SigningKeyFile:    "/etc/nix/key.sec",
		Verbose:           true,
		ConfigFile:        allKeys,
	}
	modeLocal := writeFile(t, dir, "local.toml", "mode = \"local\"\nfilter-pattern = [\"*-a\"]\nsigning-key-file = \"/from/file\"\n")
	home := filepath.Join(dir, "home")
	homeFile := writeFile(t, home, ".config/peerix/config.toml", "priority = 7\n")
	xdg := filepath.Join(dir, "xdg")
	xdgFile := writeFile(t, xdg, "peerix/config.toml", "priority = 8\n")
	emptyHome := filepath.Join(dir, "emptyhome")

	tests := []struct {
		name string
		args []string
		env  env
		want func(*config.Serve)
	}{
		{"defaults", nil, nil, func(*config.Serve) {}},
		{
			"every flag",
			[]string{
				"--listen", "[::1]:9000", "--mode", "lan", "--store-root", "/x", "--state-dir", "/s",
				"--tracker", "http://t:12305", "--p2p-port", "0", "--lan", "--lan-port", "1",
				"--lan-timeout", "1.5s", "--upstream", "https://u.example/", "--filter", "none",
				"--filter-pattern", "a*", "--no-verify", "--trusted-public-key", pubKey1,
				"--priority", "0", "--signing-key-file", "/k", "--verbose",
			},
			nil,
			func(s *config.Serve) {
				*s = config.Serve{
					Listen: "[::1]:9000", Mode: "lan", StoreRoot: "/x", StateDir: "/s", Tracker: "http://t:12305",
					P2PPort: 0, LAN: true, LANPort: 1, LANTimeout: 1500 * time.Millisecond, Upstream: "https://u.example",
					Filter: "none", FilterPatterns: []string{"a*"}, NoVerify: true, TrustedPublicKeys: []string{pubKey1},
					Priority: 0, SigningKeyFile: "/k", Verbose: true,
				}
			},
		},
		{"single dash and = forms", []string{"-mode=local", "--lan-port=5", "--verbose=true", "--no-verify=false"}, nil,
			func(s *config.Serve) {
				s.Mode, s.LAN, s.Filter, s.LANPort, s.Verbose = "local", false, "patterns", 5, true
			}},
		{"every key in the file", []string{"--config", allKeys}, nil, func(s *config.Serve) { *s = fromAllKeys }},
		{
			"flags beat the file",
			[]string{"--config", allKeys, "--mode", "p2p", "--lan=false", "--p2p-port", "99", "--filter-pattern", "x*", "--priority", "5"},
			nil,
			func(s *config.Serve) {
				*s = fromAllKeys
				s.Mode, s.LAN, s.P2PPort, s.FilterPatterns, s.Priority = "p2p", false, 99, []string{"x*"}, 5
			},
		},
		{"repeated flags accumulate", []string{"--filter-pattern", "a*", "--filter-pattern", "b*", "--trusted-public-key", pubKey1, "--trusted-public-key", pubKey2}, nil,
			func(s *config.Serve) {
				s.FilterPatterns = []string{"a*", "b*"}
				s.TrustedPublicKeys = []string{pubKey1, pubKey2}
			}},
		{"filter default local", []string{"--mode", "local"}, nil, func(s *config.Serve) { s.Mode, s.LAN, s.Filter = "local", false, "patterns" }},
		{"LAN off in p2p mode", []string{"--lan=false"}, nil, func(s *config.Serve) { s.LAN = false }},
		{"filter default lan", []string{"--mode", "lan"}, nil, func(s *config.Serve) { s.Mode, s.Filter = "lan", "upstream" }},
		{"filter default p2p with lan", []string{"--lan"}, nil, func(s *config.Serve) { s.LAN = true }},
		{"filter explicit wins in local", []string{"--mode", "local", "--filter", "upstream"}, nil, func(s *config.Serve) { s.Mode, s.LAN, s.Filter = "local", false, "upstream" }},
		{"filter explicit wins in p2p", []string{"--filter", "none"}, nil, func(s *config.Serve) { s.Filter = "none" }},
		{"filter default follows mode from file", []string{"--config", modeLocal}, nil,
			func(s *config.Serve) {
				s.Mode, s.LAN, s.Filter, s.FilterPatterns, s.SigningKeyFile, s.ConfigFile = "local", false, "patterns", []string{"*-a"}, "/from/file", modeLocal
			}},
		{"filter default follows flag over file", []string{"--config", modeLocal, "--mode", "lan"}, nil,
			func(s *config.Serve) {
				s.Mode, s.Filter, s.FilterPatterns, s.SigningKeyFile, s.ConfigFile = "lan", "upstream", []string{"*-a"}, "/from/file", modeLocal
			}},
		{"NIX_SECRET_KEY_FILE without flag", nil, env{"NIX_SECRET_KEY_FILE": "/env/key"}, func(s *config.Serve) { s.SigningKeyFile = "/env/key" }},
		{"signing key flag beats env", []string{"--signing-key-file", "/flag/key"}, env{"NIX_SECRET_KEY_FILE": "/env/key"}, func(s *config.Serve) { s.SigningKeyFile = "/flag/key" }},
		{"signing key file key beats env", []string{"--config", modeLocal}, env{"NIX_SECRET_KEY_FILE": "/env/key"},
			func(s *config.Serve) {
				s.Mode, s.LAN, s.Filter, s.FilterPatterns, s.SigningKeyFile, s.ConfigFile = "local", false, "patterns", []string{"*-a"}, "/from/file", modeLocal
			}},
		{"HOME config picked up", nil, env{"HOME": home}, func(s *config.Serve) { s.Priority, s.ConfigFile = 7, homeFile }},
		{"XDG_CONFIG_HOME preferred over HOME", nil, env{"HOME": home, "XDG_CONFIG_HOME": xdg}, func(s *config.Serve) { s.Priority, s.ConfigFile = 8, xdgFile }},
		{"relative XDG_CONFIG_HOME ignored", nil, env{"HOME": home, "XDG_CONFIG_HOME": "rel"}, func(s *config.Serve) { s.Priority, s.ConfigFile = 7, homeFile }},
		{"--config overrides HOME", []string{"--config", modeLocal}, env{"HOME": home},
			func(s *config.Serve) {
				s.Mode, s.LAN, s.Filter, s.FilterPatterns, s.SigningKeyFile, s.ConfigFile = "local", false, "patterns", []string{"*-a"}, "/from/file", modeLocal
			}},
		{"HOME without config file", nil, env{"HOME": emptyHome}, func(*config.Serve) {}},
		{"flag beats HOME file", []string{"--priority", "1"}, env{"HOME": home}, func(s *config.Serve) { s.Priority, s.ConfigFile = 1, homeFile }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := config.ParseServe(tt.args, tt.env.get)
			if err != nil {
				t.Fatal(err)
			}
			want := defaultServe()
			tt.want(&want)
			if !reflect.DeepEqual(normalize(*got), normalize(want)) {
				t.Errorf("\n got %+v\nwant %+v", *got, want)
			}
		})
	}

	// The "every key" file really covers every key.
	text := readFile(t, allKeys)
	for _, name := range config.ServeKeys() {
		if !strings.Contains(text, "\n"+name+" = ") {
			t.Errorf("flag --%s not covered by the all-keys config file", name)
		}
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestServeSystemConfig(t *testing.T) {
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc")
	etcFile := writeFile(t, etc, "config.toml", "priority = 9\n")
	defer config.SetSystemConfigDir(etc)()

	s, err := config.ParseServe(nil, env{"HOME": filepath.Join(dir, "nohome")}.get)
	if err != nil {
		t.Fatal(err)
	}
	if s.Priority != 9 || s.ConfigFile != etcFile {
		t.Fatalf("system config not used: %+v", s)
	}
	// No HOME at all (a system service).
	if s, err := config.ParseServe(nil, env{}.get); err != nil || s.ConfigFile != etcFile {
		t.Fatalf("without HOME: %+v %v", s, err)
	}
	// The user's file wins over the system's.
	home := filepath.Join(dir, "home")
	homeFile := writeFile(t, home, ".config/peerix/config.toml", "priority = 7\n")
	if s, err := config.ParseServe(nil, env{"HOME": home}.get); err != nil || s.ConfigFile != homeFile || s.Priority != 7 {
		t.Fatalf("user file not preferred: %+v %v", s, err)
	}
	// The tracker does not read the daemon's file.
	if tr, err := config.ParseTracker(nil, env{"HOME": home}.get); err != nil || tr.ConfigFile != "" {
		t.Fatalf("tracker read the serve config: %+v %v", tr, err)
	}
}

func TestServeErrors(t *testing.T) {
	dir := t.TempDir()
	file := func(content string) []string {
		return []string{"--config", writeFile(t, dir, "c"+strings.ReplaceAll(t.Name(), "/", "_")+".toml", content)}
	}
	missing := filepath.Join(dir, "missing.toml")
	unreadableDir := filepath.Join(dir, "adir")
	if err := os.Mkdir(unreadableDir, 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		args func() []string
		want string // substring; the file path is checked separately
	}{
		{"unknown key", func() []string { return file(`lisen = "x"`) }, `unknown key "lisen" (did you mean "listen"?)`},
		{"unknown far key", func() []string { return file(`zzzzzzzzz = 1`) }, `unknown key "zzzzzzzzz"`},
		{"unknown table", func() []string { return file("[serve]\nlisten = \"x\"") }, `unknown key "serve"`},
		{"config key in file", func() []string { return file(`config = "/x"`) }, `key "config" cannot be set`},
		{"check-config key in file", func() []string { return file(`check-config = true`) }, `key "check-config" cannot be set`},
		{"wrong type bool", func() []string { return file(`lan = "yes"`) }, `key "lan": want a boolean (true or false), got string "yes"`},
		{"wrong type int from string", func() []string { return file(`p2p-port = "12306"`) }, `key "p2p-port": want an integer, got string "12306"`},
		{"wrong type int from float", func() []string { return file(`priority = 1.5`) }, `key "priority": want an integer, got float 1.5`},
		{"wrong type duration", func() []string { return file(`lan-timeout = 500`) }, `key "lan-timeout": want a duration string`},
		{"wrong type string", func() []string { return file(`listen = 12304`) }, `key "listen": want a string, got integer 12304`},
		{"wrong type string from array", func() []string { return file(`mode = ["p2p"]`) }, `key "mode": want a string, got array`},
		{"wrong type string from table", func() []string { return file("[store-root]\na = 1") }, `key "store-root": want a string, got table`},
		{"wrong type list element", func() []string { return file(`filter-pattern = ["a", 1]`) }, `key "filter-pattern": want an array of strings, element 2 is integer 1`},
		{"wrong type list", func() []string { return file(`trusted-public-key = true`) }, `key "trusted-public-key": want an array of strings, got boolean true`},
		{"bad duration in file", func() []string { return file(`lan-timeout = "soon"`) }, `key "lan-timeout": invalid value "soon": want a duration`},
		{"int out of range in file", func() []string { return file(`p2p-port = 70000`) }, `key "p2p-port": must be a port number from 0 to 65535, got 70000`},
		{"bad mode in file", func() []string { return file(`mode = "x"`) }, `key "mode": must be one of p2p, lan, local, got "x"`},
		{"empty filter in file", func() []string { return file(`filter = ""`) }, `key "filter": must be one of upstream, patterns, none, got ""`},
		{"bad key in file", func() []string { return file(`trusted-public-key = ["nope"]`) }, `key "trusted-public-key": public key "nope"`},
		{"toml syntax", func() []string { return file("listen = \n") }, "toml:"},
		{"toml duplicate key", func() []string { return file("lan = true\nlan = false\n") }, "toml:"},
		{"missing --config file", func() []string { return []string{"--config", missing} }, "no such file or directory"},
		{"--config is a directory", func() []string { return []string{"--config", unreadableDir} }, "is a directory"},
		{"empty --config", func() []string { return []string{"--config", ""} }, "--config: must name a file"},

		{"wrong type even when the flag overrides it", func() []string { return append(file(`lan = "yes"`), "--lan") }, `key "lan": want a boolean`},
		{"bad mode flag", func() []string { return []string{"--mode", "x"} }, `--mode: must be one of p2p, lan, local, got "x"`},
		{"bad filter flag", func() []string { return []string{"--filter", "all"} }, `--filter: must be one of upstream, patterns, none, got "all"`},
		{"lan with local", func() []string { return []string{"--mode", "local", "--lan"} }, `--lan: cannot be used with mode local`},
		{"unknown flag", func() []string { return []string{"--lisen", "x"} }, `unknown flag --lisen`},
		{"flag without value", func() []string { return []string{"--mode"} }, `--mode: needs a value`},
		{"bad bool flag", func() []string { return []string{"--lan=maybe"} }, `--lan: invalid boolean value "maybe": want true or false`},
		{"huge int flag", func() []string { return []string{"--priority", "99999999999999999999"} }, `--priority: invalid value "99999999999999999999": out of range`},
		{"bad flag syntax", func() []string { return []string{"---x"} }, `unknown flag --x`},
		{"non-number port", func() []string { return []string{"--p2p-port", "abc"} }, `--p2p-port: invalid value "abc": want an integer`},
		{"negative port", func() []string { return []string{"--p2p-port", "-1"} }, `--p2p-port: must be a port number from 0 to 65535, got -1`},
		{"big lan port", func() []string { return []string{"--lan-port", "65536"} }, `--lan-port: must be a port number`},
		{"bad listen", func() []string { return []string{"--listen", "12304"} }, `--listen: want HOST:PORT, got "12304"`},
		{"bad listen port", func() []string { return []string{"--listen", "127.0.0.1:http"} }, `--listen: bad port "http"`},
		{"listen port too big", func() []string { return []string{"--listen", ":99999"} }, `--listen: bad port "99999"`},
		{"negative priority", func() []string { return []string{"--priority", "-1"} }, `--priority: must be 0 or more, got -1`},
		{"upstream not http", func() []string { return []string{"--upstream", "ftp://x"} }, `--upstream: want an http:// or https:// URL, got "ftp://x"`},
		{"upstream no host", func() []string { return []string{"--upstream", "https://"} }, `--upstream: want an http:// or https:// URL`},
		{"tracker not a URL", func() []string { return []string{"--tracker", "tracker.example.org"} }, `--tracker: want an http:// or https:// URL`},
		{"zero lan timeout", func() []string { return []string{"--lan-timeout", "0s"} }, `--lan-timeout: must be positive`},
		{"bad duration flag", func() []string { return []string{"--lan-timeout", "5"} }, `--lan-timeout: invalid value "5": want a duration`},
		{"bad trusted key", func() []string { return []string{"--trusted-public-key", "cache.nixos.org-1:abc"} }, `--trusted-public-key: public key "cache.nixos.org-1:abc"`},
		{"bad filter pattern", func() []string { return []string{"--filter-pattern", "[a"} }, `--filter-pattern: bad pattern "[a"`},
		{"empty store root", func() []string { return []string{"--store-root", ""} }, `--store-root: must not be empty`},
		{"positional argument", func() []string { return []string{"--verbose", "extra"} }, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args()
			_, err := config.ParseServe(args, env{}.get)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not contain %q", msg, tt.want)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans several lines: %q", msg)
			}
			if len(args) >= 2 && args[0] == "--config" && args[1] != "" && !strings.HasPrefix(msg, "config "+args[1]+": ") {
				t.Errorf("error %q does not start with the file name", msg)
			}
			if errors.Is(err, flag.ErrHelp) {
				t.Error("error is ErrHelp")
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help", "--h"} {
		if _, err := config.ParseServe([]string{"--verbose", arg}, env{}.get); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("serve %s: err = %v", arg, err)
		}
		if _, err := config.ParseTracker([]string{arg}, env{}.get); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("tracker %s: err = %v", arg, err)
		}
	}
	for cmd, usage := range map[string]func(*bytes.Buffer){
		"serve":   func(b *bytes.Buffer) { config.ServeUsage(b) },
		"tracker": func(b *bytes.Buffer) { config.TrackerUsage(b) },
	} {
		var b bytes.Buffer
		usage(&b)
		for _, name := range config.FlagNames(cmd) {
			if !strings.Contains(b.String(), "  --"+name) {
				t.Errorf("%s usage lacks --%s:\n%s", cmd, name, b.String())
			}
		}
	}
}

func TestTracker(t *testing.T) {
	dir := t.TempDir()
	all := writeFile(t, dir, "tracker.toml", `
listen = "127.0.0.1:0"
db = "postgres://u@db/peerix"
relay-port = 0
peer-ttl = "45s"
verbose = true
`)
	home := filepath.Join(dir, "home")
	homeFile := writeFile(t, home, ".config/peerix/tracker.toml", "peer-ttl = \"1m\"\n")
	writeFile(t, home, ".config/peerix/config.toml", "mode = \"lan\"\n") // serve's; must be ignored

	def := config.Tracker{Listen: "0.0.0.0:12305", DB: "/var/lib/peerix-tracker/tracker.db", RelayPort: 12307, PeerTTL: 2 * time.Minute}
	tests := []struct {
		name string
		args []string
		env  env
		want func(*config.Tracker)
	}{
		{"defaults", nil, nil, func(*config.Tracker) {}},
		{"flags", []string{"--listen", ":1", "--db", "/tmp/t.db", "--relay-port", "0", "--peer-ttl", "10s", "--verbose"}, nil,
			func(c *config.Tracker) {
				*c = config.Tracker{Listen: ":1", DB: "/tmp/t.db", PeerTTL: 10 * time.Second, Verbose: true}
			}},
		{"file", []string{"--config", all}, nil,
			func(c *config.Tracker) {
				*c = config.Tracker{Listen: "127.0.0.1:0", DB: "postgres://u@db/peerix", PeerTTL: 45 * time.Second, Verbose: true, ConfigFile: all}
			}},
		{"flag beats file", []string{"--config", all, "--peer-ttl", "3m"}, nil,
			func(c *config.Tracker) {
				*c = config.Tracker{Listen: "127.0.0.1:0", DB: "postgres://u@db/peerix", PeerTTL: 3 * time.Minute, Verbose: true, ConfigFile: all}
			}},
		{"HOME tracker.toml", nil, env{"HOME": home}, func(c *config.Tracker) { c.PeerTTL, c.ConfigFile = time.Minute, homeFile }},
		{"postgresql scheme", []string{"--db", "postgresql://x/y"}, nil, func(c *config.Tracker) { c.DB = "postgresql://x/y" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := config.ParseTracker(tt.args, tt.env.get)
			if err != nil {
				t.Fatal(err)
			}
			want := def
			tt.want(&want)
			if *got != want {
				t.Errorf("\n got %+v\nwant %+v", *got, want)
			}
		})
	}

	text := readFile(t, all)
	for _, name := range config.TrackerKeys() {
		if !strings.Contains(text, "\n"+name+" = ") {
			t.Errorf("flag --%s not covered by the all-keys config file", name)
		}
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--peer-ttl", "0s"}, "--peer-ttl: must be positive"},
		{[]string{"--peer-ttl", "-1m"}, "--peer-ttl: must be positive"},
		{[]string{"--relay-port", "65536"}, "--relay-port: must be a port number"},
		{[]string{"--listen", "localhost"}, "--listen: want HOST:PORT"},
		{[]string{"--db", ""}, "--db: must not be empty"},
		{[]string{"--db", "mysql://x"}, `--db: unsupported URL scheme "mysql"`},
		{[]string{"--mode", "lan"}, "unknown flag --mode"},
		{[]string{"x"}, `unexpected argument "x"`},
		{[]string{"--config", writeFile(t, dir, "bad.toml", "mode = \"lan\"\n")}, `unknown key "mode"`},
		{[]string{"--config", writeFile(t, dir, "bad2.toml", "peer-ttl = 120\n")}, `key "peer-ttl": want a duration string`},
	} {
		if _, err := config.ParseTracker(tt.args, env{}.get); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
}

// TestFileListReplacesDefault: a list given in the file is used as is, and a
// list flag on the command line replaces the file's list rather than adding
// to it (flags win).
func TestListPrecedence(t *testing.T) {
	f := writeFile(t, t.TempDir(), "c.toml", `filter-pattern = ["f1", "f2"]`+"\n"+`trusted-public-key = "`+pubKey1+`"`+"\n")
	s, err := config.ParseServe([]string{"--config", f}, env{}.get)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.FilterPatterns, []string{"f1", "f2"}) || !slices.Equal(s.TrustedPublicKeys, []string{pubKey1}) {
		t.Fatalf("%+v", s)
	}
	s, err = config.ParseServe([]string{"--config", f, "--filter-pattern", "c1", "--filter-pattern", "c2"}, env{}.get)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.FilterPatterns, []string{"c1", "c2"}) || !slices.Equal(s.TrustedPublicKeys, []string{pubKey1}) {
		t.Fatalf("%+v", s)
	}
	// An empty array is allowed and means none.
	f2 := writeFile(t, t.TempDir(), "c.toml", "filter-pattern = []\n")
	if s, err := config.ParseServe([]string{"--config", f2}, env{}.get); err != nil || len(s.FilterPatterns) != 0 {
		t.Fatalf("%+v %v", s, err)
	}
}

func FuzzServeConfigFile(f *testing.F) {
	seeds := []string{
		"",
		`listen = "127.0.0.1:1"`,
		"mode = \"local\"\nlan = true\n",
		`filter-pattern = ["a", 1]`,
		"[a]\nb = 1\n[[c]]\nd = 2\n",
		`p2p-port = 9223372036854775807`,
		`lan-timeout = "9999999999999999h"`,
		`trusted-public-key = ["x:", ":", "a:b:c"]`,
		`upstream = "http://[::1"`,
		"\x00\xff = 1",
		`listen = 1979-05-27T07:32:00Z`,
		"a = [[1], {b = 2}]",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	file := filepath.Join(f.TempDir(), "config.toml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := config.ParseServe([]string{"--config", file}, env{}.get)
		if err != nil {
			if msg := err.Error(); strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "config "+file+": ") {
				t.Fatalf("error not one line naming the file: %q", msg)
			}
			return
		}
		if s.ConfigFile != file {
			t.Fatalf("ConfigFile = %q", s.ConfigFile)
		}
	})
}

func TestNilGetenv(t *testing.T) {
	s, err := config.ParseServe([]string{"--mode", "local"}, nil)
	if err != nil || s.Filter != "patterns" || s.SigningKeyFile != "" {
		t.Fatalf("%+v %v", s, err)
	}
}
