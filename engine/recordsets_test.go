package engine

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"sync"
	"testing"
)

// stateSink applies what it is given to a map of record id → document, as
// a real sink would, and counts the deletes it gets. crashAfter, when
// set, makes a write apply its records and then fail for good: a process
// killed after the sink wrote and before anything else happened.
type stateSink struct {
	mu         sync.Mutex
	state      map[string]any
	deletes    int
	crashAfter bool
}

func (s *stateSink) Open(context.Context) error { return nil }
func (s *stateSink) Close() error               { return nil }
func (s *stateSink) Write(_ context.Context, rs []Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == nil {
		s.state = map[string]any{}
	}
	for _, r := range rs {
		if r.Delete {
			s.deletes++
			delete(s.state, r.ID)
		} else {
			s.state[r.ID] = r.Doc
		}
	}
	if s.crashAfter {
		return Permanent(errors.New("killed"))
	}
	return nil
}

func (s *stateSink) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id := range s.state {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// households makes one record per parent link of an open case, like
// pipelines/households.yaml.
const (
	householdsFilter    = `!doc.closed`
	householdsTransform = `function transform(doc) {
  return (doc.parents || []).map(p => ({ _id: doc._id + ":" + p, parent: p }));
}`
)

func kase(id, rev string, closed bool, parents ...any) Change {
	c := doc(id, "closed", closed, "parents", parents)
	c.Rev = rev
	return c
}

func runRecordSets(t *testing.T, sink Sink, sets RecordSets, keepFiltered bool, cs ...Change) error {
	t.Helper()
	s := testSpec(t, householdsFilter, householdsTransform, feed(cs...), sink)
	s.KeepFiltered = keepFiltered
	return NewPillow(s, RunOptions{Log: quietLog(), RecordSets: sets, Errors: &memErrors{}}).Run(context.Background())
}

func TestRecordsFollowTheirDocument(t *testing.T) {
	sink := &stateSink{}
	sets := &MemRecordSets{}
	// The batch size is 3: changes of a document in one batch and across
	// batches, across two runs sharing the record sets.
	if err := runRecordSets(t, sink, sets, false,
		kase("c1", "1-a", false, "h1", "h2"),
		kase("c2", "1-a", false, "h1"),
		kase("c3", "1-a", false, "h3"),
		kase("c4", "1-a", false, "h4"),
		kase("c1", "2-a", false, "h2", "h5"), // parent changed
		kase("c3", "2-a", true, "h3"),        // closed
		kase("c4", "2-a", false),             // no records now
	); err != nil {
		t.Fatal(err)
	}
	if got, want := sink.ids(), []string{"c1:h2", "c1:h5", "c2:h1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after run 1: %v, want %v", got, want)
	}
	if err := runRecordSets(t, sink, sets, false,
		kase("c3", "3-a", false, "h3", "h6"),                           // reopened
		Change{ID: "c1", Rev: "3-a", Deleted: true},                    // deleted
		kase("c2", "2-a", false, "h7"), kase("c2", "3-a", false, "h8"), // twice in a batch
	); err != nil {
		t.Fatal(err)
	}
	if got, want := sink.ids(), []string{"c2:h8", "c3:h3", "c3:h6"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after run 2: %v, want %v", got, want)
	}
	// Entries name exactly what is in the sink.
	got, _ := sets.LoadRecordSets(context.Background(), "test", []string{"c1", "c2", "c3", "c4"})
	want := []RecordSet{{DocID: "c2", IDs: []string{"c2:h8"}}, {DocID: "c3", IDs: []string{"c3:h3", "c3:h6"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("record sets %+v, want %+v", got, want)
	}
}

func TestKeepFilteredLeavesRecords(t *testing.T) {
	sink := &stateSink{}
	if err := runRecordSets(t, sink, &MemRecordSets{}, true,
		kase("c1", "1-a", false, "h1"),
		kase("c1", "2-a", true, "h1"),
		kase("c2", "1-a", false, "h2"),
		kase("c2", "2-a", false), // the transform's null still removes
	); err != nil {
		t.Fatal(err)
	}
	if got, want := sink.ids(), []string{"c1:h1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("%v, want %v", got, want)
	}
}

// countingSets counts the entries read and saved.
type countingSets struct {
	MemRecordSets
	loaded, saved int
}

func (c *countingSets) LoadRecordSets(ctx context.Context, pillow string, ids []string) ([]RecordSet, error) {
	c.loaded += len(ids)
	return c.MemRecordSets.LoadRecordSets(ctx, pillow, ids)
}

func (c *countingSets) SaveRecordSets(ctx context.Context, pillow string, sets []RecordSet) ([]RecordSet, error) {
	c.saved += len(sets)
	return c.MemRecordSets.SaveRecordSets(ctx, pillow, sets)
}

// A single-record pillow (record id = document id) filtering out 90% of
// its feed keeps no entries and reads none; it sends a delete only for a
// document past its first revision that it now filters out.
func TestSingleRecordPillowKeepsNoSets(t *testing.T) {
	var cs []Change
	for i := 0; i < 100; i++ {
		cs = append(cs, kase(fmt.Sprint("c", i), "1-a", i%10 != 0))
	}
	cs = append(cs, kase("c0", "2-a", false), kase("c10", "2-a", true), kase("c1", "2-a", true))
	sink := &stateSink{}
	sets := &countingSets{}
	s := testSpec(t, householdsFilter, `function transform(doc) { return { _id: doc._id }; }`, feed(cs...), sink)
	if err := NewPillow(s, RunOptions{Log: quietLog(), RecordSets: sets, Errors: &memErrors{}}).Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"c0", "c20", "c30", "c40", "c50", "c60", "c70", "c80", "c90"}
	if got := sink.ids(); !reflect.DeepEqual(got, want) {
		t.Errorf("records %v, want %v", got, want)
	}
	// c10 was indexed and closed; c1 never indexed, but updated: a delete
	// of its own id is all it costs.
	if sink.deletes != 2 || sets.saved != 0 || sets.loaded != 1 {
		t.Errorf("%d deletes, %d entries saved, %d read; want 2, 0, 1 (the marker)", sink.deletes, sets.saved, sets.loaded)
	}
}

// A pillow filtering out 90% of a feed of new documents sends no deletes
// and saves entries only for the documents that produce records.
func TestFilteredDocumentsCostNothing(t *testing.T) {
	var cs []Change
	for i := 0; i < 100; i++ {
		cs = append(cs, kase(fmt.Sprint("c", i), "1-a", i%10 != 0, "h"))
	}
	sink := &stateSink{}
	sets := &countingSets{}
	if err := runRecordSets(t, sink, sets, false, cs...); err != nil {
		t.Fatal(err)
	}
	if len(sink.ids()) != 10 || sink.deletes != 0 || sets.saved != 11 {
		t.Errorf("%d records, %d deletes, %d entries saved; want 10, 0, 11 (with the marker)", len(sink.ids()), sink.deletes, sets.saved)
	}
}

func TestCrashAfterSinkWriteStillRemovesRecords(t *testing.T) {
	sink := &stateSink{}
	sets := &MemRecordSets{}
	if err := runRecordSets(t, sink, sets, false, kase("c1", "1-a", false, "h1")); err != nil {
		t.Fatal(err)
	}
	// The parent changes; the sink gets it, and the process dies before
	// anything else is saved.
	sink.crashAfter = true
	if err := runRecordSets(t, sink, sets, false, kase("c1", "2-a", false, "h2")); err == nil {
		t.Fatal("no error from the killed write")
	}
	sink.crashAfter = false
	if got, want := sink.ids(), []string{"c1:h2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after the kill: %v, want %v", got, want)
	}
	// On restart the feed has moved on: the case is closed. Both the
	// record of the replayed change and the earlier one must go.
	if err := runRecordSets(t, sink, sets, false, kase("c1", "3-a", true, "h2")); err != nil {
		t.Fatal(err)
	}
	if got := sink.ids(); len(got) != 0 {
		t.Fatalf("stale records %v", got)
	}
}

// docSetSink keeps which document each record came from, and replaces a
// document's records by itself, as the postgres sink does.
type docSetSink struct {
	stateSink
	docOf map[string]string
	calls int
}

func (s *docSetSink) WriteDocSets(ctx context.Context, rs []Record, sets []DocSet, _, _ string, _ func(RecordErrors) error) error {
	s.calls++
	if err := s.Write(ctx, rs); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.docOf == nil {
		s.docOf = map[string]string{}
	}
	for _, r := range rs {
		if !r.Delete {
			s.docOf[r.ID] = r.DocID
		}
	}
	for _, set := range sets {
		for id, d := range s.docOf {
			if d == set.DocID && !slices.Contains(set.IDs, id) {
				delete(s.state, id)
				delete(s.docOf, id)
			}
		}
	}
	return nil
}

func TestDocSetWriterNeedsNoRecordSets(t *testing.T) {
	sink := &docSetSink{}
	s := testSpec(t, householdsFilter, householdsTransform, feed(
		kase("c1", "1-a", false, "h1", "h2"),
		kase("c2", "1-a", false, "h1"),
		kase("c3", "1-a", false, "h3"),
		kase("c1", "2-a", false, "h2", "h5"),
		kase("c3", "2-a", true, "h3"),
		Change{ID: "c2", Rev: "2-a", Deleted: true},
	), sink)
	p := NewPillow(s, RunOptions{Log: quietLog(), Errors: &memErrors{}})
	if p.sets != nil {
		t.Fatalf("record sets kept for a pillow whose only sink keeps them itself: %T", p.sets)
	}
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := sink.ids(), []string{"c1:h2", "c1:h5"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("%v, want %v", got, want)
	}
	if sink.calls != 2 {
		t.Errorf("%d writes, want 2 (one per batch)", sink.calls)
	}
}
