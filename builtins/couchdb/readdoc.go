package couchdb

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/dimagi/ptop/component"
	"github.com/go-kivik/kivik/v4"
)

// ReadDoc implements component.DocReader: it reads the current version of
// document id, for a retry. A deleted document comes back as a deletion
// with its tombstone's revision (found with open_revs=all, as a plain GET
// of a deleted document answers 404 like one that never existed), a
// document that never existed as a deletion without revision. The Change
// has no Seq.
func (s *Source) ReadDoc(ctx context.Context, id string) (component.Change, error) {
	if id == "" {
		return component.Change{}, s.errorf("reading a document: no document id")
	}
	path := "/" + url.PathEscape(s.cfg.DB) + "/" + escapeDocID(id)
	var raw json.RawMessage
	err := s.call(ctx, http.MethodGet, path, nil, nil, &raw)
	switch {
	case err == nil:
		return s.liveChange(id, raw)
	case kivik.HTTPStatus(err) != http.StatusNotFound:
		return component.Change{}, s.errorf("reading document %q: %w", id, s.describe(err))
	}

	// Deleted, never written, or no database. The leaves of the revision
	// tree tell: pouchdb-server and CouchDB answer open_revs=all with
	// [{"ok": {"_id": …, "_rev": "2-…", "_deleted": true}}] for a deleted
	// document, and 404 for one that never existed (CouchDB 1.x and
	// others may answer []).
	var leaves []struct {
		OK json.RawMessage `json:"ok"`
	}
	err = s.call(ctx, http.MethodGet, path, url.Values{"open_revs": {"all"}}, nil, &leaves)
	if err != nil && kivik.HTTPStatus(err) != http.StatusNotFound {
		return component.Change{}, s.errorf("reading the revisions of deleted document %q: %w", id, s.describe(err))
	}
	var win *leaf
	for _, l := range leaves {
		if len(l.OK) == 0 || string(l.OK) == "null" {
			continue // {"missing": rev}: not for open_revs=all
		}
		var c leaf
		if json.Unmarshal(l.OK, &c) != nil || c.Rev == "" {
			continue
		}
		c.raw = l.OK
		if win == nil || c.beats(win) {
			win = &c
		}
	}
	switch {
	case win == nil:
		// Never written, or the database is missing: a missing database
		// must not pass for a deleted document.
		err := s.call(ctx, http.MethodGet, "/"+url.PathEscape(s.cfg.DB), nil, nil, nil)
		if kivik.HTTPStatus(err) == http.StatusNotFound {
			return component.Change{}, s.errorf("reading document %q: database %q does not exist: %w", id, s.cfg.DB, err)
		}
		if err != nil {
			return component.Change{}, s.errorf("reading document %q: %w", id, s.describe(err))
		}
		return component.Change{ID: id, Deleted: true}, nil
	case !win.Deleted:
		// Written again between the two requests.
		return s.liveChange(id, win.raw)
	}
	return component.Change{ID: id, Rev: win.Rev, Deleted: true}, nil
}

// liveChange is the change of a document read whole.
func (s *Source) liveChange(id string, raw json.RawMessage) (component.Change, error) {
	var meta struct {
		Rev string `json:"_rev"`
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return component.Change{}, s.errorf("reading document %q: %w", id, err)
	}
	if meta.Rev == "" {
		return component.Change{}, s.errorf("reading document %q: no _rev in the server's answer", id)
	}
	return component.Change{ID: id, Rev: meta.Rev, RawDoc: raw}, nil
}

// leaf is a leaf revision of a document.
type leaf struct {
	Rev     string `json:"_rev"`
	Deleted bool   `json:"_deleted"`
	raw     json.RawMessage
}

// beats reports whether l wins over o as the document's current revision,
// the way CouchDB picks it: a live leaf over a deleted one, then the
// highest generation, then the highest revision string.
func (l *leaf) beats(o *leaf) bool {
	if l.Deleted != o.Deleted {
		return !l.Deleted
	}
	lg, lh := splitRev(l.Rev)
	og, oh := splitRev(o.Rev)
	if lg != og {
		return lg > og
	}
	return lh > oh
}

// splitRev splits "3-abc" into 3 and "abc"; the generation is -1 when it
// is unreadable.
func splitRev(rev string) (int, string) {
	n, hash, _ := strings.Cut(rev, "-")
	g, err := strconv.Atoi(n)
	if err != nil {
		return -1, rev
	}
	return g, hash
}
