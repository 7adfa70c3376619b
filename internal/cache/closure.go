package cache

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/store"
)

// A peer that found a path here asks, at /local/<hash>.closure, for the
// narinfos of the rest of the path's closure in one answer, instead of one
// request for each path Nix asks for next (docs/protocol.md, "Closures").
// The answer holds, in breadth-first order from the path, the narinfo of
// every path of its closure this machine shares (the path itself left
// out), each as /local/<hash>.narinfo serves it, separated by a blank line,
// at most ClosureMaxPaths of them and about ClosureMaxBytes. A path that is
// absent or kept private is answered 404, as its narinfo is.
const (
	ClosureSuffix      = ".closure"
	ClosureContentType = "text/x-peerix-narinfos"
	ClosureMaxPaths    = 4096
	ClosureMaxBytes    = 4 << 20
	// closureSlots: closure answers built at once; a peer asking for more
	// meanwhile is answered 503 and asks path by path.
	closureSlots = 2
)

var closureContentType = []string{ClosureContentType}

// closureBufs recycles the answers' buffers.
var closureBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (s *Server) serveClosure(w http.ResponseWriter, r *http.Request, hash string) {
	status := s.closure(w, r, hash)
	s.observe(Event{Route: RouteLocalClosure, Hash: hash, Status: status})
}

func (s *Server) closure(w http.ResponseWriter, r *http.Request, hash string) int {
	if !store.ValidHash(hash) {
		http.Error(w, "invalid store path hash", http.StatusBadRequest)
		return http.StatusBadRequest
	}
	start := time.Now()
	ni, err := s.Local.NarInfo(r.Context(), hash)
	if err != nil {
		status := s.errorStatus(err)
		s.logError(r, err, status)
		s.padMiss(r, start, status)
		http.Error(w, http.StatusText(status), status)
		return status
	}
	s.initOnce.Do(s.init)
	select {
	case s.closures <- struct{}{}:
		defer func() { <-s.closures }()
	default:
		w.Header().Set("Retry-After", "1")
		http.Error(w, "busy: ask path by path", http.StatusServiceUnavailable)
		return http.StatusServiceUnavailable
	}
	buf := closureBufs.Get().(*bytes.Buffer)
	defer func() {
		buf.Reset()
		closureBufs.Put(buf)
	}()
	if err := s.appendClosure(r, buf, hash, ni); err != nil {
		s.logError(r, err, http.StatusServiceUnavailable)
		http.Error(w, "closure: "+err.Error(), http.StatusServiceUnavailable)
		return http.StatusServiceUnavailable
	}
	h := w.Header()
	h["Content-Type"] = closureContentType
	h["Content-Length"] = []string{strconv.Itoa(buf.Len())}
	if r.Method != http.MethodHead {
		w.Write(buf.Bytes())
	}
	return http.StatusOK
}

// appendClosure appends the narinfos of root's closure, root left out,
// breadth first, to buf.
func (s *Server) appendClosure(r *http.Request, buf *bytes.Buffer, root string, ni *narinfo.NarInfo) error {
	seen := map[string]bool{root: true}
	queue := []*narinfo.NarInfo{ni}
	n := 0
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, ref := range next.References {
			if len(ref) < store.HashLen {
				continue
			}
			hash := ref[:store.HashLen]
			if seen[hash] {
				continue
			}
			seen[hash] = true
			refNi, err := s.Local.NarInfo(r.Context(), hash)
			switch {
			case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrRefused):
				continue // private, or gone since: left out
			case err != nil:
				return fmt.Errorf("%s: %w", hash, err)
			}
			if n > 0 {
				buf.WriteByte('\n')
			}
			buf.Write(s.renderLocal(hash, refNi).body)
			n++
			if n == ClosureMaxPaths || buf.Len() >= ClosureMaxBytes {
				return nil
			}
			queue = append(queue, refNi)
		}
	}
	return nil
}
