package nixtest_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/peerix/peerix/internal/nixtest"
)

func TestMain(m *testing.M) { nixtest.Main(m) }

// TestConfig: Nix reads the kit's configuration, not the machine's.
func TestConfig(t *testing.T) {
	nixtest.Require(t)
	out := nixtest.Must(t, "nix", "show-config", "--json")
	var conf map[string]struct {
		Value any `json:"value"`
	}
	if err := json.Unmarshal(out, &conf); err != nil {
		t.Fatalf("nix show-config --json: %v\n%s", err, out)
	}
	for name, want := range map[string]any{
		"build-users-group": "",
		"sandbox":           false,
		"substituters":      []any{},
	} {
		got, ok := conf[name]
		if !ok {
			t.Errorf("nix show-config has no %s", name)
			continue
		}
		if b, _ := json.Marshal(got.Value); string(b) != mustJSON(t, want) {
			t.Errorf("%s = %s, want %s", name, b, mustJSON(t, want))
		}
	}

	// Each process has its own XDG_CACHE_HOME.
	env1, err := nixtest.Env()
	if err != nil {
		t.Fatal(err)
	}
	env2, _ := nixtest.Env()
	if lookup(env1, "XDG_CACHE_HOME") == lookup(env2, "XDG_CACHE_HOME") || lookup(env1, "NIX_REMOTE") != "local" {
		t.Errorf("Env: XDG_CACHE_HOME %q and %q, NIX_REMOTE %q", lookup(env1, "XDG_CACHE_HOME"), lookup(env2, "XDG_CACHE_HOME"), lookup(env1, "NIX_REMOTE"))
	}
}

func TestSetenv(t *testing.T) {
	nixtest.Require(t)
	t.Setenv("NIX_CONFIG", "build-users-group = nixbld")
	nixtest.Setenv(t)
	if v := os.Getenv("NIX_CONFIG"); v != "" {
		t.Errorf("NIX_CONFIG=%q", v)
	}
	conf := filepath.Join(os.Getenv("NIX_CONF_DIR"), "nix.conf")
	if b, err := os.ReadFile(conf); err != nil || string(b) != nixtest.NixConf {
		t.Errorf("%s: %q, %v", conf, b, err)
	}
}

func TestSample(t *testing.T) {
	s := nixtest.SharedSample(t)
	ctx := context.Background()
	if len(s.Paths) != 13 || !slices.Contains(s.Paths, s.All) || !slices.Contains(s.Paths, s.Path("single-file")) {
		t.Errorf("closure of all: %q", s.Paths)
	}
	for _, p := range []string{s.GC, s.Outputs[0], s.Path("trust-secret")} {
		if slices.Contains(s.Paths, p) {
			t.Errorf("%s is in the closure of all", p)
		}
	}
	refs := nixtest.MustInfo(t, s.Store, s.Refs)
	if !slices.Equal(refs.References, slices.Sorted(slices.Values([]string{s.Leaf, s.Shapes, s.Refs}))) ||
		len(refs.Signatures) != 1 || !strings.HasPrefix(refs.Signatures[0], s.Key.Name+":") || refs.Deriver == "" {
		t.Errorf("refs in the sample store: %+v", refs)
	}
	ca := nixtest.MustInfo(t, s.Store, s.CA)
	if ca.CA == "" || ca.Deriver != "" || len(ca.Signatures) != 0 {
		t.Errorf("CA path: %+v", ca)
	}
	// The CA path is in the sample store only: the dump must come from there.
	nar := nixtest.MustDump(t, s.Store, s.CA)
	digest, size, err := nixtest.DumpDigest(ctx, s.Store, s.CA)
	if err != nil || size != int64(len(nar)) || uint64(size) != ca.NarSize || digest == "" {
		t.Errorf("DumpDigest: %s, %d, %v; dump has %d bytes, Nix says %d", digest, size, err, len(nar), ca.NarSize)
	}
	if _, err := os.Stat(s.CA); err == nil {
		t.Errorf("%s is in the machine's store", s.CA)
	}
	defer func() {
		if recover() == nil {
			t.Error("Path of an unknown name did not panic")
		}
	}()
	s.Path("no-such-fixture")
}

func lookup(env []string, name string) string {
	v := ""
	for _, kv := range env {
		if n, val, ok := strings.Cut(kv, "="); ok && n == name {
			v = val
		}
	}
	return v
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestInitStore(t *testing.T) {
	nixtest.Require(t)
	dir := nixtest.InitStore(t, "empty")
	if _, err := os.Stat(filepath.Join(dir, "nix", "var", "nix", "db", "db.sqlite")); err != nil {
		t.Fatal(err)
	}
	if out := nixtest.Must(t, "nix", "path-info", "--store", dir, "--all"); len(out) != 0 {
		t.Errorf("a new store holds %q", out)
	}
}
