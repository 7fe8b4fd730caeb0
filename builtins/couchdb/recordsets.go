package couchdb

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"

	"github.com/go-kivik/kivik/v4"

	"github.com/dimagi/ptop/component"
)

// The source keeps, for the pillows whose checkpoints it keeps, the ids of
// the records each document produced (component.RecordSets) in the database
// records_db of the same server (default ptop_records), created on first
// use: every process running a pillow sees them. A document has an entry
// only once it has produced a record, "<pillow>:<document id>":
//
//	{"_id": "households:case-1", "pillow": "households", "doc_id": "case-1",
//	 "ids": ["case-1:hh-1", "case-1:hh-2"]}
//
// An entry whose document no longer produces any record is deleted.

// recordSetDoc is an entry as stored.
type recordSetDoc struct {
	ID      string   `json:"_id"`
	Rev     string   `json:"_rev,omitempty"`
	Deleted bool     `json:"_deleted,omitempty"`
	Pillow  string   `json:"pillow,omitempty"`
	DocID   string   `json:"doc_id,omitempty"`
	IDs     []string `json:"ids,omitempty"`
}

func (s *Source) recordsDB() string {
	if s.cfg.RecordsDB == "" {
		return DefaultRecordsDB
	}
	return s.cfg.RecordsDB
}

func (s *Source) recordsPath() string { return "/" + url.PathEscape(s.recordsDB()) }

// LoadRecordSets implements component.RecordSets, with one _all_docs request
// per 1000 documents; a missing database has no entries.
func (s *Source) LoadRecordSets(ctx context.Context, pillow string, docIDs []string) ([]component.RecordSet, error) {
	keys := make([]string, len(docIDs))
	for i, d := range docIDs {
		keys[i] = entryID(pillow, d)
	}
	docs, err := s.fetchRecordSets(ctx, keys)
	if err != nil {
		return nil, s.recordsErr("reading record sets", err)
	}
	out := make([]component.RecordSet, 0, len(docs))
	for _, d := range docs {
		if d.Pillow == pillow && d.ID == entryID(pillow, d.DocID) && len(d.IDs) > 0 {
			out = append(out, component.RecordSet{DocID: d.DocID, IDs: d.IDs, Version: d.Rev})
		}
	}
	return out, nil
}

// fetchRecordSets reads the entries with the given ids; missing and
// deleted ones are left out.
func (s *Source) fetchRecordSets(ctx context.Context, keys []string) ([]recordSetDoc, error) {
	var docs []recordSetDoc
	for chunk := range slices.Chunk(keys, pageSize) {
		var res struct{ Rows []allDocsRow }
		err := s.call(ctx, http.MethodPost, s.recordsPath()+"/_all_docs", url.Values{"include_docs": {"true"}},
			map[string]any{"keys": chunk}, &res)
		if kivik.HTTPStatus(err) == http.StatusNotFound {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		for _, r := range res.Rows {
			if r.Error != "" || len(r.Doc) == 0 || string(r.Doc) == "null" {
				continue
			}
			var d recordSetDoc
			if json.Unmarshal(r.Doc, &d) == nil {
				docs = append(docs, d)
			}
		}
	}
	return docs, nil
}

// SaveRecordSets implements component.RecordSets with _bulk_docs. An entry
// that another process changed meanwhile (a conflict) is overwritten: the
// batch being written decides what its documents' records are.
func (s *Source) SaveRecordSets(ctx context.Context, pillow string, sets []component.RecordSet) ([]component.RecordSet, error) {
	docs := make([]recordSetDoc, 0, len(sets))
	for _, rs := range sets {
		d := recordSetDoc{ID: entryID(pillow, rs.DocID), Rev: rs.Version, Pillow: pillow, DocID: rs.DocID, IDs: rs.IDs}
		if len(rs.IDs) == 0 {
			if rs.Version == "" {
				continue // no entry to remove
			}
			d = recordSetDoc{ID: d.ID, Rev: rs.Version, Deleted: true}
		}
		docs = append(docs, d)
	}
	revs := map[string]string{}
	created := false
	for attempt := 0; len(docs) > 0; attempt++ {
		var conflicts []recordSetDoc
		for chunk := range slices.Chunk(docs, pageSize) {
			var res []struct {
				bulkResult
				Rev string `json:"rev"`
			}
			err := s.call(ctx, http.MethodPost, s.recordsPath()+"/_bulk_docs", nil, map[string]any{"docs": chunk}, &res)
			if kivik.HTTPStatus(err) == http.StatusNotFound && !created {
				if err := s.createRecordsDB(ctx); err != nil {
					return nil, err
				}
				created = true
				conflicts = docs // all again
				break
			}
			if err != nil {
				return nil, s.recordsErr("saving record sets", err)
			}
			for i, r := range res {
				switch r.Error {
				case "":
					revs[r.ID] = r.Rev
				case "conflict":
					conflicts = append(conflicts, chunk[i])
				default:
					return nil, s.recordsErr("saving record sets", fmt.Errorf("entry %q: %s: %s", r.ID, r.Error, r.Reason))
				}
			}
		}
		if len(conflicts) == 0 {
			break
		}
		if attempt >= maxConflicts {
			return nil, s.recordsErr("saving record sets", fmt.Errorf("entry %q: still in conflict after %d attempts", conflicts[0].ID, attempt+1))
		}
		// Take the current revisions and write again.
		keys := make([]string, len(conflicts))
		for i, d := range conflicts {
			keys[i] = d.ID
		}
		cur, err := s.fetchRecordSets(ctx, keys)
		if err != nil {
			return nil, s.recordsErr("saving record sets", err)
		}
		now := map[string]string{}
		for _, d := range cur {
			now[d.ID] = d.Rev
		}
		docs = docs[:0]
		for _, d := range conflicts {
			d.Rev = now[d.ID]
			if d.Deleted && d.Rev == "" {
				continue // gone already
			}
			docs = append(docs, d)
		}
	}
	out := make([]component.RecordSet, len(sets))
	for i, rs := range sets {
		out[i] = component.RecordSet{DocID: rs.DocID, IDs: rs.IDs}
		if len(rs.IDs) > 0 {
			out[i].Version = revs[entryID(pillow, rs.DocID)]
		}
	}
	return out, nil
}

// createRecordsDB creates records_db; one that exists already is fine.
func (s *Source) createRecordsDB(ctx context.Context) error {
	err := s.call(ctx, http.MethodPut, s.recordsPath(), nil, nil, nil)
	switch kivik.HTTPStatus(err) {
	case http.StatusPreconditionFailed: // created by someone else meanwhile
		return nil
	case http.StatusForbidden:
		return s.recordsErr("creating the database", component.Permanent(fmt.Errorf(
			"forbidden (403): the user may not create it: create database %q as an admin, or set records_db to a database it may write: %w", s.recordsDB(), err)))
	}
	if err != nil {
		return s.recordsErr("creating the database", err)
	}
	s.log.Info("couchdb record sets database created", "db", s.displayDB(s.recordsDB()))
	return nil
}

func (s *Source) recordsErr(what string, err error) error {
	if !component.IsPermanent(err) {
		if kivik.HTTPStatus(err) == http.StatusForbidden {
			err = component.Permanent(fmt.Errorf("forbidden (403): the user may not use the record sets' database: grant it access, or set records_db to another database: %w", err))
		} else {
			err = s.describe(err)
		}
	}
	return s.errorf("record sets %s: %s: %w", s.displayDB(s.recordsDB()), what, err)
}

var _ component.RecordSets = (*Source)(nil)
