//go:build pprof

// Built with -tags pprof (for profiling only, never in releases), peerix
// serves net/http/pprof on the loopback address in PEERIX_PPROF, e.g.
//
//	go build -tags pprof ./cmd/peerix
//	PEERIX_PPROF=127.0.0.1:6060 ./peerix serve ...
//	go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=10
package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
)

func init() {
	addr := os.Getenv("PEERIX_PPROF")
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "peerix: PEERIX_PPROF:", err)
		os.Exit(2)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		fmt.Fprintln(os.Stderr, "peerix: PEERIX_PPROF must be a loopback address")
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	go http.Serve(ln, mux) //nolint:errcheck // a profiling aid; it ends with the process
}
