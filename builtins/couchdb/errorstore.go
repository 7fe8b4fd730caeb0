package couchdb

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dimagi/ptop/component"
	"github.com/go-kivik/kivik/v4"
	"github.com/go-kivik/kivik/v4/couchdb/chttp"
)

// The error store keeps the failed changes of the pillows reading from a
// source in a database of the same server (errors_db, default
// ptop_errors), created on the first failure. Each (pillow, document) has
// one document, "<pillow>:<document id>":
//
//	{"_id": "case-search:abc", "pillow": "case-search", "doc_id": "abc",
//	 "seq": "42", "rev": "3-…", "hash": "…", "stage": "transform",
//	 "error": "…", "attempts": 2,
//	 "first_failed": "2025-01-02T03:04:05.123456789Z", "last_failed": "…",
//	 "next_attempt": "…"}     // null once the pillow has given up
//
// Pillow names cannot contain ':', so a pillow's entries are exactly the ids
// from "<pillow>:" (included) to "<pillow>;" (excluded).

const (
	// requestTimeout bounds each request of the error store and ReadDoc, so
	// that a connection gone silent does not hold up a pillow.
	requestTimeout = time.Minute
	// maxConflicts is how many times a write that lost a race with another
	// writer (409) is tried again.
	maxConflicts = 5
	// pageSize is how many entries one _all_docs request reads.
	pageSize = 1000
	// maxErrorBytes caps the error message kept in an entry, so that an
	// enormous message cannot make the entry too big to store (and the
	// pillow retry recording it forever).
	maxErrorBytes = 64 << 10
)

// ErrorStore implements component.ErrorStoreProvider: the error store lives in
// the database errors_db of the source's server. It makes no network call;
// the database is created on the first failure recorded.
func (s *Source) ErrorStore() (component.ErrorStore, error) {
	name := s.cfg.ErrorsDB
	if name == "" {
		name = DefaultErrorsDB
	}
	if msg := checkDBName(name); msg != "" {
		return nil, fmt.Errorf("couchdb: invalid errors_db %q: %s", name, msg)
	}
	return &errorStore{s: s, db: name, path: "/" + url.PathEscape(name), display: s.displayDB(name)}, nil
}

// errorStore is the error store of one source.
type errorStore struct {
	s       *Source
	db      string // the database's name
	path    string // its escaped path from the server's root
	display string // its URL for messages, password redacted
}

// entryDoc is an entry as stored.
type entryDoc struct {
	ID          string  `json:"_id"`
	Rev         string  `json:"_rev,omitempty"`
	Pillow      string  `json:"pillow"`
	DocID       string  `json:"doc_id"`
	Seq         string  `json:"seq"`
	DocRev      string  `json:"rev"`
	Hash        string  `json:"hash"`
	Stage       string  `json:"stage"`
	Error       string  `json:"error"`
	Attempts    int     `json:"attempts"`
	FirstFailed string  `json:"first_failed"`
	LastFailed  string  `json:"last_failed"`
	NextAttempt *string `json:"next_attempt"`
}

// isEntry reports whether d, read from the database, is an entry of the
// store and not some other document.
func (d *entryDoc) isEntry() bool {
	return d.Pillow != "" && d.ID == entryID(d.Pillow, d.DocID)
}

func (d *entryDoc) entry() component.ErrorEntry {
	e := component.ErrorEntry{
		Pillow: d.Pillow, DocID: d.DocID, Seq: d.Seq, Rev: d.DocRev, Hash: d.Hash,
		Stage: d.Stage, Error: d.Error, Attempts: d.Attempts,
		FirstFailed: parseTime(d.FirstFailed),
		LastFailed:  parseTime(d.LastFailed),
	}
	if d.NextAttempt != nil {
		e.NextAttempt = parseTime(*d.NextAttempt)
	}
	return e
}

func entryID(pillow, docID string) string { return pillow + ":" + docID }

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// parseTime reads a time written by formatTime; zero when it cannot.
func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// Record implements component.ErrorStore. It reads the document's entry to
// count one more attempt, and writes it with the revision read; after a
// conflict with another writer it reads and writes again. The database is
// created if it is missing.
func (e *errorStore) Record(ctx context.Context, f component.Failure, next func(attempts int) time.Duration) (component.ErrorEntry, error) {
	id := entryID(f.Pillow, f.Change.ID)
	t := f.Time
	if t.IsZero() {
		t = time.Now()
	}
	t = t.UTC().Round(0) // as read back: UTC, no monotonic clock
	msg := "unknown error"
	if f.Err != nil {
		msg = clipError(f.Err.Error())
	}
	created := false
	for attempt := 0; ; attempt++ {
		old, err := e.get(ctx, id)
		if err != nil {
			return component.ErrorEntry{}, e.errorf("recording the failure of %q: reading its entry: %w", f.Change.ID, e.describe(err))
		}
		d := entryDoc{
			ID: id, Pillow: f.Pillow, DocID: f.Change.ID, Seq: f.Change.Seq, DocRev: f.Change.Rev,
			Hash: f.Hash, Stage: f.Stage, Error: msg, Attempts: 1,
			FirstFailed: formatTime(t), LastFailed: formatTime(t),
		}
		if old != nil {
			d.Rev = old.Rev
			d.Attempts = max(old.Attempts, 0) + 1
			if !parseTime(old.FirstFailed).IsZero() {
				d.FirstFailed = old.FirstFailed
			}
		}
		if next != nil {
			if wait := next(d.Attempts); wait > 0 {
				na := formatTime(t.Add(wait))
				d.NextAttempt = &na
			}
		}
		err = e.s.call(ctx, http.MethodPut, e.docPath(id), nil, d, nil)
		switch status := kivik.HTTPStatus(err); {
		case err == nil:
			return d.entry(), nil
		case status == http.StatusNotFound && !created:
			if err := e.createDB(ctx); err != nil {
				return component.ErrorEntry{}, err
			}
			created = true
		case status == http.StatusConflict && attempt < maxConflicts:
		default:
			return component.ErrorEntry{}, e.errorf("recording the failure of %q: %w", f.Change.ID, e.describe(err))
		}
	}
}

// clipError shortens an error message to maxErrorBytes.
func clipError(msg string) string {
	if len(msg) <= maxErrorBytes {
		return msg
	}
	cut := maxErrorBytes
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d more bytes)", msg[:cut], len(msg)-cut)
}

// createDB creates the database; one that exists already is fine.
func (e *errorStore) createDB(ctx context.Context) error {
	err := e.s.call(ctx, http.MethodPut, e.path, nil, nil, nil)
	switch kivik.HTTPStatus(err) {
	case http.StatusUnauthorized:
		return e.errorf("creating the database: %w", e.describe(err))
	case http.StatusForbidden:
		return e.errorf("creating the database: %w", component.Permanent(fmt.Errorf(
			"forbidden (403): the user may not create it: create database %q as an admin, or set errors_db to a database it may write: %w", e.db, err)))
	case http.StatusPreconditionFailed: // created by someone else meanwhile
		return nil
	}
	if err != nil {
		return e.errorf("creating the database: %w", err)
	}
	e.s.log.Info("couchdb error store database created", "db", e.display)
	return nil
}

// get reads an entry; nil when there is none (or no database).
func (e *errorStore) get(ctx context.Context, id string) (*entryDoc, error) {
	var d entryDoc
	err := e.s.call(ctx, http.MethodGet, e.docPath(id), nil, nil, &d)
	if kivik.HTTPStatus(err) == http.StatusNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &d, nil
}

func (e *errorStore) docPath(id string) string { return e.path + "/" + escapeDocID(id) }

// List implements component.ErrorStore. A missing database has no entries.
func (e *errorStore) List(ctx context.Context, pillow string) ([]component.ErrorEntry, error) {
	var out []component.ErrorEntry
	err := e.scan(ctx, pillow, func(docs []entryDoc) error {
		for _, d := range docs {
			out = append(out, d.entry())
		}
		return nil
	})
	if err != nil {
		return nil, e.errorf("listing entries: %w", e.describe(err))
	}
	// _all_docs orders by id, where "a1:x" comes before "a:x".
	slices.SortFunc(out, func(a, b component.ErrorEntry) int {
		if c := strings.Compare(a.Pillow, b.Pillow); c != 0 {
			return c
		}
		return strings.Compare(a.DocID, b.DocID)
	})
	return out, nil
}

// allDocsRow is a row of _all_docs?include_docs=true.
type allDocsRow struct {
	ID    string          `json:"id"`
	Error string          `json:"error"` // "not_found" for a key asked for that has no document
	Doc   json.RawMessage `json:"doc"`   // null for a deleted document
}

// entries decodes the documents of rows that are entries of the store
// (of pillow, unless pillow is "").
func entries(rows []allDocsRow, pillow string) []entryDoc {
	var docs []entryDoc
	for _, r := range rows {
		if r.Error != "" || len(r.Doc) == 0 || string(r.Doc) == "null" {
			continue
		}
		var d entryDoc
		if json.Unmarshal(r.Doc, &d) != nil || !d.isEntry() || (pillow != "" && d.Pillow != pillow) {
			continue // not an entry: leave it alone
		}
		docs = append(docs, d)
	}
	return docs
}

// scan reads the entries of pillow ("" for all), a page at a time, in
// _all_docs order (raw: by the bytes of the ids). A missing database has
// none. page may change or delete the entries it is given.
func (e *errorStore) scan(ctx context.Context, pillow string, page func([]entryDoc) error) error {
	q := url.Values{"include_docs": {"true"}, "limit": {fmt.Sprint(pageSize)}}
	if pillow != "" {
		q.Set("startkey", jsonString(pillow+":"))
		q.Set("endkey", jsonString(pillow+";"))
		q.Set("inclusive_end", "false")
	}
	last := ""
	for {
		var res struct{ Rows []allDocsRow }
		err := e.s.call(ctx, http.MethodGet, e.path+"/_all_docs", q, nil, &res)
		if kivik.HTTPStatus(err) == http.StatusNotFound {
			return nil
		}
		if err != nil {
			return err
		}
		rows := res.Rows
		if len(rows) > 0 && last != "" && rows[0].ID == last {
			rows = rows[1:] // the previous page's last, still there
		}
		if docs := entries(rows, pillow); len(docs) > 0 {
			if err := page(docs); err != nil {
				return err
			}
		}
		if len(res.Rows) < pageSize || len(rows) == 0 {
			return nil
		}
		// The next page starts at the last id, not after it with skip=1:
		// page may have deleted it.
		last = rows[len(rows)-1].ID
		q.Set("startkey", jsonString(last))
	}
}

// fetch reads the entries with the given ids; missing ones are left out.
func (e *errorStore) fetch(ctx context.Context, ids []string) ([]entryDoc, error) {
	var docs []entryDoc
	for chunk := range slices.Chunk(ids, pageSize) {
		var res struct{ Rows []allDocsRow }
		err := e.s.call(ctx, http.MethodPost, e.path+"/_all_docs", url.Values{"include_docs": {"true"}},
			map[string]any{"keys": chunk}, &res)
		if kivik.HTTPStatus(err) == http.StatusNotFound {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, entries(res.Rows, "")...)
	}
	return docs, nil
}

// Clear implements component.ErrorStore.
func (e *errorStore) Clear(ctx context.Context, pillow, docID string) error {
	id := entryID(pillow, docID)
	for attempt := 0; ; attempt++ {
		d, err := e.get(ctx, id)
		if err != nil {
			return e.errorf("clearing the entry of %q: %w", docID, e.describe(err))
		}
		if d == nil {
			return nil
		}
		err = e.s.call(ctx, http.MethodDelete, e.docPath(id), url.Values{"rev": {d.Rev}}, nil, nil)
		switch status := kivik.HTTPStatus(err); {
		case err == nil, status == http.StatusNotFound:
			return nil
		case status == http.StatusConflict && attempt < maxConflicts:
		default:
			return e.errorf("clearing the entry of %q: %w", docID, e.describe(err))
		}
	}
}

// Retry implements component.ErrorStore: the entries' next_attempt becomes
// now, also of entries given up on; all of them count as changed.
func (e *errorStore) Retry(ctx context.Context, pillow string, ids []string) (int, error) {
	now := formatTime(time.Now())
	n, err := e.update(ctx, pillow, ids, func(d entryDoc) any {
		d.NextAttempt = &now
		return d
	})
	if err != nil {
		return n, e.errorf("retrying entries: %w", e.describe(err))
	}
	return n, nil
}

// Purge implements component.ErrorStore.
func (e *errorStore) Purge(ctx context.Context, pillow string, ids []string) (int, error) {
	n, err := e.update(ctx, pillow, ids, func(d entryDoc) any {
		return map[string]any{"_id": d.ID, "_rev": d.Rev, "_deleted": true}
	})
	if err != nil {
		return n, e.errorf("purging entries: %w", e.describe(err))
	}
	return n, nil
}

// update rewrites entries as change makes them, with _bulk_docs: those of
// pillow (every pillow's when pillow is ""), only those of the documents
// ids unless ids is empty. It returns how many it wrote.
func (e *errorStore) update(ctx context.Context, pillow string, ids []string, change func(entryDoc) any) (int, error) {
	if pillow != "" && len(ids) > 0 {
		keys := make([]string, 0, len(ids))
		for _, id := range ids {
			keys = append(keys, entryID(pillow, id))
		}
		slices.Sort(keys)
		docs, err := e.fetch(ctx, slices.Compact(keys))
		if err != nil {
			return 0, err
		}
		return e.write(ctx, docs, change)
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	total := 0
	err := e.scan(ctx, pillow, func(docs []entryDoc) error {
		if len(want) > 0 {
			docs = slices.DeleteFunc(docs, func(d entryDoc) bool { return !want[d.DocID] })
		}
		n, err := e.write(ctx, docs, change)
		total += n
		return err
	})
	return total, err
}

// bulkResult is a row of a _bulk_docs response.
type bulkResult struct {
	ID     string `json:"id"`
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

// write writes the changed docs with _bulk_docs. Entries that another
// writer changed meanwhile (conflicts) are read again and changed again;
// entries that have gone are left out. It returns how many it wrote.
func (e *errorStore) write(ctx context.Context, docs []entryDoc, change func(entryDoc) any) (int, error) {
	total := 0
	for attempt := 0; len(docs) > 0; attempt++ {
		var conflicts []string
		for chunk := range slices.Chunk(docs, pageSize) {
			body := make([]any, len(chunk))
			for i, d := range chunk {
				body[i] = change(d)
			}
			var res []bulkResult
			if err := e.s.call(ctx, http.MethodPost, e.path+"/_bulk_docs", nil, map[string]any{"docs": body}, &res); err != nil {
				return total, err
			}
			for _, r := range res {
				switch r.Error {
				case "":
					total++
				case "conflict":
					conflicts = append(conflicts, r.ID)
				default:
					return total, fmt.Errorf("writing entry %q: %s: %s", r.ID, r.Error, r.Reason)
				}
			}
		}
		if len(conflicts) == 0 {
			break
		}
		if attempt >= maxConflicts {
			return total, fmt.Errorf("entry %q: still in conflict after %d attempts", conflicts[0], attempt+1)
		}
		var err error
		if docs, err = e.fetch(ctx, conflicts); err != nil {
			return total, err
		}
	}
	return total, nil
}

// describe marks the errors no retry cures, like Source.describe.
func (e *errorStore) describe(err error) error {
	if kivik.HTTPStatus(err) == http.StatusForbidden {
		return component.Permanent(fmt.Errorf("forbidden (403): the user may not use the error store's database: grant it access, or set errors_db to another database: %w", err))
	}
	return e.s.describe(err)
}

// errorf makes an error that names the error store's database (password
// redacted) and scrubs the password from the rest.
func (e *errorStore) errorf(format string, args ...any) error {
	return &storeError{e: e, err: fmt.Errorf(format, args...)}
}

type storeError struct {
	e   *errorStore
	err error
}

func (se *storeError) Error() string {
	return "couchdb error store " + se.e.display + ": " + se.e.s.scrub(se.err.Error())
}

func (se *storeError) Unwrap() error { return se.err }

// call sends a request to the server: path is escaped, from the server's
// root (after the URL's path prefix, if any). A JSON body is sent when body
// is not nil, and a successful response is decoded into out when it is
// not nil. HTTP errors keep their status for kivik.HTTPStatus.
//
// The request is built here rather than by chttp, which loses an escaped
// '/' in a document id when the server's URL has a path prefix.
func (s *Source) call(ctx context.Context, method, path string, query url.Values, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	u := strings.TrimSuffix(s.dsn, "/") + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := s.feed.Do(req) // the client that authenticates
	if err != nil {
		return err
	}
	defer func() { _ = res.Body.Close() }()
	if err := chttp.ResponseError(res); err != nil {
		return err
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, res.Body)
		return nil
	}
	if err := json.NewDecoder(res.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: unreadable response: %w", method, path, err)
	}
	return nil
}

// escapeDocID escapes a document id for a URL path; the slash after
// _design/ and _local/ stays.
func escapeDocID(id string) string {
	for _, prefix := range []string{"_design/", "_local/"} {
		if rest, ok := strings.CutPrefix(id, prefix); ok {
			return prefix + url.PathEscape(rest)
		}
	}
	return url.PathEscape(id)
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

var _ component.ErrorStore = (*errorStore)(nil)
