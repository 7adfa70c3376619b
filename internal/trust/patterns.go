package trust

import (
	"fmt"
	"path"
	"strings"
)

// DefaultPatterns is the built-in deny-list: store path names (the part
// after "<hash>-") matching any of these globs are never shared, in the
// "patterns" and "upstream" modes alike. Matching is path.Match on the
// lower-cased name, so the globs are written in lower case. The list errs on
// the side of privacy: a public package caught by it (libsecret is not, but
// python3-secretstorage is) is merely fetched from the upstream instead of a
// peer, while a private path that slips through leaves the machine for good.
var DefaultPatterns = []string{
	// Secrets in general: "secret.txt", "db-secret", "api_secret.json",
	// "x.secret", "secrets.nix", "my-secrets".
	"secret*", "*-secret*", "*_secret*", "*.secret*", "*secrets*",
	// Key material by file type: TLS/SSH/PKCS#12/Java keystores, Nix
	// secret keys (*.sec), age/agenix and GnuPG encrypted files, KeePass.
	"*.key", "*.pem", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.sec",
	"*.age", "*.gpg", "*.kdbx", "*.psk",
	// Private keys by name: OpenSSH identity files and the usual spellings.
	"id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
	"*private-key*", "*private_key*", "*privatekey*", "*privkey*",
	// Credentials and passwords: "aws-credentials", "credentials.json",
	// "passwd", "password-file", "htpasswd", ".netrc"-style files, .env files.
	"*credentials*", "credential*", "*passw*", "*netrc*", "*.env",
	// Tokens: "github-token", "api_token.txt", "tokens.json", but not
	// packages such as tokenizers or tiktoken.
	"*token", "*tokens", "*token.*", "*tokens.*", "*_token*", "*-token-*", "*-tokens-*",
	// Wi-Fi: NixOS writes networking.wireless networks (with their PSKs)
	// into a store file of this name.
	"wpa_supplicant.conf*",
	// NixOS system closures: the system toplevel ("nixos-system-host-24.05…"),
	// the generated /etc tree ("etc") and its single files ("etc-hosts",
	// environment.etc.<name>.text becomes "etc-<name>"), the system profile
	// ("system-path"), systemd units ("unit-sshd.service", "system-units",
	// "user-units"), restart-trigger files, and the initrd. All of them
	// describe one machine's configuration and are never on a public cache.
	"nixos-system-*", "etc", "etc-*", "*-etc", "system-path", "system-units", "user-units",
	"unit-*", "x-restart-triggers-*", "initrd-*",
	// home-manager: the generation ("home-manager-generation"), its files
	// and profile ("home-manager-files", "home-manager-path"), managed
	// dotfiles ("hm_…"), session variables ("hm-session-vars.sh"). The
	// home-manager package itself ("home-manager-0-unstable-…") stays
	// shareable.
	"home-manager-generation*", "home-manager-files*", "home-manager-path*", "hm_*", "hm-session-vars*",
	// User environments and profiles: nix-env generations
	// ("user-environment", with "env-manifest.nix") and `nix profile`
	// manifests ("profile").
	"user-environment", "env-manifest.nix", "profile",
	// Flake sources: `nix build` copies a local flake (a private NixOS
	// configuration, say) to the store as "source". Public fetched sources
	// share the name and are refused too: the upstream serves them.
	"source",
	// Derivations spell out the whole build, including anything a private
	// configuration put into it; peers substitute outputs, not .drv files.
	"*.drv",
}

// patternSet is a compiled deny-list.
type patternSet struct {
	globs []string // lower-cased
}

// newPatternSet checks and lower-cases globs (the defaults, if withDefaults,
// and extra). An empty or malformed glob is an error naming it.
func newPatternSet(withDefaults bool, extra []string) (*patternSet, error) {
	var all []string
	if withDefaults {
		all = append(all, DefaultPatterns...)
	}
	all = append(all, extra...)
	ps := &patternSet{}
	for _, g := range all {
		if g == "" || strings.Contains(g, "/") {
			return nil, fmt.Errorf("filter pattern %q: must be a non-empty glob on a store path name (no '/')", g)
		}
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("filter pattern %q: %v", g, err)
		}
		ps.globs = append(ps.globs, strings.ToLower(g))
	}
	return ps, nil
}

// match returns the first glob that name (a store path name without the
// hash part) matches, and whether there is one.
func (ps *patternSet) match(name string) (string, bool) {
	name = strings.ToLower(name)
	for _, g := range ps.globs {
		if ok, _ := path.Match(g, name); ok {
			return g, true
		}
	}
	return "", false
}
