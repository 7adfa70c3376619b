// Command nethttp-floor serves files from memory with Go's net/http and
// nothing else: no routing, no lookup, no metrics. scripts/bench-local.sh
// measures it beside nginx and peerix, as the most any handler behind
// net/http can reach on the machine.
//
//	nethttp-floor ADDR URLPATH=FILE...
package main

import (
	"fmt"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
)

type file struct {
	body                []byte
	contentType, length []string
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: nethttp-floor ADDR URLPATH=FILE...")
		os.Exit(2)
	}
	files := map[string]file{}
	for _, arg := range os.Args[2:] {
		urlPath, name, ok := strings.Cut(arg, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "nethttp-floor: %q is not URLPATH=FILE\n", arg)
			os.Exit(2)
		}
		body, err := os.ReadFile(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nethttp-floor:", err)
			os.Exit(1)
		}
		ct := "application/x-nix-archive"
		if path.Ext(urlPath) == ".narinfo" {
			ct = "text/x-nix-narinfo"
		}
		files[urlPath] = file{body, []string{ct}, []string{strconv.Itoa(len(body))}}
	}
	err := http.ListenAndServe(os.Args[1], http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h["Content-Type"], h["Content-Length"] = f.contentType, f.length
		w.Write(f.body)
	}))
	fmt.Fprintln(os.Stderr, "nethttp-floor:", err)
	os.Exit(1)
}
