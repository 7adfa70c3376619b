package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/peerix/peerix/internal/ops"
)

// defaultDaemonURL is where `peerix status` and `peerix doctor` look for the
// daemon.
const defaultDaemonURL = "http://127.0.0.1:12304"

// statusNow is the clock of `peerix status` (backoff times); tests set it
// (not synctest: they reach their fake daemon over a real loopback socket).
var statusNow = time.Now

func statusFlags() (*flag.FlagSet, *string) {
	fs := newFlagSet("status")
	return fs, fs.String("url", defaultDaemonURL, "the daemon's `URL`")
}

const statusAbout = `Shows a running daemon's node, store, counters, the last hour, peers and
transfers (in flight and just finished), from its /api/status and /api/peers.
The daemon answers these only on its own machine.`

// status implements `peerix status [--url URL]`: the running daemon's node,
// peers, transfers and store as tables.
func status(args []string, stdout io.Writer) error {
	fs, base := statusFlags()
	if helped, err := parseFlags(fs, args, stdout, "status [--url URL]", statusAbout); helped || err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("status: unexpected argument %q (usage: peerix status [--url URL])", fs.Arg(0))
	}
	u, err := daemonURL(*base)
	if err != nil {
		return fmt.Errorf("status: --url: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := daemonClient()
	var st ops.Status
	if err := getJSON(ctx, client, u+"/api/status", &st); err != nil {
		return fmt.Errorf("status: %v", err)
	}
	var peers []ops.PeerInfo
	if err := getJSON(ctx, client, u+"/api/peers", &peers); err != nil {
		return fmt.Errorf("status: %v", err)
	}
	return writeStatus(stdout, &st, peers, statusNow())
}

// daemonURL checks and normalises --url.
func daemonURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("want http://HOST:PORT, got %q", s)
	}
	return strings.TrimRight(s, "/"), nil
}

// daemonClient talks to the local daemon: no proxy, short timeouts.
func daemonClient() *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 3 * time.Second}).DialContext},
	}
}

// getJSON fetches a daemon API route into v, with errors that say in one
// line what is wrong.
func getJSON(ctx context.Context, client *http.Client, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the peerix daemon at %s: %s (is `peerix serve` running?)", baseOf(u), netReason(err))
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("the daemon at %s refused %s (403): its API answers only on the machine it runs on", baseOf(u), pathOf(u))
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("the daemon at %s answered %s with %s (is it a peerix daemon?)", baseOf(u), pathOf(u), resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(v); err != nil {
		return fmt.Errorf("the daemon at %s sent bad JSON for %s: %v", baseOf(u), pathOf(u), err)
	}
	return nil
}

func baseOf(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	return p.Scheme + "://" + p.Host
}

func pathOf(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	return p.Path
}

// netReason turns a client error into its cause: "connection refused",
// "timeout", "no such host".
func netReason(err error) string {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return "no answer (timeout)"
	case errors.As(err, &dnsErr):
		return "no such host " + dnsErr.Name
	case errors.As(err, &opErr):
		msg := opErr.Err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		return msg
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err.Error()
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// writeStatus prints the daemon's state as tables.
func writeStatus(w io.Writer, st *ops.Status, peers []ops.PeerInfo, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }

	peerID := st.PeerID
	if peerID == "" {
		peerID = "-"
	}
	row("Node", peerID)
	row("Mode", st.Mode)
	row("Version", st.Version)
	row("Uptime", formatUptime(st.UptimeS))
	row("Listen", orDash(st.Listen))
	if st.Tracker != "" {
		row("Tracker", st.Tracker)
	}
	row("Store", storeLine(st))
	if s := st.Store; s != nil && s.FilterTotal > 0 {
		row("Filter", fmt.Sprintf("%s %s", progressBar(s.FilterChecked, s.FilterTotal, false), "paths checked"))
	}
	c := st.Counters
	row("Requests", fmt.Sprintf("%d, sent %s, received %s", c.Requests, sizeString(c.BytesSent), receivedLine(c)))
	row("Hits", bySource(c.Hits))
	row("Misses", bySource(c.Misses))
	if h := st.History; len(h.Hits) > 0 {
		row("Last hour", historyLine(h))
	}
	if c.VerificationFailures > 0 {
		row("Refused", fmt.Sprintf("%d verification failures", c.VerificationFailures))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	connected := 0
	for _, p := range peers {
		if p.Connected {
			connected++
		}
	}
	fmt.Fprintf(w, "\nPeers: %d known, %d connected\n", len(peers), connected)
	if len(peers) > 0 {
		tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		row = func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }
		row("  PEER", "SOURCE", "CONNECTION", "SUCCESS", "LATENCY", "BACKOFF", "ADDRESSES")
		for _, p := range peers {
			conn := "-"
			switch {
			case p.Connected && p.Source == "lan":
				conn = "on the LAN"
			case p.Connected && p.Relayed && !p.Direct:
				conn = "relayed"
			case p.Connected:
				conn = "direct"
			}
			success, latency, backoff := "-", "-", "-"
			if r := p.Reputation; r != nil {
				if n := r.Successes + r.Failures; n > 0 {
					success = fmt.Sprintf("%d%% (%d ok, %d failed)", r.Successes*100/n, r.Successes, r.Failures)
				}
				if r.LatencyMs > 0 {
					latency = fmt.Sprintf("%.0f ms", r.LatencyMs)
				}
				if r.BackoffUntil.After(now) {
					backoff = r.BackoffUntil.Sub(now).Round(time.Second).String()
					if r.LastFailure != "" {
						backoff += " (" + r.LastFailure + ")"
					}
				}
			}
			row("  "+shortPeer(p.ID), p.Source, conn, success, latency, backoff, orDash(strings.Join(p.Addrs, " ")))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	fmt.Fprintf(w, "\nTransfers: %d in flight\n", len(st.Transfers))
	if err := writeTransfers(w, st.Transfers, false); err != nil {
		return err
	}
	if len(st.RecentTransfers) > 0 {
		recent := st.RecentTransfers[:min(len(st.RecentTransfers), recentShown)]
		fmt.Fprintf(w, "\nRecently finished: %d of %d\n", len(recent), len(st.RecentTransfers))
		if err := writeTransfers(w, recent, true); err != nil {
			return err
		}
	}
	return nil
}

// recentShown finished transfers are listed.
const recentShown = 5

// writeTransfers prints one line per transfer: path, direction and peer,
// progress (or result), rate, time.
func writeTransfers(w io.Writer, ts []ops.TransferInfo, finished bool) error {
	if len(ts) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, t := range ts {
		progress := progressBar(t.Done, t.Size, true)
		if finished {
			progress = sizeString(t.Done)
			if t.Error != "" {
				progress += ", failed: " + t.Error
			}
		}
		cells := []string{"  " + pathName(t.StorePath, t.Hash), transferParty(t), progress,
			sizeString(int64(t.RateBps)) + "/s", secondsString(t.ElapsedS)}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
		if len(t.Sources) < 2 {
			continue
		}
		// Several holders at once: each one's share and rate.
		for _, src := range t.Sources {
			who := "  · " + shortPeer(src.Peer)
			if src.Relayed {
				who += " (relayed)"
			}
			fmt.Fprintln(tw, strings.Join([]string{"", who, sizeString(src.Done), sizeString(int64(src.RateBps)) + "/s"}, "\t"))
		}
	}
	return tw.Flush()
}

// transferParty says where a transfer goes or comes from, and how, with
// the share of the bytes that went over the wire when compression saved
// some.
func transferParty(t ops.TransferInfo) string {
	way := t.Source
	peer := orDash(shortPeer(t.Peer))
	if len(t.Sources) > 1 {
		peer = fmt.Sprintf("%d peers", len(t.Sources))
	} else if t.Relayed {
		way += ", relayed"
	}
	if t.WireRatio > 0 && t.WireRatio < 0.95 {
		way += fmt.Sprintf(", %.0f%% on the wire", 100*t.WireRatio)
	}
	if t.Direction == "up" {
		return "↑ to " + peer + " (" + way + ")"
	}
	return "↓ from " + peer + " (" + way + ")"
}

// secondsString prints a duration in seconds: "0.4s", "12s", "3m20s".
func secondsString(s float64) string {
	if s < 10 {
		return fmt.Sprintf("%.1fs", max(s, 0))
	}
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

// historyLine sums the last hour: bytes moved and lookups answered.
func historyLine(h ops.History) string {
	sum := func(a []int64) (n int64) {
		for _, v := range a {
			n += v
		}
		return n
	}
	hits, misses := sum(h.Hits), sum(h.Misses)
	line := fmt.Sprintf("received %s, sent %s, %d found, %d not found", sizeString(sum(h.ReceivedBytes)), sizeString(sum(h.SentBytes)), hits, misses)
	if hits+misses > 0 {
		line += fmt.Sprintf(" (%d%% found)", hits*100/(hits+misses))
	}
	return line
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func storeLine(st *ops.Status) string {
	line := orDash(st.StoreRoot)
	s := st.Store
	if s == nil {
		return line
	}
	if s.Paths >= 0 {
		line += fmt.Sprintf(", %d paths", s.Paths)
	}
	if s.Shared >= 0 {
		line += fmt.Sprintf(", %d shared", s.Shared)
	}
	filter := s.Filter
	if filter == "" {
		filter = st.Filter
	}
	if filter != "" {
		line += ", filter " + filter
	}
	if s.Announced > 0 {
		line += fmt.Sprintf(", %d announced", s.Announced)
	}
	if s.Error != "" {
		line += " (" + s.Error + ")"
	}
	return line
}

func receivedLine(c ops.Counters) string {
	var total int64
	var parts []string
	for _, src := range []string{"lan", "p2p"} {
		if n := c.BytesReceived[src]; n > 0 {
			total += n
			parts = append(parts, src+" "+sizeString(n))
		}
	}
	if len(parts) == 0 {
		return "0 B"
	}
	return sizeString(total) + " (" + strings.Join(parts, ", ") + ")"
}

func bySource(m map[string]int64) string {
	parts := make([]string, 0, 4)
	for _, src := range []string{"local", "peers", "lan", "p2p"} {
		parts = append(parts, fmt.Sprintf("%s %d", src, m[src]))
	}
	return strings.Join(parts, ", ")
}

// formatUptime prints seconds as 3d4h, 1h2m3s, 4m5s, 6s.
func formatUptime(s int64) string {
	d := time.Duration(s) * time.Second
	if d >= 24*time.Hour {
		days := d / (24 * time.Hour)
		return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
	}
	return d.String()
}

// shortPeer abbreviates libp2p peer IDs; LAN peers (addresses) stay whole.
func shortPeer(id string) string {
	if len(id) > 20 && !strings.ContainsAny(id, ".:") {
		return id[:8] + "…" + id[len(id)-8:]
	}
	return id
}

// pathName shows a store path by its name ("hello-2.12"), or the hash part.
func pathName(storePath, hash string) string {
	if storePath == "" {
		return orDash(hash)
	}
	base := path.Base(storePath)
	if len(base) > 33 && base[32] == '-' {
		return base[33:]
	}
	return base
}

// progressBar draws done of size as "[#####.....] 52% 130/250 MiB"; with
// bytes false the numbers are plain counts. An unknown size (< 0) shows
// what arrived: "[??????????] 130 MiB".
func progressBar(done, size int64, bytes bool) string {
	const width = 10
	if size <= 0 {
		n := fmt.Sprint(done)
		if bytes {
			n = sizeString(done)
		}
		return "[" + strings.Repeat("?", width) + "] " + n
	}
	done = min(max(done, 0), size)
	filled := int(done * width / size)
	bar := "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
	pct := done * 100 / size
	if !bytes {
		return fmt.Sprintf("%s %d%% %d/%d", bar, pct, done, size)
	}
	unit, div := sizeUnit(size)
	return fmt.Sprintf("%s %d%% %s/%s %s", bar, pct, scaled(done, div), scaled(size, div), unit)
}

// sizeUnit picks the binary unit for n.
func sizeUnit(n int64) (string, float64) {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	div := 1.0
	i := 0
	for float64(n)/div >= 1024 && i < len(units)-1 {
		div *= 1024
		i++
	}
	return units[i], div
}

// scaled prints n/div with one decimal below 10, none above.
func scaled(n int64, div float64) string {
	v := float64(n) / div
	if div > 1 && v > 0 && v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func sizeString(n int64) string {
	unit, div := sizeUnit(n)
	return scaled(n, div) + " " + unit
}
