// Package couchrow reads rows of a CouchDB _changes feed, one JSON object
// per line as feed=continuous&include_docs=true writes them: the couchdb
// source reads them from the server, the file source from a dump.
package couchrow

import (
	"errors"
	"fmt"

	json "github.com/goccy/go-json"

	"github.com/dimagi/ptop/component"
)

// Row is one row of a changes feed.
type Row struct {
	Seq     json.RawMessage `json:"seq"`
	ID      string          `json:"id"`
	Changes []struct {
		Rev string `json:"rev"`
	} `json:"changes"`
	Deleted bool            `json:"deleted"`
	Doc     json.RawMessage `json:"doc"`
	LastSeq json.RawMessage `json:"last_seq"`
	Error   json.RawMessage `json:"error"`
	Reason  json.RawMessage `json:"reason"`
}

// Parse decodes one non-blank line (with goccy/go-json, which decodes
// rows several times faster than encoding/json).
func Parse(line []byte) (Row, error) {
	var r Row
	err := json.Unmarshal(line, &r)
	return r, err
}

// IsEnd reports whether the row is a feed's end, {"last_seq": …}.
func (r *Row) IsEnd() bool { return r.LastSeq != nil && r.Seq == nil }

// Change is the row as a change: its seq kept verbatim (see SeqString),
// the first revision of changes, and the document, when the row has one,
// left raw for the engine to decode. A row without an id, or with a seq
// that is not a sequence id, is an error; a row without a seq is not (a
// dump may leave it out), which a live feed must check itself.
func (r *Row) Change() (component.Change, error) {
	seq, err := SeqString(r.Seq)
	if err != nil {
		return component.Change{ID: r.ID}, err
	}
	if r.ID == "" {
		return component.Change{Seq: seq}, errors.New("a change row needs an id")
	}
	c := component.Change{Seq: seq, ID: r.ID, Deleted: r.Deleted}
	if len(r.Changes) > 0 {
		c.Rev = r.Changes[0].Rev
	}
	if len(r.Doc) > 0 && string(r.Doc) != "null" {
		c.RawDoc = r.Doc // json.RawMessage copies: it does not alias the line
	}
	return c, nil
}

// SeqString returns a sequence id as the text it is kept as: the digits of
// a JSON number, the content of a JSON string; "" for none.
func SeqString(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("invalid sequence id %s: %v", raw, err)
		}
		return s, nil
	}
	for _, b := range raw {
		if (b < '0' || b > '9') && b != '-' && b != '.' && b != 'e' && b != 'E' && b != '+' {
			return "", fmt.Errorf("invalid sequence id %.40s", raw)
		}
	}
	return string(raw), nil
}
