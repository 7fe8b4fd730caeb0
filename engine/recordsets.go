package engine

import (
	"context"
	"slices"
	"sync"
)

// Records follow their document: after a change is processed, a
// document's records in every sink are exactly those the transform
// returned for it; ids it no longer returns are deleted, and a document
// that is deleted or no longer passes the filter has none.
//
// Sinks delete by record id only, so the engine remembers, per pillow and
// document, the ids of the records a document was last written with: its
// record set, kept in a RecordSets store where every process running the
// pillow sees it (the checkpoint store's database). A document gets an
// entry once it produces a record, so a pillow that filters most of its
// feed out writes nothing for the documents it never indexed, and sends
// no deletes for them.
//
// Each batch, the engine reads the entries of the documents it changes,
// then:
//  1. saves, for documents that gain ids, the union of the old and the
//     new ids (so that after a crash in the middle of the batch, the
//     entry still names every record the document may have in a sink);
//  2. writes the batch, with a delete for each id an entry names that the
//     document's last change in the batch no longer produces;
//  3. saves the documents' new sets (an empty one removes the entry);
//  4. saves the checkpoint.
//
// An entry therefore always names at least the records its document has
// in the sinks, and a change replayed after a crash deletes what it must.

// RecordSet is the ids of the records a document was last written with.
type RecordSet struct {
	DocID string
	IDs   []string
	// Version is the store's own mark of the entry read (a CouchDB
	// revision), handed back by Save; empty for a new entry.
	Version string
}

// RecordSets keeps the record sets of pillows' documents. A checkpoint
// store (or a source keeping checkpoints) that implements it keeps them
// beside the checkpoints of the same pillows.
type RecordSets interface {
	// LoadRecordSets returns the entries of the given documents of pillow;
	// documents without one are left out.
	LoadRecordSets(ctx context.Context, pillow string, docIDs []string) ([]RecordSet, error)
	// SaveRecordSets writes entries of pillow, each with the Version it
	// was read with; a set without IDs removes the document's entry. It
	// returns the entries as saved, with their new versions.
	SaveRecordSets(ctx context.Context, pillow string, sets []RecordSet) ([]RecordSet, error)
}

// MemRecordSets keeps record sets in memory: for pillows without a
// checkpoint store, which start from their configured position on every
// run anyway.
type MemRecordSets struct {
	mu   sync.Mutex
	sets map[string]map[string][]string // pillow → doc → ids
}

// LoadRecordSets implements RecordSets.
func (m *MemRecordSets) LoadRecordSets(_ context.Context, pillow string, docIDs []string) ([]RecordSet, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []RecordSet
	for _, d := range docIDs {
		if ids, ok := m.sets[pillow][d]; ok {
			out = append(out, RecordSet{DocID: d, IDs: slices.Clone(ids)})
		}
	}
	return out, nil
}

// SaveRecordSets implements RecordSets.
func (m *MemRecordSets) SaveRecordSets(_ context.Context, pillow string, sets []RecordSet) ([]RecordSet, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sets == nil {
		m.sets = map[string]map[string][]string{}
	}
	ps := m.sets[pillow]
	if ps == nil {
		ps = map[string][]string{}
		m.sets[pillow] = ps
	}
	for _, s := range sets {
		if len(s.IDs) == 0 {
			delete(ps, s.DocID)
		} else {
			ps[s.DocID] = slices.Clone(s.IDs)
		}
	}
	return sets, nil
}

// touch is what one change of a batch left of its document: the ids of
// the records it produced (none when it was filtered out or deleted).
// Changes that failed, design documents skipped and deletions or
// filtered changes a pillow keeps leave none: their records stay.
type touch struct {
	doc, rev, seq string
	ids           []string
}

// docSets is a batch's work on record sets.
type docSets struct {
	final   map[string]*touch   // by document: its last change's touch
	order   []string            // documents, in batch order
	written map[string][]string // by document: ids of every record written
	stored  map[string]RecordSet
}

// planSets reads the entries of the batch's documents and adds to b.records a
// delete for each id a document's entry names that its last change no
// longer produces. It returns the entries that must be saved before the
// sinks are written (documents gaining ids) and keeps in b what is saved
// after.
func (p *Pillow) planSets(ctx context.Context, b *batch) error {
	if len(b.touches) == 0 {
		return nil
	}
	ds := &docSets{final: map[string]*touch{}, written: map[string][]string{}}
	inFinal := map[string]bool{} // every id some document of the batch now produces
	for i := range b.touches {
		t := &b.touches[i]
		if _, seen := ds.final[t.doc]; !seen {
			ds.order = append(ds.order, t.doc)
		}
		ds.final[t.doc] = t
		ds.written[t.doc] = appendNew(ds.written[t.doc], t.ids...)
	}
	for _, t := range ds.final {
		for _, id := range t.ids {
			inFinal[id] = true
		}
	}
	if p.docSetWriters {
		b.docSets = make([]DocSet, len(ds.order))
		for i, d := range ds.order {
			t := ds.final[d]
			b.docSets[i] = DocSet{DocID: d, Rev: t.rev, IDs: t.ids}
		}
	}
	if p.sets == nil {
		return nil // every sink keeps its documents' records itself
	}
	var loaded []RecordSet
	err := retry(ctx, p.log, "read record sets", func() error {
		var err error
		loaded, err = p.sets.LoadRecordSets(ctx, p.opts.CheckpointName, ds.order)
		return err
	})
	if err != nil {
		return err
	}
	ds.stored = make(map[string]RecordSet, len(loaded))
	for _, s := range loaded {
		ds.stored[s.DocID] = s
	}
	// Deletes of what documents no longer produce, and the entries to save
	// first: those whose documents gain ids.
	var before []RecordSet
	for _, d := range ds.order {
		t, old := ds.final[d], ds.stored[d]
		for _, id := range old.IDs {
			if !inFinal[id] && !b.deletes(d, id) {
				b.records = append(b.records, Record{ID: id, DocID: d, Rev: t.rev, Seq: t.seq, Delete: true})
			}
		}
		// Earlier changes of the batch may write ids the last one drops.
		for _, id := range ds.written[d] {
			if !inFinal[id] && !slices.Contains(old.IDs, id) && !b.deletes(d, id) {
				b.records = append(b.records, Record{ID: id, DocID: d, Rev: t.rev, Seq: t.seq, Delete: true})
			}
		}
		union := appendNew(slices.Clone(old.IDs), ds.written[d]...)
		if len(union) > len(old.IDs) {
			before = append(before, RecordSet{DocID: d, IDs: union, Version: old.Version})
		}
	}
	if len(before) > 0 {
		saved, err := p.saveSets(ctx, before)
		if err != nil {
			return err
		}
		for _, s := range saved {
			ds.stored[s.DocID] = s
		}
	}
	b.sets = ds
	return nil
}

// deletes reports whether the batch deletes id as a record of doc already
// (the delete of a deleted document's own id).
func (b *batch) deletes(doc, id string) bool {
	if id != doc {
		return false
	}
	for i := range b.records {
		if r := &b.records[i]; r.Delete && r.ID == id {
			return true
		}
	}
	return false
}

// commitSets saves, once the sinks have the batch, the documents' new
// record sets where they differ from the entries.
func (p *Pillow) commitSets(ctx context.Context, b *batch) error {
	ds := b.sets
	if ds == nil {
		return nil
	}
	var after []RecordSet
	for _, d := range ds.order {
		t, old := ds.final[d], ds.stored[d]
		if sameSet(old.IDs, t.ids) {
			continue
		}
		if len(old.IDs) == 0 && old.Version == "" && len(t.ids) == 0 {
			continue // no entry, none needed
		}
		after = append(after, RecordSet{DocID: d, IDs: t.ids, Version: old.Version})
	}
	if len(after) == 0 {
		return nil
	}
	_, err := p.saveSets(ctx, after)
	return err
}

func (p *Pillow) saveSets(ctx context.Context, sets []RecordSet) ([]RecordSet, error) {
	var saved []RecordSet
	err := retry(ctx, p.log, "save record sets", func() error {
		var err error
		saved, err = p.sets.SaveRecordSets(ctx, p.opts.CheckpointName, sets)
		return err
	})
	if err == nil {
		p.opts.Metrics.recordSets.WithLabelValues(p.Spec.Name).Add(float64(len(sets)))
	}
	return saved, err
}

// appendNew appends the ids not in s yet.
func appendNew(s []string, ids ...string) []string {
	for _, id := range ids {
		if !slices.Contains(s, id) {
			s = append(s, id)
		}
	}
	return s
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			return false
		}
	}
	return true
}
