package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/tracker"
)

// TestSmallRun plays a few peers against an in-process tracker and checks
// the report.
func TestSmallRun(t *testing.T) {
	reg, err := tracker.OpenSQLite(filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	srv := httptest.NewServer(tracker.NewServer(reg, tracker.ServerOptions{TTL: time.Minute, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	defer srv.Close()

	out := filepath.Join(t.TempDir(), "r.json")
	var report strings.Builder
	if err := run([]string{"-tracker", srv.URL, "-peers", "6", "-hashes", "300", "-pool", "500", "-deltas", "3",
		"-finds", "200", "-concurrency", "4", "-rate", "2000", "-json", out}, &report); err != nil {
		t.Fatalf("%v\n%s", err, report.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	// Each delta removes 10 and adds 10: the count is unchanged.
	if res.Errors != 0 || res.Mismatches != 0 || res.Incomplete || res.HeldHashes != 6*300 ||
		res.Full.N != 6 || res.Delta.N != 18 || res.Heartbeat.N != 6 || res.Find.N != 200 ||
		res.FindPopular.N+res.FindSingle.N+res.FindMiss.N != 200 || res.FindMiss.N != 40 {
		t.Fatalf("results: %+v\n%s", res, report.String())
	}
	if !strings.Contains(report.String(), "errors: 0") {
		t.Fatalf("report:\n%s", report.String())
	}
}

func TestRefusesRemoteTracker(t *testing.T) {
	for _, u := range []string{"http://192.0.2.1:12305", "ftp://127.0.0.1/", "127.0.0.1:12305"} {
		if err := checkLoopback(u); err == nil {
			t.Errorf("%s: accepted", u)
		}
	}
	for _, u := range []string{"http://127.0.0.1:12305", "http://[::1]:1", "http://localhost:12305/"} {
		if err := checkLoopback(u); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
}
