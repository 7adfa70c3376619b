package config

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// WriteConfig writes the effective configuration of `peerix serve` as a
// TOML config file that gives the same settings: every key with the value
// the daemon would run with (defaults filled in, the filter resolved from
// the mode, the signing key file possibly from $NIX_SECRET_KEY_FILE), after
// a comment naming the config file that was read. It is what
// `peerix serve --check-config` prints.
func (s *Serve) WriteConfig(w io.Writer) error {
	return writeConfig(w, "serve", s.ConfigFile, ServeKeys(), map[string]any{
		"listen":             s.Listen,
		"mode":               s.Mode,
		"store-root":         s.StoreRoot,
		"state-dir":          s.StateDir,
		"tracker":            s.Tracker,
		"p2p-port":           s.P2PPort,
		"lan":                s.LAN,
		"lan-port":           s.LANPort,
		"lan-timeout":        duration(s.LANTimeout),
		"upstream":           s.Upstream,
		"filter":             s.Filter,
		"filter-pattern":     list(s.FilterPatterns),
		"no-verify":          s.NoVerify,
		"trusted-public-key": list(s.TrustedPublicKeys),
		"priority":           s.Priority,
		"signing-key-file":   s.SigningKeyFile,
		"verbose":            s.Verbose,
	})
}

// WriteConfig writes the effective configuration of `peerix tracker`, as
// Serve.WriteConfig does for the daemon.
func (t *Tracker) WriteConfig(w io.Writer) error {
	return writeConfig(w, "tracker", t.ConfigFile, TrackerKeys(), map[string]any{
		"listen":     t.Listen,
		"db":         t.DB,
		"relay-port": t.RelayPort,
		"peer-ttl":   duration(t.PeerTTL),
		"verbose":    t.Verbose,
	})
}

// writeConfig writes values in the order of keys, which must name each of
// them: a key added to the flags but not to values is a bug that the
// tests of every command catch through this error.
func writeConfig(w io.Writer, cmd, file string, keys []string, values map[string]any) error {
	if len(keys) != len(values) {
		return fmt.Errorf("effective configuration of peerix %s: %d keys but %d values", cmd, len(keys), len(values))
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# peerix %s: effective configuration\n", cmd)
	if file == "" {
		b.WriteString("# config file: none (defaults and command-line flags only)\n")
	} else {
		if strings.ContainsAny(file, "\r\n") {
			file = strconv.Quote(file) // a newline must not end the comment
		}
		fmt.Fprintf(&b, "# config file: %s\n", file)
	}
	for _, key := range keys {
		v, ok := values[key]
		if !ok {
			return fmt.Errorf("effective configuration of peerix %s: no value for key %q", cmd, key)
		}
		// One key at a time keeps the flags' order; the encoder quotes
		// strings as TOML wants them.
		if err := toml.NewEncoder(&b).Encode(map[string]any{key: v}); err != nil {
			return fmt.Errorf("effective configuration of peerix %s: key %q: %w", cmd, key, err)
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// duration is d as the config file takes it ("500ms", "2m0s").
func duration(d time.Duration) string { return d.String() }

// list is l, never nil: the encoder leaves out nil slices.
func list(l []string) []string {
	if l == nil {
		return []string{}
	}
	return l
}
