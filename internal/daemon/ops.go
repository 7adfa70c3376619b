package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/peerix/peerix/internal/cache"
)

// opsHandler serves the operator's routes beside the cache protocol.
func (d *Daemon) opsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", d.serveHealth)
	mux.Handle("GET /api/status", loopbackOnly(http.HandlerFunc(d.serveStatus)))
	return mux
}

func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cache.IsLoopback(r) {
			http.Error(w, "only from this machine", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Check is one line of /health.
type Check struct {
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

func (d *Daemon) serveHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := map[string]Check{}
	if err := d.local.Ping(ctx); err != nil {
		checks["store"] = Check{Detail: err.Error()}
	} else {
		checks["store"] = Check{OK: true}
	}
	status, code := "healthy", http.StatusOK
	for _, c := range checks {
		if !c.OK {
			status, code = "degraded", http.StatusServiceUnavailable
		}
	}
	writeJSON(w, code, map[string]any{"status": status, "checks": checks})
}

func (d *Daemon) serveStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"peer_id":    "",
		"mode":       d.cfg.Mode,
		"version":    Version,
		"listen":     d.ln.Addr().String(),
		"store_root": d.cfg.StoreRoot,
		"uptime_s":   int64(time.Since(d.start).Seconds()),
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
