package ops

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
)

// dashboardHTML is the whole dashboard: one page, its style and script
// inline, no outside assets. It fetches /api/status and /api/peers.
//
//go:embed dashboard/index.html
var dashboardHTML []byte

// dashboardCSP allows exactly the page's own inline style and script (by
// hash) and requests to this daemon; nothing else loads or runs.
var dashboardCSP = "default-src 'none'; script-src " + inlineHash("script") +
	"; style-src " + inlineHash("style") +
	"; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// inlineHash is the CSP source of the page's one <tag> element's content.
func inlineHash(tag string) string {
	open, end := []byte("<"+tag+">"), []byte("</"+tag+">")
	i := bytes.Index(dashboardHTML, open)
	j := bytes.Index(dashboardHTML, end)
	if i < 0 || j < i || bytes.Count(dashboardHTML, open) != 1 {
		panic("ops: dashboard must have exactly one <" + tag + "> element")
	}
	sum := sha256.Sum256(dashboardHTML[i+len(open) : j])
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

func serveDashboard(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	w.Write(dashboardHTML)
}
