package engine

import (
	"context"
	"slices"
	"sync"

	"github.com/dimagi/ptop/component"
)

// Records follow their document: after a change is processed, a
// document's records in every sink are exactly those the transform
// returned for it; ids it no longer returns are deleted, and a document
// that is deleted or no longer passes the filter has none.
//
// Most sinks delete by record id only, so the engine remembers, per pillow
// and document, the ids of the records a document was written with: its
// record set, kept in a RecordSets store where every process running the
// pillow sees it (the checkpoint store's database). Sinks that find a
// document's records themselves (DocSetWriter: postgres) need none.
//
// Entries are kept only where they are needed, so that the common pillows
// pay nothing for them:
//   - A document whose records are at most one, with the document's own id
//     (a single-record pillow), has no entry. A document without an entry
//     is taken to have at most that record, and only if it has had an
//     earlier revision: a document at its first revision ("1-…") has no
//     records yet. So a document filtered out or deleted is sent a delete
//     of its own id only after an update, as deletions always were, and a
//     filtered pillow sends nothing for new documents it filters out.
//   - Entries are read only once the pillow has written one (a marker,
//     the entry of document "", says so), and only for documents past
//     their first revision.
//
// Each batch, the engine reads the entries it needs, then:
//  1. saves, for documents that gain ids, the union of the old and the
//     new ids (so that after a crash in the middle of the batch, the
//     entry still names every record the document may have in a sink);
//  2. writes the batch, with a delete for each id a document had that its
//     last change in the batch no longer produces;
//  3. saves the documents' new sets (removing entries no longer needed);
//  4. saves the checkpoint.
//
// An entry therefore always names at least the records its document has
// in the sinks, and a change replayed after a crash deletes what it must.

type (
	// RecordSet is component.RecordSet.
	RecordSet = component.RecordSet
	// RecordSets is component.RecordSets.
	RecordSets = component.RecordSets
)

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

// multiMarker is the document id of the entry saying that the pillow has
// written entries (see above).
const multiMarker = ""

// trivial reports whether ids need no entry: none, or the document's own.
func trivial(doc string, ids []string) bool {
	return len(ids) == 0 || (len(ids) == 1 && ids[0] == doc)
}

// loadMarker reads whether the pillow has written entries.
func (p *Pillow) loadMarker(ctx context.Context) error {
	if p.sets == nil {
		return nil
	}
	return retry(ctx, p.log, "read record sets", func() error {
		m, err := p.sets.LoadRecordSets(ctx, p.opts.CheckpointName, []string{multiMarker})
		p.multi = len(m) > 0
		return err
	})
}

// planSets reads the entries of the batch's documents that may have one,
// adds to b.records a delete for each id a document had that its last
// change no longer produces, and saves first the entries of documents
// that gain ids. It leaves in b what commitSets saves after the sinks.
func (p *Pillow) planSets(ctx context.Context, b *batch) error {
	if len(b.touches) == 0 {
		return nil
	}
	ds := &docSets{final: map[string]*touch{}, written: map[string][]string{}}
	firstGen := map[string]int64{} // by document: its first change's revision generation
	inFinal := map[string]bool{}   // every id some document of the batch now produces
	for i := range b.touches {
		t := &b.touches[i]
		if _, seen := ds.final[t.doc]; !seen {
			ds.order = append(ds.order, t.doc)
			firstGen[t.doc] = seqNumber(t.rev)
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
		// A document at its first revision had no records before the
		// batch: it needs no replacing, unless the batch itself wrote ids
		// its last change drops.
		b.docSets = make([]DocSet, 0, len(ds.order))
		for _, d := range ds.order {
			t := ds.final[d]
			if firstGen[d] == 1 && len(ds.written[d]) == len(t.ids) {
				continue
			}
			b.docSets = append(b.docSets, DocSet{DocID: d, Rev: t.rev, Seq: t.seq, IDs: t.ids})
		}
	}
	if p.sets == nil {
		return nil // every sink keeps its documents' records itself
	}
	ds.stored = map[string]RecordSet{}
	if p.multi {
		var ask []string
		for _, d := range ds.order {
			if firstGen[d] != 1 {
				ask = append(ask, d)
			}
		}
		if len(ask) > 0 {
			var loaded []RecordSet
			err := retry(ctx, p.log, "read record sets", func() error {
				var err error
				loaded, err = p.sets.LoadRecordSets(ctx, p.opts.CheckpointName, ask)
				return err
			})
			if err != nil {
				return err
			}
			for _, s := range loaded {
				ds.stored[s.DocID] = s
			}
		}
	}
	// Deletes of what documents no longer produce, and the entries to save
	// first: those whose documents gain ids.
	var before []RecordSet
	for _, d := range ds.order {
		t := ds.final[d]
		stored, has := ds.stored[d]
		old := stored.IDs
		if !has && firstGen[d] != 1 {
			old = []string{d} // at most its own record
		}
		for _, id := range old {
			if !inFinal[id] && !b.deletes(d, id) {
				b.records = append(b.records, Record{ID: id, DocID: d, Rev: t.rev, Seq: t.seq, Delete: true})
			}
		}
		// Earlier changes of the batch may write ids the last one drops.
		for _, id := range ds.written[d] {
			if !inFinal[id] && !slices.Contains(old, id) && !b.deletes(d, id) {
				b.records = append(b.records, Record{ID: id, DocID: d, Rev: t.rev, Seq: t.seq, Delete: true})
			}
		}
		union := appendNew(slices.Clone(old), ds.written[d]...)
		if !trivial(d, union) && len(union) > len(stored.IDs) {
			before = append(before, RecordSet{DocID: d, IDs: union, Version: stored.Version})
		}
	}
	if len(before) > 0 {
		if !p.multi {
			if _, err := p.saveSets(ctx, []RecordSet{{DocID: multiMarker, IDs: []string{"ptop: this pillow keeps record sets"}}}); err != nil {
				return err
			}
			p.multi = true
		}
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
// record sets where they differ from the entries; entries no longer
// needed are removed.
func (p *Pillow) commitSets(ctx context.Context, b *batch) error {
	ds := b.sets
	if ds == nil {
		return nil
	}
	var after []RecordSet
	for _, d := range ds.order {
		t := ds.final[d]
		stored, has := ds.stored[d]
		switch {
		case trivial(d, t.ids):
			if has {
				after = append(after, RecordSet{DocID: d, Version: stored.Version})
			}
		case !has || !sameSet(stored.IDs, t.ids):
			after = append(after, RecordSet{DocID: d, IDs: t.ids, Version: stored.Version})
		}
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
