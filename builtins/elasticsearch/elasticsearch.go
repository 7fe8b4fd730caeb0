// Package elasticsearch is the Elasticsearch sink: it indexes records into
// Elasticsearch 7/8 or OpenSearch 1/2 with the _bulk API, over plain HTTP
// (the official Go client refuses servers that are not Elasticsearch). Its
// tests run against OpenSearch 2.19, Elasticsearch 7.17 and 8.19.
//
//	sinks:
//	  - elasticsearch:
//	      url: ${ES_URL}                    # credentials may be in it: https://user:pass@host:9200
//	      index: case-search                # an alias, since mapping_file is set
//	      mapping_file: mappings/case-search.json   # relative to the pillow file
//	      settings: {number_of_shards: 1}   # optional
//	      # username: ptop                  # basic auth, when not in url
//	      # password: ${ES_PASSWORD}
//	      # tls: {ca_file: ca.pem, insecure_skip_verify: false}
//	      timeout: 30s                      # per request
//	      max_retries: 3                    # retries of records the server turns away for now
//
// Each record is indexed with its id as _id and its content (without
// _id, which Elasticsearch does not take inside a document) as the
// document; a deletion deletes that id. A delete of an id that is not
// there succeeds.
//
// # Older deliveries never win
//
// Writes use external versioning (version_type=external_gte) with the
// feed position of the change as the version (the numeric prefix of its
// sequence id: "42" and "42-g1AAAA…" are 42), deletions too. A record of
// an earlier change than the one indexed (a reindex's catch-up replaying
// a change the live pillow has written since, a second writer) is turned
// away by the server (409), which the sink counts as done; every later
// change of the feed is written, whatever its revision (CouchDB's current
// revision of a conflicted document can have a lower generation than the
// one it replaces). An equal position overwrites: a replay after a crash
// or a changed transform applies. Records without a position (a document
// read again to retry its failure, a source whose sequence ids have no
// number) are written unversioned. When the feed goes back (its database
// was recreated), the engine stops the pillow and asks for a reindex: see
// the README. Known limits: a deletion's version is kept by the server
// for index.gc_deletes (default 60s; raise it in settings to cover a long
// reindex). The index must have no other writer: the versions that the
// server gives to unversioned writes would make changes look later than
// they are.
//
// # Index management
//
// With mapping_file (or settings), index names an alias. The sink keeps
// the records in the index INDEX-HASH, where HASH is the first 8 hex
// digits of the sha256 of the canonical mappings and settings, creates it
// if it is missing and points the alias at it if the alias does not
// exist. The mappings and settings count in the pillow's hash, so that a
// reload restarts a pillow whose mapping file changed. Records are
// written through the alias (with require_alias, so that a missing alias
// is an error rather than a new index with dynamic mappings): once a
// reindex has flipped the alias to a rebuilt index, a pillow still
// running the previous definition writes into the new index. Open checks
// that the alias points at this definition's index — INDEX-HASH, or
// INDEX-HASH-rSECONDS that a reindex with the same mapping built — and
// nowhere else; if it points at another index, the mapping changed and
// the pillow does not start: run ptop reindex. Without mapping_file,
// records go to index as named, and the server creates it on the first
// write with dynamic mappings if it is missing.
//
// # Reindex
//
// The sink is an component.Rebuildable when it manages an alias. Its
// RebuildTarget is an index beside the live one: INDEX-HASH when the
// alias points elsewhere (the mapping changed), else INDEX-HASH-rSECONDS
// (the same mapping, rebuilt for a changed transform). An existing one
// that the alias does not point at is reused: a reindex resumes into the
// index it had begun. Promote points the alias at it, removing it from
// the previous index in the same atomic request, then deletes the
// previous index; with keepOld it keeps it with writes blocked
// (index.blocks.write), which also tells a later reindex not to reuse it
// as a half-built target.
//
// # Failures
//
// A record the server rejects for itself (a mapping error: 400) goes to
// the pillow's error handling with the server's reason. Records turned
// away for now (429, 5xx) are retried within the write, up to max_retries
// times with backoff; after that, and when the whole request fails
// (connection refused, timeout, 429, 5xx), the batch is handed back to
// the engine, which retries it with backoff while the checkpoint holds.
// So is a batch whose records fail for a reason of the index rather than
// their own: a read-only index (cluster_block_exception), an alias that
// points at several indexes with no write index, a missing index. A
// managed index (or its alias) deleted while the pillow runs is created
// again, as Open creates it, and the batch sent again; an alias removed
// from an index that is still there is not put back.
// Refresh is left to the server.
package elasticsearch

import (
	"bytes"
	"context"
	"encoding/base64"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dimagi/ptop/component"
)

func init() {
	component.RegisterSink("elasticsearch", New)
}

// Sink writes records into an Elasticsearch or OpenSearch index.
type Sink struct {
	log        *slog.Logger
	base       string // scheme://host[:port][/prefix], without credentials
	redacted   string // the URL as shown in messages
	auth       string // Authorization header value, or ""
	client     *http.Client
	transport  *http.Transport
	maxRetries int

	alias    string // cfg.Index
	body     []byte // create-index body; nil when the index is not managed
	physical string // the managed index (alias-hash), or ""
	rebuild  bool   // writes straight into target, an index a reindex builds (RebuildTarget)
	target   string // where records are written: the alias, an index, or the index being rebuilt
	current  string // the index the alias pointed at when Open checked it
	bulkURL  string
	// requireAlias asks _bulk to write only through an alias: it is
	// dropped for servers that do not know the flag (before 7.10).
	requireAlias bool

	rmu     sync.Mutex
	rebuilt string // the index RebuildTarget chose, which Promote flips to

	mu      sync.Mutex
	enc     encoder
	refused int          // records of this Write that the server refused whole, alone
	out     bytes.Buffer // a request body assembled from spans
	in      bytes.Buffer // a response body
}

// New makes an Elasticsearch sink. It reads the mapping and CA files but
// makes no network call: Open does.
func New(cfg *Config, bc component.BuildContext) (component.Sink, error) {
	u, msg := parseURL(cfg.URL)
	if msg != "" {
		return nil, errors.New(msg)
	}
	if msg := checkIndexName(cfg.Index); msg != "" {
		return nil, errors.New(msg)
	}
	log := bc.Log
	if log == nil {
		log = slog.Default()
	}
	s := &Sink{log: log, alias: cfg.Index, target: cfg.Index, maxRetries: cfg.MaxRetries}
	user, pass := cfg.Username, cfg.Password
	if u.User != nil {
		user = u.User.Username()
		pass, _ = u.User.Password()
		u.User = nil
	}
	if user != "" {
		s.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	s.base = strings.TrimRight(u.String(), "/")
	s.redacted = s.base

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 4
	tc, err := cfg.TLS.Build(bc.Dir, u.Hostname())
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	tr.TLSClientConfig = tc
	timeout := cfg.Timeout.D()
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	s.transport = tr
	s.client = &http.Client{Transport: tr, Timeout: timeout}

	if cfg.MappingFile != "" || len(cfg.Settings) > 0 {
		body, err := loadIndexBody(resolve(bc.Dir, cfg.MappingFile), cfg.Settings)
		if err != nil {
			return nil, fmt.Errorf("mapping_file %q: %w", cfg.MappingFile, err)
		}
		s.body = body
		s.physical = physicalName(cfg.Index, body)
		s.requireAlias = true
		if bc.AddToHash != nil {
			bc.AddToHash(body)
		}
	}
	s.setBulkURL()
	s.enc.init()
	return s, nil
}

func (s *Sink) setBulkURL() {
	s.bulkURL = s.base + "/" + url.PathEscape(s.target) + "/_bulk?"
	if s.requireAlias {
		s.bulkURL += "require_alias=true&"
	}
	s.bulkURL += "filter_path=errors,items.*.status,items.*.error"
}

// Index is the index that holds the records: with a mapping, the index
// the alias pointed at when Open checked it (before Open, ALIAS-HASH);
// for a RebuildTarget, the index it builds; else the configured index.
func (s *Sink) Index() string {
	switch {
	case s.current != "":
		return s.current
	case s.physical != "" && !s.rebuild:
		return s.physical
	}
	return s.target
}

// Open implements component.Sink: it checks that the server answers and
// accepts the credentials, and with a mapping creates the index and its
// alias (see the package doc). A changed mapping, refused credentials and
// a mapping the server rejects are permanent errors. The sink of a
// RebuildTarget creates its index if it is missing and leaves the alias
// alone.
func (s *Sink) Open(ctx context.Context) error {
	if s.rebuild {
		return s.createIndex(ctx, s.target)
	}
	if s.body == nil {
		status, body, err := s.do(ctx, http.MethodGet, "/"+url.PathEscape(s.target)+"?filter_path=*.settings.index.uuid", nil)
		if err != nil {
			return err
		}
		switch {
		case status == http.StatusOK || status == http.StatusNotFound:
			return nil
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			return component.Permanent(s.httpError("checking index "+s.target, status, body))
		}
		return s.httpError("checking index "+s.target, status, body)
	}
	return s.ensureIndex(ctx)
}

// ensureIndex creates the managed index and its alias as needed.
func (s *Sink) ensureIndex(ctx context.Context) error {
	points, err := s.aliasTargets(ctx)
	if err != nil {
		return err
	}
	if points != nil {
		return s.checkAlias(points)
	}
	// No alias of that name; an index of that name would take its place.
	status, body, err := s.do(ctx, http.MethodHead, "/"+url.PathEscape(s.alias), nil)
	if err != nil {
		return err
	}
	switch status {
	case http.StatusOK:
		return component.Permanent(fmt.Errorf("%s is an index, not an alias: with a mapping_file ptop keeps the records in %s and points the alias %s at it; delete the index %s, or drop mapping_file to write into it as it is",
			s.alias, s.physical, s.alias, s.alias))
	case http.StatusNotFound:
	default:
		return s.openError("checking index "+s.alias, status, body)
	}

	if err := s.createIndex(ctx, s.physical); err != nil {
		return err
	}

	act := fmt.Sprintf(`{"actions":[{"add":{"index":%q,"alias":%q}}]}`, s.physical, s.alias)
	status, body, err = s.do(ctx, http.MethodPost, "/_aliases", []byte(act))
	if err != nil {
		return err
	}
	switch {
	case status == http.StatusOK:
	case status == http.StatusBadRequest:
		return component.Permanent(s.httpError("pointing alias "+s.alias+" at "+s.physical, status, body))
	default:
		return s.openError("pointing alias "+s.alias+" at "+s.physical, status, body)
	}
	// Another process may have pointed it elsewhere at the same time.
	points, err = s.aliasTargets(ctx)
	if err != nil {
		return err
	}
	if err := s.checkAlias(points); err != nil {
		return err
	}
	s.log.Info("pointed alias at index", "alias", s.alias, "index", s.physical)
	return nil
}

// createIndex creates the index name with the mappings and settings,
// unless it exists.
func (s *Sink) createIndex(ctx context.Context, name string) error {
	status, body, err := s.do(ctx, http.MethodPut, "/"+url.PathEscape(name), s.body)
	if err != nil {
		return err
	}
	switch {
	case status == http.StatusOK:
		s.log.Info("created index", "index", name)
	case errorType(body) == "resource_already_exists_exception":
	case status == http.StatusBadRequest:
		return component.Permanent(s.httpError("creating index "+name+" (the server refused the mappings or settings)", status, body))
	default:
		return s.openError("creating index "+name, status, body)
	}
	return nil
}

// aliasTargets returns the indexes the alias points at, or nil when there
// is no such alias.
func (s *Sink) aliasTargets(ctx context.Context) ([]string, error) {
	status, body, err := s.do(ctx, http.MethodGet, "/_alias/"+url.PathEscape(s.alias), nil)
	if err != nil {
		return nil, err
	}
	switch status {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, nil
	default:
		return nil, s.openError("looking up alias "+s.alias, status, body)
	}
	var m map[string]stdjson.RawMessage
	if err := stdjson.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("looking up alias %s: %w", s.alias, err)
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names, nil
}

// checkAlias checks that the alias points at this definition's index
// (ALIAS-HASH, or ALIAS-HASH-rSECONDS), and at no other: writes go
// through it.
func (s *Sink) checkAlias(points []string) error {
	if len(points) == 1 && s.ownsIndex(points[0]) {
		s.current = points[0]
		return nil
	}
	if slices.ContainsFunc(points, s.ownsIndex) {
		return component.Permanent(fmt.Errorf("alias %s points at several indexes (%s): ptop writes through the alias, which needs it to point at one; remove it from all but %s",
			s.alias, strings.Join(points, ", "), points[slices.IndexFunc(points, s.ownsIndex)]))
	}
	return component.Permanent(fmt.Errorf("mapping changed: alias %s points at %s, mapping_file gives %s; run ptop reindex",
		s.alias, strings.Join(points, ", "), s.physical))
}

// ownsIndex reports whether name is an index of this definition's
// mapping: ALIAS-HASH, or ALIAS-HASH-rDIGITS that a reindex built.
func (s *Sink) ownsIndex(name string) bool {
	_, ok := s.rebuildNumber(name)
	return name == s.physical || ok
}

// rebuildNumber returns N of an index named ALIAS-HASH-rN.
func (s *Sink) rebuildNumber(name string) (int64, bool) {
	digits, ok := strings.CutPrefix(name, s.physical+"-r")
	if !ok || digits == "" || len(digits) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// openError is the error of a request of Open: permanent for refused
// credentials, else retried.
func (s *Sink) openError(what string, status int, body []byte) error {
	err := s.httpError(what, status, body)
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		return component.Permanent(err)
	}
	return err
}

// do sends a request (body as JSON) and returns the status and body.
func (s *Sink) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	s.setHeaders(req)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, s.netError(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: reading the response: %w", method, s.redacted+path, err)
	}
	return resp.StatusCode, b, nil
}

func (s *Sink) setHeaders(req *http.Request) {
	req.Header.Set("Accept", "application/json")
	if s.auth != "" {
		req.Header.Set("Authorization", s.auth)
	}
}

// netError says which server could not be reached, without credentials.
func (s *Sink) netError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s %s: %w", ue.Op, s.redacted, ue.Err)
	}
	return err
}

// httpError describes a failed request with the server's own reason.
func (s *Sink) httpError(what string, status int, body []byte) error {
	reason := errorReason(body)
	if reason == "" {
		reason = strings.TrimSpace(string(body))
		if len(reason) > 300 {
			reason = reason[:300] + "…"
		}
	}
	if reason == "" {
		reason = http.StatusText(status)
	}
	// A reason may quote a long value (an _id) once per record at fault.
	reason = component.ClipWords(reason)
	if len(reason) > 1000 {
		reason = strings.ToValidUTF8(reason[:1000], "") + "…"
	}
	return fmt.Errorf("%s at %s: HTTP %d: %s", what, s.redacted, status, reason)
}

// esError is Elasticsearch's error object.
type esError struct {
	Type     string   `json:"type"`
	Reason   string   `json:"reason"`
	CausedBy *esError `json:"caused_by"`
}

func (e *esError) String() string {
	if e == nil {
		return ""
	}
	s := e.Type + ": " + e.Reason
	if e.CausedBy != nil && e.CausedBy.Reason != "" && e.CausedBy.Reason != e.Reason {
		s += " (caused by " + e.CausedBy.String() + ")"
	}
	return s
}

func parseError(body []byte) *esError {
	var r struct {
		Error stdjson.RawMessage `json:"error"`
	}
	if stdjson.Unmarshal(body, &r) != nil || len(r.Error) == 0 {
		return nil
	}
	var e esError
	if stdjson.Unmarshal(r.Error, &e) != nil {
		var msg string
		if stdjson.Unmarshal(r.Error, &msg) == nil && msg != "" {
			return &esError{Reason: msg}
		}
		return nil
	}
	return &e
}

func errorType(body []byte) string {
	if e := parseError(body); e != nil {
		return e.Type
	}
	return ""
}

func errorReason(body []byte) string {
	e := parseError(body)
	if e == nil {
		return ""
	}
	if e.Type == "" {
		return e.Reason
	}
	return e.String()
}

// Write implements component.Sink with one _bulk request (more for a very
// large batch). It returns nil when every record is written (or was older
// than what the index holds), component.RecordErrors for records the server
// rejected, and a plain error when the batch should be retried.
func (s *Sink) Write(ctx context.Context, records []component.Record) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rerrs component.RecordErrors
	spans := s.enc.encode(records, &rerrs)
	s.refused = 0
	if n := len(spans); n > 1 {
		defer func() {
			// Every record refused alone as well (400): the request was
			// never the problem of some records but of the index or the
			// server.
			if s.refused == n && len(rerrs) > 0 {
				err, rerrs = fmt.Errorf("every record of the batch refused: %w", rerrs[0].Err), nil
			}
		}()
	}
	backoff := component.Backoff{Max: 5 * time.Second}
	reopened, encErrs := false, len(rerrs)
	for attempt := 0; len(spans) > 0; attempt++ {
		retry, err := s.send(ctx, records, spans, &rerrs)
		if errors.Is(err, errIndexGone) && s.body != nil && !s.rebuild && !reopened && s.indexGone(ctx) {
			// The index (and so its alias) was deleted while the pillow
			// runs: create them again, as Open does, and send again. (An
			// alias removed from an index that is still there is left
			// to whoever removed it: the batch waits.)
			reopened = true
			rerrs = rerrs[:encErrs]
			if oerr := s.ensureIndex(ctx); oerr != nil {
				return fmt.Errorf("%w; creating the index and alias again: %w", err, oerr)
			}
			s.log.Warn("the index or its alias was gone; created again", "alias", s.alias, "index", s.current)
			attempt--
			continue
		}
		if err != nil {
			return err
		}
		if len(retry) == 0 {
			break
		}
		if attempt >= s.maxRetries {
			return fmt.Errorf("%d of %d records still turned away after %d retries, first: %s",
				len(retry), len(records), attempt, retry[0].why)
		}
		s.log.Debug("retrying records turned away for now", "records", len(retry), "first", retry[0].why, "attempt", attempt+1)
		if err := component.Sleep(ctx, backoff.Next()); err != nil {
			return err
		}
		spans = spans[:0]
		for _, r := range retry {
			spans = append(spans, r.span)
		}
	}
	if len(rerrs) > 0 {
		sort.Slice(rerrs, func(i, j int) bool { return rerrs[i].Index < rerrs[j].Index })
		return rerrs
	}
	return nil
}

// indexGone reports whether the index the alias pointed at when the sink
// checked it is known not to exist any more.
func (s *Sink) indexGone(ctx context.Context) bool {
	idx := s.Index()
	status, _, err := s.do(ctx, http.MethodHead, "/"+url.PathEscape(idx), nil)
	return err == nil && status == http.StatusNotFound
}

// errIndexGone marks a batch refused because the index or alias it is
// written through does not exist.
var errIndexGone = errors.New("the index is gone")

// maxRequestBytes bounds one _bulk request (servers take 100 MB by
// default); a larger batch goes in several.
const maxRequestBytes = 32 << 20

// retryItem is a record to send again, and why.
type retryItem struct {
	span span
	why  string
}

// send writes spans with as few _bulk requests as their size allows, and
// sorts the items of the answers: written, rejected (added to rerrs) or
// to retry (returned).
func (s *Sink) send(ctx context.Context, records []component.Record, spans []span, rerrs *component.RecordErrors) ([]retryItem, error) {
	var retry []retryItem
	for len(spans) > 0 {
		n, size := 0, 0
		for n < len(spans) && (n == 0 || size+spans[n].len() <= maxRequestBytes) {
			size += spans[n].len()
			n++
		}
		part := spans[:n]
		spans = spans[n:]
		items, err := s.bulk(ctx, part)
		if status := refusedStatus(err); status != 0 {
			// The server refused the whole request because of some of its
			// records (an _id too long, a document over the request
			// limit): halve it until those records stand alone.
			if len(part) == 1 {
				*rerrs = append(*rerrs, component.RecordError{Index: part[0].rec, Err: err})
				if status == http.StatusBadRequest {
					s.refused++ // 413 alone: the record is too large, surely its own fault
				}
				continue
			}
			s.log.Debug("_bulk refused whole; splitting it to find the records at fault", "records", len(part), "status", status)
			half := len(part) / 2
			for _, half := range [][]span{part[:half], part[half:]} {
				r, err := s.send(ctx, records, half, rerrs)
				if err != nil {
					return nil, err
				}
				retry = append(retry, r...)
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if items == nil { // no errors at all
			continue
		}
		if len(items) != len(part) {
			return nil, fmt.Errorf("_bulk at %s answered %d items for %d actions", s.redacted, len(items), len(part))
		}
		for i := range items {
			sp := part[i]
			switch verdict, why := judge(&items[i], records[sp.rec].Delete); verdict {
			case itemDone:
			case itemRetry:
				retry = append(retry, retryItem{span: sp, why: why})
			case itemRejected:
				*rerrs = append(*rerrs, component.RecordError{Index: sp.rec, Err: errors.New(component.ClipWords(why))})
			case itemFatal:
				err := fmt.Errorf("_bulk at %s: %s", s.redacted, why)
				if e := items[i].Error; e != nil && e.Type == "index_not_found_exception" {
					err = fmt.Errorf("%w: %w", errIndexGone, err)
				}
				return nil, err
			}
		}
	}
	return retry, nil
}

// requestError is a _bulk request the server refused whole.
type requestError struct {
	status int
	err    error
}

func (e *requestError) Error() string { return e.err.Error() }
func (e *requestError) Unwrap() error { return e.err }

// refusedStatus is the status of a request refused whole for what it
// carries (400, 413), or 0.
func refusedStatus(err error) int {
	var re *requestError
	if errors.As(err, &re) && (re.status == http.StatusBadRequest || re.status == http.StatusRequestEntityTooLarge) {
		return re.status
	}
	return 0
}

// bulk sends one _bulk request of spans. It returns nil items when the
// server reports no error at all.
func (s *Sink) bulk(ctx context.Context, part []span) ([]bulkItem, error) {
	body := s.enc.body(part, &s.out)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.bulkURL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	s.setHeaders(req)
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, s.netError(err)
	}
	defer func() { _ = resp.Body.Close() }()
	s.in.Reset()
	if _, err := s.in.ReadFrom(resp.Body); err != nil {
		return nil, fmt.Errorf("_bulk at %s: reading the response: %w", s.redacted, err)
	}
	if resp.StatusCode != http.StatusOK {
		if s.requireAlias && resp.StatusCode == http.StatusBadRequest && bytes.Contains(s.in.Bytes(), []byte("require_alias")) {
			// A server older than 7.10 that does not know the flag.
			s.log.Warn("the server does not know require_alias; writing through the alias without it", "alias", s.alias)
			s.requireAlias = false
			s.setBulkURL()
			return s.bulk(ctx, part)
		}
		return nil, &requestError{resp.StatusCode, s.httpError("_bulk", resp.StatusCode, s.in.Bytes())}
	}
	return parseBulkResponse(s.in.Bytes())
}

// Close implements component.Sink.
func (s *Sink) Close() error {
	s.transport.CloseIdleConnections()
	return nil
}

// GuardsPositions implements component.PositionGuard: documents are kept
// over records of earlier changes (external versions).
func (s *Sink) GuardsPositions() bool { return true }

var (
	_ component.Sink          = (*Sink)(nil)
	_ component.PositionGuard = (*Sink)(nil)
)
