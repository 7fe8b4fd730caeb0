package couchdb

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-kivik/kivik/v4"
	"github.com/go-kivik/kivik/v4/couchdb/chttp"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/couchrow"
)

// Reconnection backoff: from minBackoff, doubling up to maxBackoff, with
// jitter; back to minBackoff after a successful connection.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// stallBeats is how many heartbeats of silence make a feed stalled.
const stallBeats = 3

// errFeedEnded says the server ended the feed with a last_seq row.
var errFeedEnded = errors.New("the server ended the changes feed")

// fatalError is an error that reconnecting cannot cure.
type fatalError struct{ err error }

func (e fatalError) Error() string { return e.err.Error() }
func (e fatalError) Unwrap() error { return e.err }

// Run implements component.Source. It follows the feed from since (or, when
// since is "", from the configured start) and sends each change to out
// until ctx is done, reconnecting after network errors, server errors and
// stalls. It returns ctx.Err() once ctx is done, and an error when the
// credentials are refused, or the database is missing when it starts.
func (s *Source) Run(ctx context.Context, since string, out chan<- component.Change) error {
	f := &follower{s: s, out: out, seq: since}
	if f.seq == "" {
		f.seq = s.cfg.Since
	}
	delay := minBackoff
	for attempt := 1; ; attempt++ {
		began := time.Now().UnixNano()
		connected, err := f.follow(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if s.lastActivity.Load() >= began || errors.Is(err, errFeedEnded) {
			s.feedFailed(nil) // it delivered
		} else {
			s.feedFailed(err)
		}
		var fatal fatalError
		if errors.As(err, &fatal) {
			return fatal.err
		}
		if connected {
			delay, attempt = minBackoff, 1
		}
		wait := delay/2 + rand.N(delay/2+1)
		s.log.Warn("couchdb changes feed interrupted; reconnecting",
			"db", s.display, "since", f.seq, "attempt", attempt, "in", wait.Round(time.Millisecond), "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		delay = min(delay*2, maxBackoff)
	}
}

// follower is the state of one Run.
type follower struct {
	s   *Source
	out chan<- component.Change
	// seq is where to resume: the seq of the last change sent on out (or
	// the last_seq the server ended the feed with).
	seq string
	// started is set once a connection has succeeded: from then on a
	// missing database is waited for rather than fatal (an in-memory
	// server restarts empty; a database can be recreated).
	started bool
	buf     []byte // for lines longer than the reader's buffer
	br      *bufio.Reader
}

// follow makes one connection and reads the feed until it fails. connected
// says whether the feed was opened.
func (f *follower) follow(ctx context.Context) (connected bool, err error) {
	s := f.s
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := newWatchdog(stallBeats*s.cfg.Heartbeat.D(), cancel)
	defer w.stop()

	updateSeq, err := f.checkDB(ctx)
	if err != nil {
		return false, w.explain(err)
	}
	res, err := s.feed.DoReq(ctx, http.MethodPost, s.changesPath(), s.changesOptions(f.seq))
	if err != nil {
		return false, w.explain(s.errorf("opening the changes feed: %w", err))
	}
	defer func() { _ = res.Body.Close() }()
	if err := chttp.ResponseError(res); err != nil {
		if kivik.HTTPStatus(err) == http.StatusNotFound && s.cfg.Filter != "" {
			// The database was just found: what is missing is the filter.
			return false, fatalError{s.errorf("filter %q does not exist: no design document %q with a function %q in its \"filters\": %w",
				s.cfg.Filter, "_design/"+designName(s.cfg.Filter), filterName(s.cfg.Filter), err)}
		}
		return false, f.classify("opening the changes feed", err)
	}
	f.started = true
	s.log.Info("couchdb changes feed connected", "db", s.display, "since", f.seq)
	if f.seq == "now" && updateSeq != "" {
		// Should this connection fail before a change arrives, the next
		// one resumes from where this one started, not from a later now.
		f.seq = updateSeq
	}
	body := &activityReader{r: res.Body, w: w, s: s}
	if f.br == nil {
		f.br = bufio.NewReaderSize(body, 64<<10)
	} else {
		f.br.Reset(body)
	}
	for {
		line, err := f.readLine()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return true, w.explain(s.errorf("reading the changes feed: %w", err))
		}
		if len(bytes.TrimSpace(line)) == 0 {
			// A heartbeat: the feed is quiet.
			if s.serverFiltered() {
				w.pause()
				err := f.passedFiltered(ctx)
				w.resume()
				if err != nil && ctx.Err() == nil {
					s.log.Debug("couchdb feed position not read", "db", s.display, "error", err)
				}
			}
			continue
		}
		c, end, err := parseLine(line)
		switch {
		case err != nil:
			return true, s.errorf("the changes feed: %w", err)
		case end != "":
			f.seq = end
			return true, errFeedEnded
		}
		w.pause()
		select {
		case f.out <- c:
		case <-ctx.Done():
			w.resume()
			return true, w.explain(ctx.Err())
		}
		w.resume()
		if c.Seq != "" {
			f.seq = c.Seq
		}
	}
}

// readLine returns the next line without its newline. The bytes are valid
// until the next call.
func (f *follower) readLine() ([]byte, error) {
	if cap(f.buf) > 1<<20 {
		f.buf = nil // do not keep the memory of a rare huge document
	}
	line, err := f.br.ReadSlice('\n')
	if err != bufio.ErrBufferFull {
		return line, cutLine(line, err)
	}
	f.buf = append(f.buf[:0], line...)
	for err == bufio.ErrBufferFull {
		line, err = f.br.ReadSlice('\n')
		f.buf = append(f.buf, line...)
	}
	return f.buf, cutLine(f.buf, err)
}

// designName and filterName split a filter "ddoc/name".
func designName(filter string) string {
	d, _, _ := strings.Cut(filter, "/")
	return d
}

func filterName(filter string) string {
	_, n, _ := strings.Cut(filter, "/")
	return n
}

// cutLine is the error of a line read up to err: a response that ends,
// even cleanly, in the middle of a line was cut (the server ends every
// row with a newline), and the line is read again after a reconnect
// rather than parsed. A last line that is whole JSON is taken.
func cutLine(line []byte, err error) error {
	if err == io.EOF && len(bytes.TrimSpace(line)) > 0 {
		if json.Valid(line) {
			return nil // a whole last row, its newline missing
		}
		return fmt.Errorf("the response ended in the middle of a row (%d bytes): %w", len(line), io.ErrUnexpectedEOF)
	}
	return err
}

// checkDB looks the database up before each connection: it catches bad
// credentials and a missing database with a clear message, and notices a
// rewind: a database whose update sequence is behind the position to resume
// from was recreated or restored. With integer sequences (PouchDB, CouchDB
// 1.x) the server would silently skip everything up to the old position,
// so the feed starts again from the beginning. Opaque CouchDB 2+ sequences
// name their shards, and the server itself rewinds the shards it does not
// recognise; their numeric prefix is only a hint (shard copies on other
// nodes count differently), so a rewind is only logged.
//
// It returns the database's update sequence.
func (f *follower) checkDB(ctx context.Context) (string, error) {
	s := f.s
	st, err := s.db.Stats(ctx)
	if err != nil {
		return "", f.classify("looking up the database", err)
	}
	if f.seq == "now" || f.seq == "0" {
		return st.UpdateSeq, nil
	}
	have, want := seqNumber(st.UpdateSeq), seqNumber(f.seq)
	if have < 0 || want < 0 || have >= want {
		return st.UpdateSeq, nil
	}
	if isInteger(f.seq) && isInteger(st.UpdateSeq) {
		s.log.Warn("couchdb database is behind the position to resume from: it was recreated or restored; reading it again from the beginning",
			"db", s.display, "since", f.seq, "update_seq", st.UpdateSeq)
		f.seq = "0"
	} else {
		s.log.Warn("couchdb database's update sequence is behind the position to resume from; it may have been recreated or restored",
			"db", s.display, "since", f.seq, "update_seq", st.UpdateSeq)
	}
	return st.UpdateSeq, nil
}

// classify wraps err, an HTTP error, as fatal or as worth a retry.
func (f *follower) classify(doing string, err error) error {
	s := f.s
	switch status := kivik.HTTPStatus(err); {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return fatalError{s.errorf("%s: %w", doing, s.describe(err))}
	case status == http.StatusNotFound && !f.started:
		return fatalError{s.errorf("database %q does not exist: %w", s.cfg.DB, err)}
	case status == http.StatusBadRequest && isInteger(f.seq) && f.seq != "0":
		return fatalError{s.errorf("%s: the server rejected the request (since %q): %w; "+
			"CouchDB 2+ takes no bare integer but \"0\": use \"0\", now, or a sequence id the server gave (\"42-g1AAAA…\")", doing, f.seq, err)}
	case status == http.StatusBadRequest:
		return fatalError{s.errorf("%s: the server rejected the request (since %q): %w", doing, f.seq, err)}
	}
	return s.errorf("%s: %w", doing, err)
}

func (s *Source) changesPath() string {
	return "/" + url.PathEscape(s.cfg.DB) + "/_changes"
}

// changesOptions is the feed request resuming after since.
func (s *Source) changesOptions(since string) *chttp.Options {
	q := url.Values{
		"feed":         {"continuous"},
		"include_docs": {"true"},
		"heartbeat":    {strconv.FormatInt(max(s.cfg.Heartbeat.D().Milliseconds(), 1), 10)},
		"style":        {"main_only"},
		"since":        {since},
	}
	body := []byte("{}")
	switch {
	case s.cfg.Selector != nil:
		sel, _ := json.Marshal(s.cfg.Selector)
		q.Set("filter", "_selector")
		// CouchDB 2+ reads the selector from the body; pouchdb-server
		// only from the query string (and crashes without it).
		q.Set("selector", string(sel))
		body, _ = json.Marshal(map[string]json.RawMessage{"selector": sel})
	case s.cfg.Filter != "":
		q.Set("filter", s.cfg.Filter)
		for k, v := range s.cfg.Params {
			q.Set(k, v)
		}
	}
	return &chttp.Options{
		Query:  q,
		NoGzip: true,
		GetBody: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(body)), nil
		},
		ContentLength: int64(len(body)),
	}
}

// parseLine reads one non-blank line. It returns the change, or the
// last_seq of a feed's end, or an error for an {"error": …} line. A line
// that is not JSON is a change with Err set.
func parseLine(line []byte) (c component.Change, lastSeq string, err error) {
	r, jerr := couchrow.Parse(line)
	if jerr != nil {
		return component.Change{Err: fmt.Errorf("unreadable changes feed row %s: %v", clip(line), jerr)}, "", nil
	}
	if r.Error != nil {
		return c, "", fmt.Errorf("server error %s: %s", r.Error, r.Reason)
	}
	if r.IsEnd() {
		seq, serr := seqString(r.LastSeq)
		if serr != nil || seq == "" {
			return c, "", fmt.Errorf("feed ended with an invalid last_seq %s", clip(r.LastSeq))
		}
		return c, seq, nil
	}
	c, cerr := r.Change()
	if cerr == nil && c.Seq == "" {
		cerr = errors.New("no seq or id")
	}
	if cerr != nil {
		return component.Change{ID: r.ID, Err: fmt.Errorf("unreadable changes feed row %s: %s", clip(line), cerr)}, "", nil
	}
	return c, "", nil
}

// clip shortens b for a message.
func clip(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 200 {
		return strconv.Quote(string(b[:200])) + "…"
	}
	return strconv.Quote(string(b))
}

// watchdog cancels a connection that has gone silent for longer than
// limit, not counting the time spent waiting for the consumer.
type watchdog struct {
	limit   time.Duration
	cancel  context.CancelFunc
	timer   *time.Timer
	last    atomic.Int64 // unix nanoseconds of the last progress
	paused  atomic.Bool
	stalled atomic.Bool
}

func newWatchdog(limit time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{limit: limit, cancel: cancel}
	w.touch()
	w.timer = time.AfterFunc(limit, w.check)
	return w
}

func (w *watchdog) check() {
	if w.paused.Load() {
		w.timer.Reset(w.limit)
		return
	}
	if idle := time.Duration(time.Now().UnixNano() - w.last.Load()); idle < w.limit {
		w.timer.Reset(w.limit - idle)
		return
	}
	w.stalled.Store(true)
	w.cancel()
}

func (w *watchdog) touch()  { w.last.Store(time.Now().UnixNano()) }
func (w *watchdog) pause()  { w.paused.Store(true) }
func (w *watchdog) resume() { w.touch(); w.paused.Store(false) }
func (w *watchdog) stop()   { w.timer.Stop() }

// explain replaces the error of a connection the watchdog cut.
func (w *watchdog) explain(err error) error {
	if w.stalled.Load() {
		return fmt.Errorf("no data from the server for %s (%d heartbeats): %w", w.limit, stallBeats, err)
	}
	return err
}

// activityReader notes each read from the server.
type activityReader struct {
	r io.Reader
	w *watchdog
	s *Source
}

func (a *activityReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		now := time.Now().UnixNano()
		a.w.last.Store(now)
		a.s.lastActivity.Store(now)
		if a.s.failing.Load() {
			a.s.feedFailed(nil)
		}
	}
	return n, err
}

// feedFailed notes the outcome of a connection that ended with err
// without the server sending anything: the feed is failing from the first
// such connection on, until data arrives; nil says it delivers.
func (s *Source) feedFailed(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.feedErr = nil
		s.failing.Store(false)
		return
	}
	if s.feedErr == nil {
		s.failSince = time.Now()
	}
	if u := s.unreachable(err); u != err {
		err = fmt.Errorf("couchdb %s: %w", s.display, u)
	}
	s.feedErr = err
	s.failing.Store(true)
}

// FeedError implements component.FeedErrorer.
func (s *Source) FeedError() (since time.Time, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failSince, s.feedErr
}

// unreachable rewrites the error of a connection that could not be made
// at all as "cannot reach HOST: …"; a store's error wraps it with its own
// database, the feed's names the source's.
func (s *Source) unreachable(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return fmt.Errorf("cannot reach %s: %v", s.shown.Host, op.Err)
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return fmt.Errorf("cannot reach %s: %v", s.shown.Host, dns)
	}
	return err
}
