package elasticsearch

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	json "github.com/goccy/go-json"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/jsonx"
)

// span is the encoded action (and document) of one record in the
// encoder's buffer.
type span struct{ rec, lo, hi int }

func (s span) len() int { return s.hi - s.lo }

// MaxIDBytes is the longest _id Elasticsearch and OpenSearch take. A
// longer one makes the server refuse the whole _bulk request, so it is
// checked before sending.
const MaxIDBytes = 512

// encoder turns records into _bulk actions, reusing its buffers.
type encoder struct {
	maxID int // MaxIDBytes; tests raise it to see the server refuse

	buf     bytes.Buffer
	raw     []byte        // scratch for a passed-through document
	json    *json.Encoder // into buf, each value followed by "\n"
	line    []byte
	scratch map[string]any // a record without its _id
	spans   []span
}

func (e *encoder) init() {
	e.json = json.NewEncoder(&e.buf)
	e.json.SetEscapeHTML(false)
	e.scratch = make(map[string]any, 16)
	e.maxID = MaxIDBytes
}

// encode encodes records and returns their spans, in order. A record that
// cannot be encoded is left out and added to rerrs.
func (e *encoder) encode(records []component.Record, rerrs *component.RecordErrors) []span {
	e.buf.Reset()
	e.spans = e.spans[:0]
	for i := range records {
		lo := e.buf.Len()
		if err := e.append(&records[i]); err != nil {
			e.buf.Truncate(lo)
			*rerrs = append(*rerrs, component.RecordError{Index: i, Err: err})
			continue
		}
		e.spans = append(e.spans, span{rec: i, lo: lo, hi: e.buf.Len()})
	}
	return e.spans
}

// append encodes one record: an index action and its document, or a
// delete action, versioned by the change's feed position.
func (e *encoder) append(r *component.Record) error {
	if r.ID == "" {
		return errors.New("the record has an empty id")
	}
	if len(r.ID) > e.maxID {
		return fmt.Errorf("the record's _id %q is %d bytes; Elasticsearch takes at most %d", component.Clip(r.ID), len(r.ID), MaxIDBytes)
	}
	l := e.line[:0]
	if r.Delete {
		l = append(l, `{"delete":{"_id":`...)
	} else {
		l = append(l, `{"index":{"_id":`...)
	}
	l = appendJSONString(l, r.ID)
	if pos := component.SeqPosition(r.Seq); pos > 0 {
		l = append(l, `,"version":`...)
		l = strconv.AppendInt(l, pos, 10)
		l = append(l, `,"version_type":"external_gte"`...)
	}
	l = append(l, "}}\n"...)
	e.line = l
	e.buf.Write(l)
	if r.Delete {
		return nil
	}
	doc := r.Doc
	if raw, ok := doc.(json.RawMessage); ok {
		// A document passed through as sent: written as it is (its
		// numbers exact), without its _id.
		var ok bool
		if e.raw, ok = jsonx.AppendObjectWithout(e.raw[:0], raw, "_id"); !ok {
			return fmt.Errorf("a record must be a JSON object, got %.40s", bytes.TrimSpace(raw))
		}
		e.buf.Write(e.raw)
		e.buf.WriteByte('\n')
		return nil
	}
	if m, ok := doc.(map[string]any); ok {
		if _, has := m["_id"]; has {
			// Elasticsearch takes no _id inside a document. The record
			// is shared with other sinks: copy it rather than change it.
			clear(e.scratch)
			for k, v := range m {
				if k != "_id" {
					e.scratch[k] = v
				}
			}
			doc = e.scratch
		}
	}
	if doc == nil {
		return errors.New("the record has no content")
	}
	start := e.buf.Len()
	if err := e.json.Encode(doc); err != nil {
		return fmt.Errorf("encoding the record: %w", err)
	}
	if b := e.buf.Bytes()[start:]; b[0] != '{' {
		return fmt.Errorf("a record must be a JSON object, got %.40s", bytes.TrimSpace(b))
	}
	return nil
}

// body returns the request body of spans: a slice of the buffer when they
// follow each other there (the first attempt), else a copy into out.
func (e *encoder) body(spans []span, out *bytes.Buffer) []byte {
	b := e.buf.Bytes()
	contiguous := true
	for i := 1; i < len(spans); i++ {
		if spans[i].lo != spans[i-1].hi {
			contiguous = false
			break
		}
	}
	if contiguous {
		return b[spans[0].lo:spans[len(spans)-1].hi]
	}
	out.Reset()
	for _, sp := range spans {
		out.Write(b[sp.lo:sp.hi])
	}
	return out.Bytes()
}

// appendJSONString appends s as a JSON string (see jsonx.AppendString).
func appendJSONString(b []byte, s string) []byte { return jsonx.AppendString(b, s) }

// bulkItem is one item of a _bulk response.
type bulkItem struct {
	Status int      `json:"status"`
	Error  *esError `json:"error"`
}

// parseBulkResponse returns the items of a _bulk response (asked for with
// filter_path=errors,items.*.status,items.*.error), or nil items when it
// reports no error.
func parseBulkResponse(b []byte) ([]bulkItem, error) {
	var r struct {
		Errors *bool           `json:"errors"`
		Items  json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("_bulk: unreadable response: %w", err)
	}
	if r.Errors == nil {
		return nil, fmt.Errorf("_bulk: unexpected response: %.200s", b)
	}
	if !*r.Errors {
		return nil, nil
	}
	var raw []map[string]bulkItem
	if err := json.Unmarshal(r.Items, &raw); err != nil {
		return nil, fmt.Errorf("_bulk: unreadable items: %w", err)
	}
	items := make([]bulkItem, len(raw))
	for i, m := range raw {
		if len(m) != 1 {
			return nil, fmt.Errorf("_bulk: item %d has %d actions", i, len(m))
		}
		for _, it := range m {
			items[i] = it
		}
	}
	return items, nil
}

type verdict int

const (
	itemDone     verdict = iota // written, or nothing to do
	itemRetry                   // turned away for now
	itemRejected                // rejected for itself: to error handling
	itemFatal                   // a problem of the whole batch
)

// judge sorts a bulk item's outcome.
func judge(it *bulkItem, isDelete bool) (verdict, string) {
	switch {
	case it.Status >= 200 && it.Status < 300:
		return itemDone, ""
	case it.Status == 404 && isDelete:
		return itemDone, "" // not there: deleted already
	case it.Status == 409 && it.Error != nil && it.Error.Type == "version_conflict_engine_exception":
		return itemDone, "" // the index holds a newer revision
	}
	why := fmt.Sprintf("HTTP %d", it.Status)
	if it.Error != nil {
		why += ": " + it.Error.String()
	}
	switch {
	case it.Status == 0:
		return itemFatal, "an item without a status"
	case it.Error != nil && it.Error.Type == "index_not_found_exception":
		// The server creates no index by itself here (or the alias is
		// missing): a setup problem, not the record's.
		return itemFatal, why
	case it.Error != nil && strings.Contains(it.Error.Reason, "no write index is defined"):
		// The alias points at several indexes, none of them its write
		// index: a problem of the alias, not the record's.
		return itemFatal, why
	case it.Error != nil && it.Error.Type == "cluster_block_exception":
		// The index is read-only (a full disk, a kept old index): a
		// problem of the index, not the record's.
		return itemFatal, why
	case it.Status == 429 || it.Status >= 500:
		return itemRetry, why
	}
	return itemRejected, why
}
