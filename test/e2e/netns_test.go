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

	"github.com/peerix/peerix/internal/nixtest"
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
func requireNetns(t testing.TB) {
	t.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "network namespaces need root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		reason = "ip (iproute2) not found on PATH: the LAN tests need network namespaces"
	} else if _, err := exec.LookPath("nsenter"); err != nil {
		reason = "nsenter (util-linux) not found on PATH: the LAN tests run programs in network namespaces with it"
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

// netnsSet is the network namespaces of one simulated network, all named
// <id>-<suffix>. They are removed when the test ends, whether it passed or
// not, every process left in them killed first.
type netnsSet struct {
	t       testing.TB
	id      string
	created []string
}

// newNetnsSet starts a set with a fresh id (and, once per run, removes the
// namespaces aborted runs left behind).
func newNetnsSet(t testing.TB) *netnsSet {
	t.Helper()
	requireNetns(t)
	staleNetnsOnce.Do(func() { removeStaleNetns(t) })
	s := &netnsSet{t: t, id: fmt.Sprintf("%s%s-%d-%s", netnsPrefix,
		strconv.FormatInt(time.Now().Unix(), 36), os.Getpid(), hex.EncodeToString(randomBytes(t, 2)))}
	t.Cleanup(func() {
		// In reverse: hosts before the bridge that joins them.
		for i := len(s.created) - 1; i >= 0; i-- {
			if err := deleteNetns(s.created[i]); err != nil {
				t.Errorf("removing network namespace: %v", err)
			}
		}
	})
	return s
}

// add creates namespace <id>-<suffix> with lo up and returns its name.
func (s *netnsSet) add(suffix string) string {
	s.t.Helper()
	ns := s.id + "-" + suffix
	mustIP(s.t, "netns", "add", ns)
	s.created = append(s.created, ns)
	mustIP(s.t, "-n", ns, "link", "set", "lo", "up")
	return ns
}

// addBridge creates namespace <id>-<suffix> holding bridge br0, up.
func (s *netnsSet) addBridge(suffix string) string {
	s.t.Helper()
	ns := s.add(suffix)
	mustIP(s.t, "-n", ns, "link", "add", "br0", "type", "bridge")
	mustIP(s.t, "-n", ns, "link", "set", "br0", "up")
	return ns
}

// plug connects namespace ns to the bridge in namespace bridge with a veth
// pair, port on the bridge's side, ifname on ns's side carrying addr/24,
// both ends up.
func (s *netnsSet) plug(bridge, port, ns, ifname string, addr netip.Addr, extra ...string) {
	s.t.Helper()
	mustIP(s.t, "-n", bridge, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns)
	mustIP(s.t, "-n", bridge, "link", "set", port, "master", "br0", "up")
	mustIP(s.t, append([]string{"-n", ns, "addr", "add", netip.PrefixFrom(addr, 24).String()}, append(extra, "dev", ifname)...)...)
	mustIP(s.t, "-n", ns, "link", "set", ifname, "up")
}

// waitLinksUp waits (bounded: 5 s for all) until the kernel says every
// link, given as namespace and interface pairs, carries traffic: both ends
// of a veth are up by then, but it may take a moment.
func (s *netnsSet) waitLinksUp(links ...[2]string) {
	s.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, l := range links {
		for {
			out, err := runIP("-n", l[0], "-o", "link", "show", l[1])
			if err == nil && strings.Contains(out, "LOWER_UP") && strings.Contains(out, "state UP") {
				break
			}
			if time.Now().After(deadline) {
				s.t.Fatalf("%s of %s not up within 5s: %s %v", l[1], l[0], out, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// randomBytes returns n random bytes.
func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// withLast returns the address of p whose last byte is last.
func withLast(p netip.Prefix, last byte) netip.Addr {
	b := p.Addr().As4()
	b[3] = last
	return netip.AddrFrom4(b)
}

// newLAN creates a bridge namespace and one host namespace per label, all on
// one fresh /24, and removes them all (killing every process left in them)
// when the test ends, whether it passed or not.
func newLAN(t testing.TB, labels ...string) *lanNet {
	t.Helper()
	set := newNetnsSet(t)
	rnd := randomBytes(t, 2)
	// 10.<1..254>.<0..255>.0/24: which private /24 does not matter (each LAN
	// is its own set of namespaces); a random one keeps any mix-up visible.
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1 + rnd[0]%254, rnd[1], 0}), 24)
	l := &lanNet{
		id:        set.id,
		subnet:    subnet,
		broadcast: withLast(subnet, 255),
		bridge:    set.addBridge("br"),
		hosts:     map[string]*nsHost{},
	}
	var links [][2]string
	for i, label := range labels {
		h := &nsHost{label: label, addr: withLast(subnet, byte(10+i))}
		h.ns = set.add(strings.ToLower(label))
		set.plug(l.bridge, "v"+strconv.Itoa(i), h.ns, "eth0", h.addr, "brd", "+")
		l.hosts[label] = h
		links = append(links, [2]string{h.ns, "eth0"})
	}
	set.waitLinksUp(links...)
	t.Logf("LAN %s: %s, hosts %s", l.id, subnet, l.describe(labels))
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

// runIP runs one `ip` command (bounded). `ip -n NS ...` runs ip inside
// namespace NS through inNetns: ip's own -n remounts /sys the way
// `ip netns exec` does, which needs / to be a mount point.
func runIP(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
	defer cancel()
	var cmd *exec.Cmd
	if len(args) > 2 && args[0] == "-n" {
		cmd = inNetns(exec.CommandContext(ctx, "ip", args[2:]...), args[1])
	} else {
		cmd = exec.CommandContext(ctx, "ip", args...)
	}
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func mustIP(t testing.TB, args ...string) {
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
func removeStaleNetns(t testing.TB) {
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
func (h *nsHost) listenUDP(t testing.TB, port int) *net.UDPConn {
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
func (h *nsHost) listenTCP(t testing.TB, addr string) net.Listener {
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

// inNetns makes cmd run in network namespace ns, its environment and
// everything else kept: `nsenter --net=<ns> -- <program> <args>`. nsenter
// joins the namespace and execs the program, so cmd's process is the
// program itself and signals sent to it reach it directly. Not
// `ip netns exec`: that also remounts /sys in a mount namespace of its own,
// which needs / to be a mount point, and on a fresh userland (a chroot, some
// containers) it is not.
func inNetns(cmd *exec.Cmd, ns string) *exec.Cmd {
	cmd.Args = append([]string{"nsenter", "--net=" + filepath.Join(netnsDir, ns), "--", cmd.Path}, cmd.Args[1:]...)
	nsenter, err := exec.LookPath("nsenter")
	if err != nil && cmd.Err == nil {
		cmd.Err = err
	}
	cmd.Path = nsenter
	return cmd
}

// command runs a program on the host.
func (h *nsHost) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := inNetns(exec.CommandContext(ctx, name, args...), h.ns)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// nix runs a Nix tool on the host within nixTimeout, in the tests' own
// Nix configuration (internal/nixtest).
func (h *nsHost) nix(t testing.TB, tool string, args ...string) nixResult {
	t.Helper()
	return h.nixWithin(t, nixTimeout, tool, args...)
}

// nixWithin is nix with its own bound.
func (h *nsHost) nixWithin(t testing.TB, timeout time.Duration, tool string, args ...string) nixResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return runCmd(inNetns(nixtest.Command(ctx, tool, args...), h.ns), "on host "+h.label+": ", tool, args)
}
