package trust

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// NixTrustedPublicKeys returns the public keys the machine's Nix trusts
// (its trusted-public-keys setting, with extra-trusted-public-keys): the
// verifier's default when no --trusted-public-key is given. It asks Nix
// (`nix config show --json`, or `nix show-config --json` before Nix 2.20),
// and, if no nix command answers (not on PATH, say, under systemd), reads the
// configuration files as Nix does: $NIX_CONF_DIR/nix.conf (default
// /etc/nix), the user files ($NIX_USER_CONF_FILES, else
// $XDG_CONFIG_DIRS/nix/nix.conf and $XDG_CONFIG_HOME/nix/nix.conf), then
// $NIX_CONFIG, following include and !include. Unset, the setting is Nix's
// default, cache.nixos.org's key. The second result names the source.
func NixTrustedPublicKeys(ctx context.Context) (keys []string, source string, err error) {
	return nixTrustedPublicKeys(ctx, "nix", os.Getenv)
}

func nixTrustedPublicKeys(ctx context.Context, nixCmd string, getenv func(string) string) ([]string, string, error) {
	if keys, err := keysFromNixCommand(ctx, nixCmd); err == nil {
		return keys, "nix config", nil
	}
	keys, err := keysFromNixConf(getenv)
	if err != nil {
		return nil, "", err
	}
	return keys, "nix.conf files", nil
}

// keysFromNixCommand asks a nix command for its configuration as JSON.
func keysFromNixCommand(ctx context.Context, nixCmd string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var errs []error
	for _, args := range [][]string{
		{"--extra-experimental-features", "nix-command", "config", "show", "--json"},
		{"--extra-experimental-features", "nix-command", "show-config", "--json"},
	} {
		cmd := exec.CommandContext(ctx, nixCmd, args...)
		out, err := cmd.Output()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keys, err := parseNixConfigJSON(out)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return keys, nil
	}
	return nil, errors.Join(errs...)
}

// parseNixConfigJSON takes trusted-public-keys out of `nix config show
// --json`: {"trusted-public-keys": {"value": ["k1", "k2"], ...}, ...}.
func parseNixConfigJSON(out []byte) ([]string, error) {
	var cfg map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		return nil, fmt.Errorf("nix config JSON: %w", err)
	}
	s, ok := cfg["trusted-public-keys"]
	if !ok {
		return nil, errors.New("nix config JSON has no trusted-public-keys")
	}
	var list []string
	if err := json.Unmarshal(s.Value, &list); err == nil {
		return strings.Fields(strings.Join(list, " ")), nil
	}
	var str string
	if err := json.Unmarshal(s.Value, &str); err == nil {
		return strings.Fields(str), nil
	}
	return nil, errors.New("nix config JSON: trusted-public-keys is neither a list nor a string")
}

// keysFromNixConf reads the configuration files as Nix does.
func keysFromNixConf(getenv func(string) string) ([]string, error) {
	c := &nixConf{keys: strings.Fields(DefaultUpstreamPublicKey)}
	confDir := getenv("NIX_CONF_DIR")
	if confDir == "" {
		confDir = "/etc/nix"
	}
	if err := c.readFile(filepath.Join(confDir, "nix.conf"), 0); err != nil {
		return nil, err
	}
	// As Nix: the user files are $NIX_USER_CONF_FILES, else
	// $XDG_CONFIG_HOME/nix/nix.conf followed by $XDG_CONFIG_DIRS/nix/nix.conf,
	// and they are applied last to first, so the first one wins.
	var files []string
	if list := getenv("NIX_USER_CONF_FILES"); list != "" {
		files = filepath.SplitList(list)
	} else {
		home := getenv("XDG_CONFIG_HOME")
		if home == "" && getenv("HOME") != "" {
			home = filepath.Join(getenv("HOME"), ".config")
		}
		if home != "" {
			files = append(files, filepath.Join(home, "nix", "nix.conf"))
		}
		dirs := getenv("XDG_CONFIG_DIRS")
		if dirs == "" {
			dirs = "/etc/xdg"
		}
		for _, d := range filepath.SplitList(dirs) {
			files = append(files, filepath.Join(d, "nix", "nix.conf"))
		}
	}
	for i := len(files) - 1; i >= 0; i-- {
		if err := c.readFile(files[i], 0); err != nil {
			return nil, err
		}
	}
	if env := getenv("NIX_CONFIG"); env != "" {
		if err := c.parse([]byte(env), "", "NIX_CONFIG", 0); err != nil {
			return nil, err
		}
	}
	return c.keys, nil
}

// nixConf collects trusted-public-keys from nix.conf text.
type nixConf struct {
	keys []string
}

const maxIncludeDepth = 10

// readFile reads one nix.conf; a missing file is skipped (Nix errors on a
// missing `include`d one; here that would only lose the keys, so we are
// lenient with include and !include alike).
func (c *nixConf) readFile(file string, depth int) error {
	data, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("nix configuration %s: %w", file, err)
	}
	return c.parse(data, filepath.Dir(file), file, depth)
}

func (c *nixConf) parse(data []byte, dir, name string, depth int) error {
	if depth > maxIncludeDepth {
		return fmt.Errorf("nix configuration %s: includes nested too deep", name)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if fields[0] == "include" || fields[0] == "!include" {
			if len(fields) != 2 {
				continue
			}
			f := fields[1]
			if !filepath.IsAbs(f) && dir != "" {
				f = filepath.Join(dir, f)
			}
			if err := c.readFile(f, depth+1); err != nil {
				return err
			}
			continue
		}
		if len(fields) < 2 || fields[1] != "=" {
			continue
		}
		switch fields[0] {
		case "trusted-public-keys", "binary-cache-public-keys":
			c.keys = append([]string(nil), fields[2:]...)
		case "extra-trusted-public-keys", "extra-binary-cache-public-keys":
			c.keys = append(c.keys, fields[2:]...)
		}
	}
	return sc.Err()
}
