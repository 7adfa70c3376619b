package p2p

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/peerix/peerix/internal/portcheck"
)

// TestSecondHostOnATakenPort: libp2p binds with SO_REUSEPORT, so without
// a check a second host on the same fixed port would start and share it.
func TestSecondHostOnATakenPort(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ctx := context.Background()
	key1, _ := LoadOrCreateIdentity(t.TempDir())
	first, err := NewHost(ctx, key1, port, nil, 0, testLog(t))
	if err != nil {
		t.Skipf("port %d taken meanwhile: %v", port, err)
	}
	defer first.Close()
	key2, _ := LoadOrCreateIdentity(t.TempDir())
	second, err := NewHost(ctx, key2, port, nil, 0, testLog(t))
	if err == nil {
		second.Close()
		t.Fatalf("a second host started on port %d", port)
	}
	if !errors.Is(err, portcheck.ErrInUse) || !strings.Contains(err.Error(), ":"+strconv.Itoa(port)+" is taken") {
		t.Errorf("second host: %v; want ErrInUse naming the port", err)
	}
}
