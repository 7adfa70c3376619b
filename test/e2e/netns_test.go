package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Simulated LANs: every test that needs machines on a network gets its own
// set of network namespaces, one per host plus one holding the bridge that
// joins them. The hosts have a private address on one /24 and no route
// anywhere else; nothing is created outside these namespaces.

const (
	// netnsPrefix starts the name of every namespace these tests create:
	// pxe2e-<creation time base36>-<pid>-<random>-<label>.
	netnsPrefix = "pxe2e-"
	// netnsDir is where `ip netns` keeps its namespaces.
	netnsDir = "/var/run/netns"
	// ipTimeout bounds one `ip` command.
	ipTimeout = 10 * time.Second
	// netnsStaleAfter: a namespace of ours this old is left over from an
	// aborted run (a whole LAN test takes seconds); so is one whose creating
	// process is gone, once it is a minute old.
	netnsStaleAfter = 30 * time.Minute
)

// lanNet is one simulated LAN.
type lanNet struct {
	id        string       // namespace name prefix of this LAN
	subnet    netip.Prefix // 10.<random>.<random>.0/24
	broadcast netip.Addr
	bridge    string // namespace holding the bridge
	hosts     map[string]*nsHost
}

// nsHost is one machine on a simulated LAN: a network namespace with lo and
// eth0 up and one address.
type nsHost struct {
	label string // "A", "B", ...
	ns    string // namespace name
	addr  netip.Addr
}

// requireNetns skips the test unless network namespaces can be made here
// (root and iproute2); under CI=true it fails instead.
func requireNetns(t *testing.T) {
	t.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "network namespaces need root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		reason = "ip (iproute2) not found on PATH: the LAN tests need network namespaces"
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s", reason)
	}
	t.Skip(reason)
}

var staleNetnsOnce sync.Once

// newLAN creates a bridge namespace and one host namespace per label, all on
// one fresh /24, and removes them all (killing every process left in them)
// when the test ends, whether it passed or not.
func newLAN(t *testing.T, labels ...string) *lanNet {
	t.Helper()
	requireNetns(t)
	staleNetnsOnce.Do(func() { removeStaleNetns(t) })

	rnd := make([]byte, 4)
	if _, err := rand.Read(rnd); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%s%s-%d-%s", netnsPrefix, strconv.FormatInt(time.Now().Unix(), 36), os.Getpid(), hex.EncodeToString(rnd[:2]))
	// 10.<1..254>.<0..255>.0/24: which private /24 does not matter (each LAN
	// is its own set of namespaces); a random one keeps any mix-up visible.
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1 + rnd[2]%254, rnd[3], 0}), 24)
	b := subnet.Addr().As4()
	b[3] = 255
	l := &lanNet{
		id:        id,
		subnet:    subnet,
		broadcast: netip.AddrFrom4(b),
		bridge:    id + "-br",
		hosts:     map[string]*nsHost{},
	}
	var created []string
	t.Cleanup(func() {
		// Hosts first, the bridge last.
		for i := len(created) - 1; i >= 0; i-- {
			if err := deleteNetns(created[i]); err != nil {
				t.Errorf("removing network namespace: %v", err)
			}
		}
	})
	add := func(ns string) {
		t.Helper()
		mustIP(t, "netns", "add", ns)
		created = append(created, ns)
		mustIP(t, "-n", ns, "link", "set", "lo", "up")
	}

	add(l.bridge)
	mustIP(t, "-n", l.bridge, "link", "add", "br0", "type", "bridge")
	mustIP(t, "-n", l.bridge, "link", "set", "br0", "up")
	for i, label := range labels {
		h := &nsHost{label: label, ns: id + "-" + strings.ToLower(label)}
		hb := subnet.Addr().As4()
		hb[3] = byte(10 + i)
		h.addr = netip.AddrFrom4(hb)
		add(h.ns)
		port := "v" + strconv.Itoa(i)
		mustIP(t, "-n", l.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
		mustIP(t, "-n", l.bridge, "link", "set", port, "master", "br0", "up")
		mustIP(t, "-n", h.ns, "addr", "add", netip.PrefixFrom(h.addr, 24).String(), "brd", "+", "dev", "eth0")
		mustIP(t, "-n", h.ns, "link", "set", "eth0", "up")
		l.hosts[label] = h
	}
	// Both ends of every veth are up now; wait (bounded) until the kernel
	// says the links carry traffic.
	deadline := time.Now().Add(5 * time.Second)
	for _, h := range l.hosts {
		for {
			out, err := runIP("-n", h.ns, "-o", "link", "show", "eth0")
			if err == nil && strings.Contains(out, "LOWER_UP") && strings.Contains(out, "state UP") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("eth0 of %s not up within 5s: %s %v", h.ns, out, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("LAN %s: %s, hosts %s", id, subnet, l.describe(labels))
	return l
}

func (l *lanNet) describe(labels []string) string {
	var parts []string
	for _, label := range labels {
		parts = append(parts, label+"="+l.hosts[label].addr.String())
	}
	return strings.Join(parts, " ")
}

// host returns the host of that label.
func (l *lanNet) host(label string) *nsHost { return l.hosts[label] }

func runIP(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func mustIP(t *testing.T, args ...string) {
	t.Helper()
	if _, err := runIP(args...); err != nil {
		t.Fatal(err)
	}
}

// deleteNetns kills every process still in ns, waits (bounded) until none
// is left, and deletes it.
func deleteNetns(ns string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := runIP("netns", "pids", ns)
		if err != nil {
			break // gone already, or unreadable: let `ip netns del` say which
		}
		var pids []int
		for _, f := range strings.Fields(out) {
			// Never this process: a thread of it that could not leave the
			// namespace is parked for good and keeps nothing running there.
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				pids = append(pids, pid)
			}
		}
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still in %s after SIGKILL", pids, ns)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := runIP("netns", "del", ns); err != nil {
		if _, statErr := os.Stat(filepath.Join(netnsDir, ns)); os.IsNotExist(statErr) {
			return nil
		}
		return err
	}
	return nil
}

// removeStaleNetns deletes namespaces of ours left behind by runs that were
// killed before their cleanup ran.
func removeStaleNetns(t *testing.T) {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return // no namespaces at all
	}
	for _, e := range entries {
		name := e.Name()
		rest, ok := strings.CutPrefix(name, netnsPrefix)
		if !ok {
			continue
		}
		// <time base36>-<pid>-<random>-<label>
		f := strings.SplitN(rest, "-", 4)
		if len(f) < 3 {
			continue
		}
		created, err1 := strconv.ParseInt(f[0], 36, 64)
		pid, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			continue
		}
		age := time.Since(time.Unix(created, 0))
		creatorGone := syscall.Kill(pid, 0) == syscall.ESRCH
		if age > netnsStaleAfter || (creatorGone && age > time.Minute) {
			if err := deleteNetns(name); err != nil {
				t.Logf("stale network namespace %s: %v", name, err)
			} else {
				t.Logf("removed stale network namespace %s (%v old)", name, age.Round(time.Second))
			}
		}
	}
}

// do runs fn on an OS thread that has entered the host's network namespace.
// Sockets fn creates stay in that namespace for their whole life, whichever
// goroutine uses them later. Goroutines fn starts do not run in it.
func (h *nsHost) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// If the thread cannot be switched back it stays locked: when this
		// goroutine returns, the runtime ends it, so no other goroutine
		// ever runs in the wrong namespace.
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join(netnsDir, h.ns))
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering network namespace %s: %w", h.ns, err)
			return
		}
		err = fn()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// listenUDP opens a UDP socket on the host (port 0: any free port).
func (h *nsHost) listenUDP(t *testing.T, port int) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	err := h.do(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	})
	if err != nil {
		t.Fatalf("UDP socket on host %s port %d: %v", h.label, port, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// listenTCP opens a TCP listener on the host.
func (h *nsHost) listenTCP(t *testing.T, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := h.do(func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("TCP listener on host %s %s: %v", h.label, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dial connects from the host.
func (h *nsHost) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := h.do(func() (err error) {
		conn, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// httpClient makes HTTP requests from the host.
func (h *nsHost) httpClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:        h.dial,
			DisableCompression: true,
			MaxIdleConns:       4,
			IdleConnTimeout:    10 * time.Second,
		},
		Timeout: requestTimeout,
	}
}

// command runs a program on the host.
func (h *nsHost) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// nix runs a Nix tool on the host, like runNix.
func (h *nsHost) nix(t *testing.T, tool string, args ...string) nixResult {
	t.Helper()
	return nixOnHost(t, h, nixTimeout, tool, args...)
}
