// Package couchdb is the `couchdb` source: it follows a CouchDB database's
// continuous _changes feed and keeps each pillow's checkpoint in a _local
// document of that database.
//
//	source:
//	  couchdb:
//	    url: ${COUCH_URL}          # required; http(s)://[user:pass@]host[:port][/prefix]
//	    db: cases                  # required
//	    since: "0"                 # with no checkpoint: "0" (default), now, or a sequence id
//	    selector: {doc_type: CommCareCase}   # optional Mango selector, applied by the server
//	    # filter: app/by_type      # or a design-doc filter (not with selector) ...
//	    # params: {type: case}     # ... and its query parameters
//	    heartbeat: 10s             # default 10s; a feed silent for 3 heartbeats is reconnected
//	    checkpoint_id: _local/ptop-case-search   # default _local/ptop-<pillow name>
//	    errors_db: ptop_errors     # default ptop_errors; the error store's database
//	    records_db: ptop_records   # default ptop_records; the record sets' database
//
// Credentials come from the URL's userinfo or, when it has none, from the
// environment variables COUCH_USER and COUCH_PASSWORD. They are sent with
// HTTP basic authentication, and the password is never written in logs or
// error messages.
//
// Sequence ids are kept verbatim: integers (PouchDB, CouchDB 1.x) as their
// digits, strings (CouchDB 2+, "12-g1AAAA…") as they are, and they are sent
// back to the server unchanged. Their numeric prefix is only compared to
// notice a rewind: a database recreated behind the feed's back has an update
// sequence lower than the position to resume from. With integer sequences
// the feed then starts again from the beginning (delivery is at least once);
// CouchDB 2+ rewinds opaque sequences of unknown shards itself, so for
// those it is only logged.
//
// The source keeps the error store of its pillows (component.ErrorStoreProvider)
// in the database errors_db of the same server, created on the first
// failure, one document "<pillow>:<document id>" per failed document, and
// reads documents again for their retries (component.DocReader). It keeps the
// record sets of the pillows whose checkpoints it keeps (component.RecordSets)
// in the database records_db, created on first use (see recordsets.go).
//
// A wrong password, a refused access or a missing database at start are
// errors that stop the source; network errors, server errors and stalls are
// retried with backoff, resuming after the last change handed on.
package couchdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-kivik/kivik/v4"
	kcouch "github.com/go-kivik/kivik/v4/couchdb"
	"github.com/go-kivik/kivik/v4/couchdb/chttp"
	"github.com/go-kivik/kivik/v4/driver"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/couchrow"
)

func init() {
	component.RegisterSource("couchdb", New)
}

// Source follows one database's changes feed. It also keeps checkpoints
// (component.CheckpointStore) in _local documents of that database.
type Source struct {
	cfg      Config
	pillow   string
	log      *slog.Logger
	dsn      string  // the server URL without userinfo
	display  string  // the database's URL for messages, password redacted
	shown    url.URL // the server's URL for messages (see displayDB)
	password string  // to scrub from messages; "" when none
	userinfo string  // "user:pass@" as written in the URL, to scrub too

	client *kivik.Client
	db     *kivik.DB
	feed   *chttp.Client

	mu   sync.Mutex
	revs map[string]string // _local doc id → last known _rev

	lastActivity atomic.Int64 // unix nanoseconds of the last bytes from the feed

	// feedErr is why the feed is failing (connections that end before the
	// server sends anything), since failSince; nil while it delivers.
	// failing mirrors feedErr != nil for the reader. Under mu.
	feedErr   error
	failSince time.Time
	failing   atomic.Bool
}

// New makes a source from its configuration. It makes no network call.
func New(cfg *Config, bc component.BuildContext) (component.Source, error) {
	if msg := checkURL(cfg.URL); msg != "" {
		return nil, errors.New(msg)
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, err // checked above
	}
	user, pass, hasUser := "", "", u.User != nil
	if hasUser {
		user = u.User.Username()
		pass, _ = u.User.Password()
	} else {
		user, pass = os.Getenv("COUCH_USER"), os.Getenv("COUCH_PASSWORD")
	}
	s := &Source{
		cfg:      *cfg,
		pillow:   bc.Pillow,
		log:      bc.Log,
		password: pass,
		revs:     map[string]string{},
	}
	if hasUser {
		s.userinfo = rawUserinfo(cfg.URL)
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.shown = *u
	if user != "" && !hasUser {
		s.shown.User = url.User(user) // name who connects, from the environment
	}
	s.display = s.displayDB(cfg.DB)
	bare := *u
	bare.User = nil
	s.dsn = bare.String()

	// One transport for both clients. Compression stays off: asked for
	// gzip, pouchdb-server holds continuous-feed rows in its compressor.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	if cfg.TLS != nil {
		if tr.TLSClientConfig, err = cfg.TLS.Build(bc.Dir, u.Hostname()); err != nil {
			return nil, s.errorf("tls: %w", err)
		}
	}
	opts := clientOptions{chttp.OptionNoRequestCompression()}
	if user != "" || pass != "" {
		opts = append(opts, chttp.BasicAuth(user, pass))
	}
	s.client, err = kivik.New("couch", s.dsn, kcouch.OptionHTTPClient(&http.Client{Transport: tr}), opts)
	if err != nil {
		return nil, s.errorf("%w", err)
	}
	s.db = s.client.DB(cfg.DB)
	s.feed, err = chttp.New(&http.Client{Transport: tr}, s.dsn, opts)
	if err != nil {
		return nil, s.errorf("%w", err)
	}
	return s, nil
}

// displayDB is the URL of database db of the source's server, for
// messages: the password redacted.
func (s *Source) displayDB(db string) string {
	shown := s.shown
	shown.Path = strings.TrimSuffix(shown.Path, "/") + "/" + db
	shown.RawPath = ""
	return shown.Redacted()
}

// rawUserinfo returns "user:pass@" as written in a URL, or "".
func rawUserinfo(rawURL string) string {
	_, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return ""
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		return rest[:i+1]
	}
	return ""
}

// clientOptions applies several kivik options at once.
type clientOptions []kivik.Option

func (o clientOptions) Apply(target any) {
	for _, opt := range o {
		opt.Apply(target)
	}
}

func (o clientOptions) String() string { return fmt.Sprintf("%d options", len(o)) }

var _ driver.Options = clientOptions(nil)

// LastActivity is when the feed last received anything from the server, a
// row or a heartbeat; zero before the first connection.
func (s *Source) LastActivity() time.Time {
	n := s.lastActivity.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// StallAfter implements component.FeedStatus: a feed silent for this long
// (three heartbeats, and a little more for the reconnect) is not alive.
func (s *Source) StallAfter() time.Duration {
	return (stallBeats+1)*s.cfg.Heartbeat.D() + 2*time.Second
}

// Pending implements component.PendingCounter: the database's update
// sequence minus since, by their numeric prefixes (for CouchDB 2+, whose
// prefixes are sums over shards, an estimate).
func (s *Source) Pending(ctx context.Context, since string) (int64, error) {
	st, err := s.db.Stats(ctx)
	if err != nil {
		return 0, s.errorf("looking up the database: %w", s.describe(err))
	}
	have, at := seqNumber(st.UpdateSeq), seqNumber(since)
	if have < 0 || at < 0 {
		return 0, s.errorf("cannot compare sequence ids %q and %q", st.UpdateSeq, since)
	}
	return max(have-at, 0), nil
}

// ResolveStart implements component.StartResolver: with since: now, the
// database's update sequence, which the engine saves as the checkpoint
// before the feed starts; "" for any other since.
func (s *Source) ResolveStart(ctx context.Context) (string, error) {
	if s.cfg.Since != "now" {
		return "", nil
	}
	st, err := s.db.Stats(ctx)
	if err != nil {
		err = s.errorf("looking up the database: %w", s.describe(err))
		switch kivik.HTTPStatus(err) {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
			return "", component.Permanent(err)
		}
		return "", err
	}
	return st.UpdateSeq, nil
}

// CheckpointTime implements component.CheckpointTimer.
func (s *Source) CheckpointTime(ctx context.Context, pillow string) (time.Time, error) {
	var cp checkpoint
	if err := s.db.Get(ctx, s.checkpointID(pillow)).ScanDoc(&cp); err != nil {
		if kivik.HTTPStatus(err) == http.StatusNotFound {
			return time.Time{}, nil
		}
		return time.Time{}, s.errorf("loading checkpoint: %w", s.describe(err))
	}
	t, err := time.Parse(time.RFC3339, cp.UpdatedAt)
	if err != nil {
		return time.Time{}, nil
	}
	return t, nil
}

// checkpointID is the _local document holding pillow's checkpoint.
func (s *Source) checkpointID(pillow string) string {
	id := s.cfg.CheckpointID
	if id == "" {
		id = "ptop-" + pillow
	}
	if !strings.HasPrefix(id, "_local/") {
		id = "_local/" + id
	}
	return id
}

// checkpoint is the _local document's body.
type checkpoint struct {
	Rev       string          `json:"_rev,omitempty"`
	Seq       json.RawMessage `json:"seq"`
	Pillow    string          `json:"pillow"`
	UpdatedAt string          `json:"updated_at"`
}

// LoadCheckpoint implements component.CheckpointStore: it returns the sequence
// id saved for pillow, or "" if there is none (no document, or no database).
func (s *Source) LoadCheckpoint(ctx context.Context, pillow string) (string, error) {
	id := s.checkpointID(pillow)
	var cp checkpoint
	if err := s.db.Get(ctx, id).ScanDoc(&cp); err != nil {
		if kivik.HTTPStatus(err) == http.StatusNotFound {
			return "", nil
		}
		return "", s.errorf("loading checkpoint %s: %w", id, s.describe(err))
	}
	s.mu.Lock()
	s.revs[id] = cp.Rev
	s.mu.Unlock()
	seq, err := seqString(cp.Seq)
	if err != nil || (seq != "" && (!validSince(seq) || seq == "now")) {
		// No retry cures it, whatever its JSON type.
		return "", component.Permanent(s.errorf("checkpoint %s holds seq %s, which is not a sequence id: "+
			"delete the document to start from the pillow's since, or put a sequence id of the database in it", id, clip(cp.Seq)))
	}
	return seq, nil
}

// SaveCheckpoint implements component.CheckpointStore. It writes the _local
// document with the last revision it knows (pouchdb-server requires it,
// CouchDB does not), and after a conflict reads the current one and tries
// once more.
func (s *Source) SaveCheckpoint(ctx context.Context, pillow, seq string) error {
	id := s.checkpointID(pillow)
	seqJSON, _ := json.Marshal(seq)
	cp := checkpoint{Seq: seqJSON, Pillow: pillow, UpdatedAt: time.Now().UTC().Format(time.RFC3339)}
	for attempt := 0; ; attempt++ {
		s.mu.Lock()
		cp.Rev = s.revs[id]
		s.mu.Unlock()
		rev, err := s.db.Put(ctx, id, cp)
		if err == nil {
			s.mu.Lock()
			s.revs[id] = rev
			s.mu.Unlock()
			return nil
		}
		if kivik.HTTPStatus(err) != http.StatusConflict || attempt > 0 {
			return s.errorf("saving checkpoint %s: %w", id, s.describe(err))
		}
		var cur checkpoint
		err = s.db.Get(ctx, id).ScanDoc(&cur)
		switch {
		case err == nil:
		case kivik.HTTPStatus(err) == http.StatusNotFound:
			cur.Rev = ""
		default:
			return s.errorf("saving checkpoint %s: reading its revision after a conflict: %w", id, s.describe(err))
		}
		s.mu.Lock()
		s.revs[id] = cur.Rev
		s.mu.Unlock()
	}
}

// seqString returns a sequence id as the text it is kept as (see
// couchrow.SeqString).
func seqString(raw json.RawMessage) (string, error) { return couchrow.SeqString(raw) }

// errorf makes an error that names the database (with the password
// redacted) and scrubs the password from the rest.
func (s *Source) errorf(format string, args ...any) error {
	return &sourceError{s: s, err: fmt.Errorf(format, args...)}
}

type sourceError struct {
	s   *Source
	err error
}

func (e *sourceError) Error() string {
	return "couchdb " + e.s.display + ": " + e.s.scrub(e.err.Error())
}

func (e *sourceError) Unwrap() error { return e.err }

// scrub removes the password from a message.
func (s *Source) scrub(msg string) string {
	if s.userinfo != "" {
		msg = strings.ReplaceAll(msg, s.userinfo, "")
	}
	if len(s.password) >= 4 {
		msg = strings.ReplaceAll(msg, s.password, "xxxxx")
		if esc := url.QueryEscape(s.password); esc != s.password {
			msg = strings.ReplaceAll(msg, esc, "xxxxx")
		}
	}
	return msg
}

// describe turns the errors that need a person's attention into messages
// that say what to do, marked permanent: no retry cures them.
func (s *Source) describe(err error) error {
	switch kivik.HTTPStatus(err) {
	case http.StatusUnauthorized:
		return component.Permanent(fmt.Errorf("unauthorized (401): check the credentials in the url, or COUCH_USER and COUCH_PASSWORD: %w", err))
	case http.StatusForbidden:
		return component.Permanent(fmt.Errorf("forbidden (403): the user may not read this database: %w", err))
	}
	return err
}

// Interface guards.
var (
	_ component.FeedStatus         = (*Source)(nil)
	_ component.FeedErrorer        = (*Source)(nil)
	_ component.PendingCounter     = (*Source)(nil)
	_ component.CheckpointTimer    = (*Source)(nil)
	_ component.Source             = (*Source)(nil)
	_ component.CheckpointStore    = (*Source)(nil)
	_ component.ErrorStoreProvider = (*Source)(nil)
	_ component.DocReader          = (*Source)(nil)
	_ component.StartResolver      = (*Source)(nil)
)
