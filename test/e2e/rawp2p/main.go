// Command rawp2p is the limit the P2P benchmark measures peerix against:
// bare libp2p (the transports, security and muxers peerix's host uses, no
// peerix on top) streaming bytes from one host to another.
//
//	rawp2p serve -port P -bytes N   # prints its peer ID, then serves
//	rawp2p get /ip4/.../tcp/P/p2p/ID  # prints "<bytes> <nanoseconds>"
//
// serve sends N bytes (from one buffer, so the sender costs what the
// transport costs) on every stream of /rawp2p/1 opened to it. get dials
// the address alone (TCP or QUIC, as it names), opens one stream, and
// reads it to the end; the time is from the stream's opening to its last
// byte.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

const proto = "/rawp2p/1"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "rawp2p:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: rawp2p serve -port P -bytes N | rawp2p get ADDR")
	}
	switch args[0] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		port := fs.Int("port", 0, "TCP and UDP (QUIC) port")
		size := fs.Int64("bytes", 256<<20, "bytes sent on each stream")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return serve(*port, *size)
	case "get":
		if len(args) != 2 {
			return errors.New("usage: rawp2p get ADDR")
		}
		return get(args[1])
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func serve(port int, size int64) error {
	p := strconv.Itoa(port)
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/0.0.0.0/tcp/"+p, "/ip4/0.0.0.0/udp/"+p+"/quic-v1"),
		libp2p.Transport(quic.NewTransport),
		libp2p.Transport(tcp.NewTCPTransport))
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	h.SetStreamHandler(proto, func(st network.Stream) {
		defer st.Close()
		for left := size; left > 0; {
			n, err := st.Write(buf[:min(int64(len(buf)), left)])
			if err != nil {
				st.Reset()
				return
			}
			left -= int64(n)
		}
	})
	fmt.Println(h.ID())
	select {}
}

func get(addr string) error {
	a, err := ma.NewMultiaddr(addr)
	if err != nil {
		return err
	}
	info, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		return err
	}
	h, err := libp2p.New(libp2p.NoListenAddrs,
		libp2p.Transport(quic.NewTransport),
		libp2p.Transport(tcp.NewTCPTransport))
	if err != nil {
		return err
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := h.Connect(ctx, *info); err != nil {
		return err
	}
	start := time.Now()
	st, err := h.NewStream(ctx, info.ID, proto)
	if err != nil {
		return err
	}
	n, err := io.CopyBuffer(io.Discard, st, make([]byte, 256<<10))
	took := time.Since(start)
	if err != nil {
		return err
	}
	fmt.Println(n, took.Nanoseconds())
	return nil
}
