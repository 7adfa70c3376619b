package tracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The registry and server tests run against both backends. PostgreSQL is
// Debian's `postgresql` package (scripts/deps.sh installs it): the first
// test that needs it runs initdb into a temporary directory and starts a
// private server on 127.0.0.1 (as the `postgres` user when the tests run
// as root: postgres refuses to run as root); TestMain stops it and removes
// the directory. Each test gets a schema of its own in one database.
//
// Where PostgreSQL is not installed its tests are skipped, unless CI=true:
// then they fail. PEERIX_TEST_POSTGRES=postgres://... uses an existing
// server instead (the tests create and drop schemas in its database).

func TestMain(m *testing.M) {
	code := m.Run()
	if testPG.server != nil {
		testPG.server.stop()
	}
	os.Exit(code)
}

// backend is a Registry implementation under test.
type backend struct {
	name string
	// open returns a new, empty registry.
	open func(t testing.TB) Registry
}

var (
	sqliteBackend   = backend{"sqlite", func(t testing.TB) Registry { return openTestDB(t) }}
	postgresBackend = backend{"postgres", func(t testing.TB) Registry { return openTestPostgres(t, newTestSchema(t)) }}
)

// eachBackend runs f as a subtest per backend.
func eachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range []backend{sqliteBackend, postgresBackend} {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

var testPG struct {
	once   sync.Once
	server *pgServer // nil with PEERIX_TEST_POSTGRES
	url    string    // of the test database
	admin  *pgxpool.Pool
	err    error
	n      atomic.Int64 // schemas made
}

// testPostgresURL starts the test server on first use and returns the
// test database's URL; it skips (fails, with CI=true) the test if
// PostgreSQL is not available.
func testPostgresURL(t testing.TB) string {
	t.Helper()
	testPG.once.Do(func() {
		start := time.Now()
		if u := os.Getenv("PEERIX_TEST_POSTGRES"); u != "" {
			testPG.url = u
		} else {
			testPG.server, testPG.err = startPostgres()
			if testPG.err != nil {
				return
			}
			testPG.url = testPG.server.url
		}
		testPG.admin, testPG.err = pgxpool.New(context.Background(), testPG.url)
		if testPG.err == nil {
			testPG.err = testPG.admin.Ping(context.Background())
		}
		if testPG.err == nil && testPG.server != nil {
			fmt.Fprintf(os.Stderr, "tracker tests: PostgreSQL %s started in %v\n", testPG.server.version, time.Since(start).Round(time.Millisecond))
		}
	})
	if testPG.err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL: %v", testPG.err)
		}
		t.Skipf("PostgreSQL not available (set CI=true to fail instead): %v", testPG.err)
	}
	return testPG.url
}

// newTestSchema creates an empty schema in the test database and returns
// a URL whose connections use it; the schema is dropped at the end of the
// test.
func newTestSchema(t testing.TB) string {
	t.Helper()
	base := testPostgresURL(t)
	schema := fmt.Sprintf("peerix_test_%d_%d", os.Getpid(), testPG.n.Add(1))
	ctx := context.Background()
	if _, err := testPG.admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testPG.admin.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE") })
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	return base + sep + "search_path=" + schema
}

// openTestPostgres opens a registry on url, closed at the end of the test
// (before the schema is dropped).
func openTestPostgres(t testing.TB, url string) *Postgres {
	t.Helper()
	db, err := OpenPostgres(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// pgServer is a private PostgreSQL server for the tests.
type pgServer struct {
	dir, url, version string
	cmd               *exec.Cmd
	exited            chan struct{}
}

// pgBinDir finds the directory of initdb and postgres: Debian keeps them
// in /usr/lib/postgresql/<version>/bin, off PATH.
func pgBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { // newest version first
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if _, err := os.Stat(filepath.Join(filepath.Dir(real), "postgres")); err == nil {
				return filepath.Dir(real), nil
			}
		}
	}
	return "", errors.New("no initdb and postgres (install Debian's postgresql package: scripts/deps.sh test)")
}

// startPostgres runs initdb into a new temporary directory and starts a
// server on a free loopback port, dying with the test process.
func startPostgres() (*pgServer, error) {
	bin, err := pgBinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "peerix-pg-")
	if err != nil {
		return nil, err
	}
	s := &pgServer{dir: dir, version: filepath.Base(filepath.Dir(bin))}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running as root and no postgres user to run the server as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	command := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Dir = dir
		cmd.Env = []string{"LC_ALL=C", "PATH=" + bin + ":/usr/bin:/bin", "HOME=" + dir}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
		return cmd
	}
	data := filepath.Join(dir, "data")
	if out, err := command("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	for attempt := 0; ; attempt++ {
		port, err := freeTCPPort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		// Not through pg_ctl: as a child of the test process, with
		// Pdeathsig, the server cannot outlive a killed test binary.
		s.cmd = command("postgres", "-D", data, "-k", dir, "-p", strconv.Itoa(port),
			"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
			"-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "log_min_messages=warning")
		logf, err := os.Create(filepath.Join(dir, "server.log"))
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		if err := s.cmd.Start(); err != nil {
			logf.Close()
			os.RemoveAll(dir)
			return nil, fmt.Errorf("postgres: %w", err)
		}
		logf.Close()
		s.exited = make(chan struct{})
		go func() { s.cmd.Wait(); close(s.exited) }()
		s.url = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
		if err = s.waitReady(); err == nil {
			break
		}
		s.stopServer()
		if attempt == 2 {
			log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			os.RemoveAll(dir)
			return nil, fmt.Errorf("postgres did not start: %v\n%s", err, log)
		}
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.url)
	if err == nil {
		_, err = conn.Exec(ctx, "CREATE DATABASE peerix_test")
		conn.Close(ctx)
	}
	if err != nil {
		s.stop()
		return nil, err
	}
	s.url = strings.Replace(s.url, "/postgres?", "/peerix_test?", 1)
	return s, nil
}

func (s *pgServer) waitReady() error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-s.exited:
			return errors.New("server exited")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, s.url)
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopServer shuts the server down (SIGQUIT: immediate, the data is
// thrown away anyway).
func (s *pgServer) stopServer() {
	s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *pgServer) stop() {
	if testPG.admin != nil {
		testPG.admin.Close()
	}
	s.stopServer()
	os.RemoveAll(s.dir)
}

func freeTCPPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
