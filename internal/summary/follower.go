package summary

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Source fetches a publisher's answers: the whole filter (have false), or
// what was added since generation gen of epoch, waiting up to wait for an
// addition.
type Source interface {
	Update(ctx context.Context, epoch, gen uint64, have bool, wait time.Duration) (*Update, error)
}

// FollowerOptions tune a Follower; zero values mean the defaults named.
type FollowerOptions struct {
	// Wait: how long a poll waits at the publisher for a change (25 s).
	Wait time.Duration
	// Grace: how long past its wait a pending poll still vouches for the
	// filter (the answer's way back) (5 s).
	Grace time.Duration
	// MaxLag: a filter whose publisher lags its own source by more is not
	// used (30 s).
	MaxLag time.Duration
	// RetryMin, RetryMax: the wait after a failed poll, doubling (1 s, 30
	// s); AbsentRetry: after the publisher said it offers no summary (404,
	// 503) (5 min).
	RetryMin, RetryMax, AbsentRetry time.Duration
	Log                             *slog.Logger
}

// Follower holds a publisher's filter and keeps it current (Run); Absent
// tells, from memory, that the publisher's set certainly lacks a hash.
type Follower struct {
	src Source
	opt FollowerOptions

	filter atomic.Pointer[Filter]
	// until: when (ns since base, a monotonic clock: the wall clock may
	// jump) the filter stops being known current: the pending poll's send
	// time + wait + grace; noPoll while no poll vouches for it.
	base  time.Time
	until atomic.Int64
	lag   atomic.Int64 // the publisher's lag (ns) in its last answer

	// Owned by Run.
	epoch, gen uint64

	absent  atomic.Uint64 // lookups answered "absent" from memory
	passed  atomic.Uint64 // lookups the filter let through
	stale   atomic.Uint64 // lookups while the filter was not current
	updates atomic.Uint64
	loads   atomic.Uint64
	genSeen atomic.Uint64
	lastErr atomic.Pointer[string]
}

// noPoll: no poll vouches for the filter.
const noPoll = math.MinInt64

// NewFollower returns a follower of src; nothing happens until Run.
func NewFollower(src Source, opt FollowerOptions) *Follower {
	setDefault(&opt.Wait, 25*time.Second)
	setDefault(&opt.Grace, 5*time.Second)
	setDefault(&opt.MaxLag, 30*time.Second)
	setDefault(&opt.RetryMin, time.Second)
	setDefault(&opt.RetryMax, 30*time.Second)
	setDefault(&opt.AbsentRetry, 5*time.Minute)
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	f := &Follower{src: src, opt: opt, base: time.Now()}
	f.until.Store(noPoll)
	return f
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// Absent reports whether the publisher's set certainly lacks hash, as far
// as a current filter knows. False means "ask": the hash may be held, or
// the filter is not current.
func (f *Follower) Absent(hash string) bool {
	flt := f.filter.Load()
	if flt == nil {
		return false
	}
	if !f.current(time.Now()) {
		f.stale.Add(1)
		return false
	}
	h, ok := ParseHash(hash)
	if !ok || flt.Has(h) {
		f.passed.Add(1)
		return false
	}
	f.absent.Add(1)
	return true
}

func (f *Follower) current(now time.Time) bool {
	return int64(now.Sub(f.base)) < f.until.Load() && time.Duration(f.lag.Load()) <= f.opt.MaxLag
}

// Current reports whether the filter may answer "absent" now.
func (f *Follower) Current() bool {
	return f.filter.Load() != nil && f.current(time.Now())
}

// Run keeps the filter current until ctx ends: a whole filter first, then
// one long poll after another. Failures are retried (RetryMin doubling to
// RetryMax); meanwhile the filter is not current. It returns nil when ctx
// ends.
func (f *Follower) Run(ctx context.Context) error {
	retry := f.opt.RetryMin
	defer f.until.Store(noPoll)
	for ctx.Err() == nil {
		sent := time.Now()
		f.until.Store(int64(sent.Add(f.opt.Wait + f.opt.Grace).Sub(f.base)))
		u, err := f.src.Update(ctx, f.epoch, f.gen, f.filter.Load() != nil, f.opt.Wait)
		if err == nil {
			err = f.apply(u)
		}
		if err == nil {
			retry = f.opt.RetryMin
			continue
		}
		f.until.Store(noPoll)
		if ctx.Err() != nil {
			return nil
		}
		msg := err.Error()
		f.lastErr.Store(&msg)
		limit := f.opt.RetryMax
		if status := HTTPStatus(err); status == http.StatusNotFound || status == http.StatusServiceUnavailable {
			// No summary offered (an older publisher, or the first build
			// still running): lookups ask, as before.
			limit = f.opt.AbsentRetry
			if status == http.StatusServiceUnavailable {
				limit = f.opt.RetryMax
			}
			f.opt.Log.Debug("no summary offered now; lookups ask", "err", err, "retry", retry)
		} else if retry == f.opt.RetryMin {
			f.opt.Log.Warn("summary update failed; lookups ask", "err", err)
		} else {
			f.opt.Log.Debug("summary update failed again", "err", err, "retry", retry)
		}
		wait := retry
		retry = min(retry*2, limit)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	return nil
}

// ErrMismatch: a delta that does not fit the filter held.
var ErrMismatch = errors.New("summary delta does not fit the filter held")

// apply takes one answer: a new filter, or hashes to add.
func (f *Follower) apply(u *Update) error {
	f.lag.Store(int64(u.Lag))
	if u.Full() {
		f.filter.Store(u.Filter)
		f.epoch, f.gen = u.Epoch, u.Gen
		f.loads.Add(1)
		f.opt.Log.Debug("summary loaded", "epoch", u.Epoch, "gen", u.Gen, "bytes", u.Filter.Bits()/8, "entries", u.Entries)
	} else {
		flt := f.filter.Load()
		if flt == nil || u.Epoch != f.epoch || u.Bits != flt.Bits() || u.Probes != flt.Probes() || u.Gen < f.gen {
			// Start over with a whole filter.
			f.filter.Store(nil)
			f.epoch, f.gen = 0, 0
			return ErrMismatch
		}
		for _, h := range u.Add {
			flt.Add(h)
		}
		f.gen = u.Gen
	}
	f.updates.Add(1)
	f.genSeen.Store(f.gen)
	return nil
}

// FollowerStats describes a follower for status pages.
type FollowerStats struct {
	Current bool   `json:"current"`
	Bytes   uint64 `json:"bytes"`
	Gen     uint64 `json:"gen"`
	// Absent: lookups answered "not there" from memory.
	Absent uint64 `json:"local_misses"`
	// Passed: lookups the filter let through (held, or false positives);
	// Stale: lookups while the filter was not current.
	Passed    uint64 `json:"passed"`
	Stale     uint64 `json:"stale"`
	Updates   uint64 `json:"updates"`
	Loads     uint64 `json:"loads"`
	LastError string `json:"last_error,omitempty"`
}

// Stats returns the follower's counters.
func (f *Follower) Stats() FollowerStats {
	s := FollowerStats{
		Current: f.Current(),
		Gen:     f.genSeen.Load(),
		Absent:  f.absent.Load(),
		Passed:  f.passed.Load(),
		Stale:   f.stale.Load(),
		Updates: f.updates.Load(),
		Loads:   f.loads.Load(),
	}
	if flt := f.filter.Load(); flt != nil {
		s.Bytes = flt.Bits() / 8
	}
	if e := f.lastErr.Load(); e != nil {
		s.LastError = *e
	}
	return s
}

// HTTPStatus returns the HTTP status an error carries (it or one it wraps
// has a method HTTPStatus() int), or 0.
func HTTPStatus(err error) int {
	var s interface{ HTTPStatus() int }
	if errors.As(err, &s) {
		return s.HTTPStatus()
	}
	return 0
}

// StatusError is a publisher's answer other than 200.
type StatusError struct {
	Status int
	Msg    string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.Status, e.Msg)
}

// HTTPStatus is the answer's status.
func (e *StatusError) HTTPStatus() int { return e.Status }

// HTTPSource polls a publisher's route over HTTP (a daemon's
// /local/summary).
type HTTPSource struct {
	URL    string       // the route, without query
	Client *http.Client // nil: http.DefaultClient's transport with a timeout of wait + FetchTimeout
}

// FetchTimeout bounds an answer beyond its wait: time enough for a whole
// filter (30 MiB at 1 MiB/s).
const FetchTimeout = time.Minute

// Update implements Source.
func (s HTTPSource) Update(ctx context.Context, epoch, gen uint64, have bool, wait time.Duration) (*Update, error) {
	u := s.URL
	sep := "?"
	if have {
		u += fmt.Sprintf("?epoch=%016x&gen=%d", epoch, gen)
		sep = "&"
	}
	if wait > 0 {
		u += sep + "wait=" + strconv.FormatInt(wait.Milliseconds(), 10)
	}
	ctx, cancel := context.WithTimeout(ctx, wait+FetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	c := s.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, &StatusError{Status: resp.StatusCode, Msg: strings.TrimSpace(string(msg))}
	}
	up, err := ReadUpdate(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", s.URL, err)
	}
	return up, nil
}
