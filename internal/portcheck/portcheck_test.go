package portcheck_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/peerix/peerix/internal/portcheck"
)

// reusePort binds like libp2p: with SO_REUSEPORT, which lets a second
// socket with the same option share the port silently.
var reusePort = net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
	if err != nil {
		return err
	}
	return serr
}}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestFree(t *testing.T) {
	if err := portcheck.Free(0, "0.0.0.0"); err != nil {
		t.Errorf("port 0: %v", err)
	}
	port := freePort(t)
	if err := portcheck.Free(port, "127.0.0.1"); err != nil {
		t.Fatalf("free port %d: %v", port, err)
	}
	// The check lets the port go: it can be bound right after.
	if err := portcheck.Free(port, "127.0.0.1"); err != nil {
		t.Fatalf("free port %d, checked twice: %v", port, err)
	}

	tests := []struct {
		name, proto string
		hold        func(addr string) (func() error, error)
	}{
		{"TCP with SO_REUSEPORT", "TCP", func(addr string) (func() error, error) {
			ln, err := reusePort.Listen(context.Background(), "tcp4", addr)
			if err != nil {
				return nil, err
			}
			return ln.Close, nil
		}},
		{"UDP with SO_REUSEPORT", "UDP", func(addr string) (func() error, error) {
			pc, err := reusePort.ListenPacket(context.Background(), "udp4", addr)
			if err != nil {
				return nil, err
			}
			return pc.Close, nil
		}},
		{"plain UDP", "UDP", func(addr string) (func() error, error) {
			pc, err := net.ListenPacket("udp4", addr)
			if err != nil {
				return nil, err
			}
			return pc.Close, nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := freePort(t)
			addr := "127.0.0.1:" + strconv.Itoa(port)
			release, err := tt.hold(addr)
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			err = portcheck.Free(port, "127.0.0.1")
			if !errors.Is(err, portcheck.ErrInUse) || !strings.Contains(err.Error(), tt.proto+" "+addr) {
				t.Errorf("port held: %v; want ErrInUse naming %s %s", err, tt.proto, addr)
			}
			// All addresses overlap a specific one.
			if err := portcheck.Free(port, "0.0.0.0"); !errors.Is(err, portcheck.ErrInUse) {
				t.Errorf("0.0.0.0 with 127.0.0.1 held: %v", err)
			}
		})
	}
}

// An address this machine does not have is not a clash: libp2p deals
// with it as before.
func TestFreeIgnoresOtherErrors(t *testing.T) {
	if err := portcheck.Free(freePort(t), "192.0.2.1"); err != nil {
		t.Errorf("foreign address: %v", err)
	}
}
