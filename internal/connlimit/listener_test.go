package connlimit

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/httploop"
)

func TestForLimit(t *testing.T) {
	tests := []struct {
		n    int
		want Budget
	}{
		{256, Budget{Limit: 256, PeerConns: 32, PerClient: 8, PeerTransfers: 16, P2PFDs: 64}},
		{1024, Budget{Limit: 1024, PeerConns: 128, PerClient: 32, PeerTransfers: 64, P2PFDs: 256}},
		{16, Budget{Limit: 16, PeerConns: 8, PerClient: 2, PeerTransfers: 4, P2PFDs: 16}},
		{1 << 20, Budget{Limit: 1 << 20, PeerConns: 8192, PerClient: 32, PeerTransfers: 1024, P2PFDs: 1 << 18}},
	}
	for _, tt := range tests {
		if got := ForLimit(tt.n); got != tt.want {
			t.Errorf("ForLimit(%d) = %+v, want %+v", tt.n, got, tt.want)
		}
		// Peers (connections with their files, transfers, libp2p) leave
		// at least a quarter for this machine, with a small limit too.
		b := ForLimit(tt.n)
		if peers := 2*b.PeerConns + b.PeerTransfers + b.P2PFDs; tt.n >= 256 && peers > tt.n*3/4 {
			t.Errorf("ForLimit(%d): peers may hold %d descriptors", tt.n, peers)
		}
	}
	if b := FromRlimit(); b.Limit <= 0 || b.PeerConns <= 0 {
		t.Errorf("FromRlimit() = %+v", b)
	}
}

// server is an http.Server on a Listener; clients from 127.0.0.1 are
// "this machine", from other 127.x addresses "peers".
type server struct {
	ln      *Listener
	url     string
	addr    string
	release chan struct{} // closes /block's wait
	file    string        // served at /file
	handled chan error    // what /nar's and /file's copies ended with
}

func newServer(t *testing.T, opt Options) *server { return newServerVia(t, opt, false) }

// newServerVia serves through internal/httploop when loop is set: its
// routes are the loop's, but for /other, which it hands to net/http.
func newServerVia(t *testing.T, opt Options, loop bool) *server {
	t.Helper()
	tcp, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opt.Local = func(ip netip.Addr) bool { return ip == netip.MustParseAddr("127.0.0.1") }
	s := &server{ln: NewListener(tcp, opt), release: make(chan struct{}), handled: make(chan error, 100)}
	s.addr = tcp.Addr().String()
	s.url = "http://" + s.addr
	s.file = filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(s.file, bytes.Repeat([]byte("f"), 16<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/quick", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/block", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-s.release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "released")
	})
	mux.HandleFunc("/nar", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "16777216")
		_, err := w.Write(bytes.Repeat([]byte("n"), 16<<20))
		s.handled <- err
	})
	mux.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(s.file)
		if err != nil {
			s.handled <- err
			return
		}
		defer f.Close()
		w.Header().Set("Content-Length", "16777216")
		_, err = io.Copy(w, f) // sendfile through Conn.ReadFrom
		s.handled <- err
	})
	mux.HandleFunc("/other", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "other") })
	srv := &http.Server{Handler: mux, ConnState: s.ln.ConnState}
	if !loop {
		go srv.Serve(s.ln)
		t.Cleanup(func() {
			close(s.release)
			srv.Close()
		})
		return s
	}
	fast := httploop.New(httploop.Options{
		Handler:   mux,
		Fast:      func(p string) bool { return p != "/other" },
		ConnState: s.ln.ConnState,
	})
	go fast.Serve(s.ln)
	go srv.Serve(fast.HandOff())
	t.Cleanup(func() {
		close(s.release)
		fast.Close()
		srv.Close()
	})
	return s
}

// dialFrom connects from 127.0.0.<last>.
func (s *server) dialFrom(t *testing.T, last byte) net.Conn {
	t.Helper()
	return s.dial(t, last, false)
}

// dialStaller connects from 127.0.0.<last> with a tiny receive buffer, so
// that the server stalls at once if it does not read. (Only for clients
// that do not read: on loopback a window smaller than a segment makes TCP
// itself crawl.)
func (s *server) dialStaller(t *testing.T, last byte) net.Conn {
	t.Helper()
	return s.dial(t, last, true)
}

func (s *server) dial(t *testing.T, last byte, tiny bool) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, last)}}
	if tiny {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) {
				syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
		}
	}
	c, err := d.Dial("tcp4", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refusedSoon connects from 127.0.0.<last> and reports whether the
// server closed the connection at once (the reset may even reach connect).
func (s *server) refusedSoon(t *testing.T, last byte) bool {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, last)}}
	c, err := d.Dial("tcp4", s.addr)
	if err != nil {
		return errors.Is(err, syscall.ECONNRESET)
	}
	defer c.Close()
	return closedSoon(c, 2*time.Second)
}

func request(t *testing.T, c net.Conn, path string) {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
}

// closedSoon reports whether the server closed c within d (reading what
// it sent meanwhile).
func closedSoon(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// quick asks /quick on c and reads the answer.
func quick(t *testing.T, c net.Conn) {
	t.Helper()
	request(t, c, "/quick")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufioReader(c), nil)
	if err != nil {
		t.Fatalf("/quick: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetReadDeadline(time.Time{})
}

func TestPerClientCap(t *testing.T) {
	s := newServer(t, Options{Budget: Budget{PeerConns: 8, PerClient: 2}})
	a, b := s.dialFrom(t, 2), s.dialFrom(t, 2)
	request(t, a, "/block")
	request(t, b, "/block")
	waitFor(t, func() bool { return s.ln.Stats().PeerConns == 2 })
	time.Sleep(50 * time.Millisecond) // both requests under way
	// A third from the same client: nothing of it can be shed (both wait
	// for an answer, neither stalls writing).
	if !s.refusedSoon(t, 2) {
		t.Error("a third connection of one client was kept")
	}
	// Another client is served.
	quick(t, s.dialFrom(t, 3))
	// This machine is never limited.
	for range 20 {
		quick(t, s.dialFrom(t, 1))
	}
	if st := s.ln.Stats(); st.Refused != 1 || st.Shed != 0 {
		t.Errorf("stats %+v, want 1 refused", st)
	}
}

// Idle connections are shed first, whether net/http or the lean loop
// (internal/httploop) serves them: both tell the Listener their state.
func TestBudgetShedsIdleFirst(t *testing.T) {
	for _, viaLoop := range []bool{false, true} {
		t.Run(map[bool]string{false: "net/http", true: "httploop"}[viaLoop], func(t *testing.T) {
			s := newServerVia(t, Options{Budget: Budget{PeerConns: 3, PerClient: 3}}, viaLoop)
			busy := s.dialFrom(t, 2)
			request(t, busy, "/block")
			idle := []net.Conn{s.dialFrom(t, 3), s.dialFrom(t, 4)}
			for _, c := range idle {
				quick(t, c) // then idle, kept alive
			}
			waitFor(t, func() bool { return s.ln.Stats().PeerConns == 3 })
			time.Sleep(50 * time.Millisecond)
			quick(t, s.dialFrom(t, 5))
			if st := s.ln.Stats(); st.Shed != 1 || st.Refused != 0 {
				t.Errorf("stats %+v, want one idle connection shed", st)
			}
			if closedSoon(busy, 200*time.Millisecond) {
				t.Error("a connection waiting for its answer was shed, not an idle one")
			}
		})
	}
}

func TestBudgetShedsStalledNotProgressing(t *testing.T) {
	s := newServer(t, Options{Budget: Budget{PeerConns: 2, PerClient: 2}, StallAfter: 300 * time.Millisecond})
	stalled := s.dialStaller(t, 2)
	request(t, stalled, "/nar") // never read
	reading := s.dialFrom(t, 3)
	request(t, reading, "/nar")
	done := make(chan struct{})
	go func() { // reads steadily
		defer close(done)
		buf := make([]byte, 32<<10)
		for {
			reading.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := reading.Read(buf); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(600 * time.Millisecond)
	quick(t, s.dialFrom(t, 4))
	if st := s.ln.Stats(); st.Shed != 1 {
		t.Errorf("stats %+v, want the stalled response shed", st)
	}
	if !closedSoon(stalled, 2*time.Second) {
		t.Error("the stalled connection is still open")
	}
	select {
	case <-done:
		t.Error("the progressing transfer was cut")
	default:
	}
}

// A response that makes no progress for the timeout is cut; one that
// progresses slowly for much longer is not. Both for plain writes and for
// files sent with sendfile.
func TestWriteDeadlineMovesWithProgress(t *testing.T) {
	for _, path := range []string{"/nar", "/file"} {
		t.Run(path, func(t *testing.T) {
			s := newServer(t, Options{Budget: Budget{PeerConns: 8, PerClient: 8}, PeerTimeout: 400 * time.Millisecond})
			c := s.dialStaller(t, 2)
			request(t, c, path)
			start := time.Now()
			select {
			case err := <-s.handled:
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Errorf("a client that reads nothing: the copy ended with %v, want a timeout", err)
				}
				if took := time.Since(start); took > 3*time.Second {
					t.Errorf("cut after %v", took)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a client that reads nothing was not cut")
			}
			if st := s.ln.Stats(); st.Cut != 1 {
				t.Errorf("stats %+v, want 1 cut", st)
			}

			// 16 MiB at about 8 MiB/s in 64 KiB steps: 2 s, five timeouts.
			c = s.dialFrom(t, 3)
			request(t, c, path)
			resp, err := http.ReadResponse(bufioReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			n := int64(0)
			for {
				m, err := io.CopyN(io.Discard, resp.Body, 64<<10)
				n += m
				if err != nil {
					break
				}
				time.Sleep(8 * time.Millisecond)
			}
			if n != 16<<20 {
				t.Errorf("a slow but steady reader got %d bytes, want all 16 MiB", n)
			}
			if err := <-s.handled; err != nil {
				t.Errorf("a slow but steady reader: the copy ended with %v", err)
			}
		})
	}
}

// This machine's connections get the long timeout.
func TestLocalTimeout(t *testing.T) {
	s := newServer(t, Options{PeerTimeout: 200 * time.Millisecond, LocalTimeout: 3 * time.Second})
	c := s.dialStaller(t, 1)
	request(t, c, "/nar")
	select {
	case err := <-s.handled:
		t.Fatalf("a local client was cut after the peers' timeout: %v", err)
	case <-time.After(time.Second):
	}
	c.Close()
	<-s.handled
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// A connection handed on to net/http is reported by net/http: when idle
// there, it is the one a newcomer takes the place of.
func TestBudgetHandedOffIdleShed(t *testing.T) {
	s := newServerVia(t, Options{Budget: Budget{PeerConns: 2, PerClient: 2}}, true)
	busy := s.dialFrom(t, 2)
	request(t, busy, "/block")
	handed := s.dialFrom(t, 3)
	request(t, handed, "/other")
	handed.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufioReader(handed), nil)
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := io.ReadAll(resp.Body); string(body) != "other" {
		t.Fatalf("/other: %q", body)
	}
	waitFor(t, func() bool { return s.ln.Stats().PeerConns == 2 })
	time.Sleep(50 * time.Millisecond)
	quick(t, s.dialFrom(t, 4))
	if !closedSoon(handed, 2*time.Second) {
		t.Error("the idle handed-off connection was not shed")
	}
	if closedSoon(busy, 200*time.Millisecond) {
		t.Error("the busy connection was shed")
	}
}

// readFromConn is a connection whose ReadFrom notes what it was handed.
type readFromConn struct {
	net.Conn
	got []io.Reader
	out bytes.Buffer
}

func (c *readFromConn) ReadFrom(r io.Reader) (int64, error) {
	c.got = append(c.got, r)
	return io.Copy(&c.out, r)
}

func (c *readFromConn) SetWriteDeadline(time.Time) error { return nil }

// TestReadFromLimitedKeepsFile: a limited reader over a file (what the
// NAR writer hands out) reaches the connection's ReadFrom as limited
// readers over the file itself, which sendfile takes, in chunks.
func TestReadFromLimitedKeepsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	want := bytes.Repeat([]byte("0123456789abcdef"), (3*chunk+100)/16)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	inner := &readFromConn{}
	c := &Conn{Conn: inner, local: true, timeout: time.Minute}
	size := int64(2*chunk + 10)
	lr := &io.LimitedReader{R: f, N: size}
	n, err := c.ReadFrom(lr)
	if err != nil || n != size || lr.N != 0 {
		t.Fatalf("ReadFrom: %d bytes, %v, %d left; want %d, nil, 0", n, err, lr.N, size)
	}
	if !bytes.Equal(inner.out.Bytes(), want[:size]) {
		t.Fatal("the bytes differ")
	}
	if len(inner.got) != 3 {
		t.Fatalf("%d calls to ReadFrom, want 3 (2 chunks and the rest)", len(inner.got))
	}
	for i, r := range inner.got {
		if part, ok := r.(*io.LimitedReader); !ok || part.R != f {
			t.Errorf("call %d got %T, not a limited reader over the file", i, r)
		}
	}
}
