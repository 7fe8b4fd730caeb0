package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// chanSource sends the changes it is given until in is closed, then ends.
type chanSource struct {
	in       chan Change
	gotSince chan string
}

func (s *chanSource) Run(ctx context.Context, since string, out chan<- Change) error {
	if s.gotSince != nil {
		s.gotSince <- since
	}
	for {
		select {
		case c, ok := <-s.in:
			if !ok {
				return nil
			}
			select {
			case out <- c:
			case <-ctx.Done():
				return ctx.Err()
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// memSink keeps what it is given; fail makes its next writes fail.
type memSink struct {
	mu      sync.Mutex
	batches [][]Record
	fail    int
	reject  func(Record) error
	written chan int
}

func (s *memSink) Open(context.Context) error { return nil }
func (s *memSink) Close() error               { return nil }
func (s *memSink) Write(_ context.Context, rs []Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail > 0 {
		s.fail--
		return errors.New("sink down")
	}
	var errs RecordErrors
	var kept []Record
	for i, r := range rs {
		if s.reject != nil {
			if err := s.reject(r); err != nil {
				errs = append(errs, RecordError{Index: i, Err: err})
				continue
			}
		}
		kept = append(kept, r)
	}
	s.batches = append(s.batches, kept)
	if s.written != nil {
		s.written <- len(rs)
	}
	if errs != nil {
		return errs
	}
	return nil
}

// records returns what was written, the transform's records (JSON text)
// decoded into maps; raw returns them as written.
func (s *memSink) records() []Record {
	all := s.raw()
	for i := range all {
		if b, ok := all[i].Doc.(json.RawMessage); ok && !all[i].Delete {
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				panic(err)
			}
			all[i].Doc = m
		}
	}
	return all
}

type memCheckpoints struct {
	mu    sync.Mutex
	seq   string
	saves []string
}

func (m *memCheckpoints) LoadCheckpoint(context.Context, string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.seq, nil
}

func (m *memCheckpoints) SaveCheckpoint(_ context.Context, _ string, seq string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq = seq
	m.saves = append(m.saves, seq)
	return nil
}

func (m *memCheckpoints) get() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.seq
}

// memErrors is an in-memory ErrorStore.
type memErrors struct {
	mu      sync.Mutex
	fs      []Failure
	entries map[string]ErrorEntry // by doc id (one pillow in these tests)
}

func (m *memErrors) Record(_ context.Context, f Failure, next func(int) time.Duration) (ErrorEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fs = append(m.fs, f)
	if m.entries == nil {
		m.entries = map[string]ErrorEntry{}
	}
	e := m.entries[f.Change.ID]
	if e.Attempts == 0 {
		e.FirstFailed = f.Time
	}
	e.Pillow, e.DocID, e.Seq, e.Rev, e.Hash, e.Stage, e.Error = f.Pillow, f.Change.ID, f.Change.Seq, f.Change.Rev, f.Hash, f.Stage, f.Err.Error()
	e.Attempts++
	e.LastFailed = f.Time
	e.NextAttempt = time.Time{}
	if d := next(e.Attempts); d > 0 {
		e.NextAttempt = f.Time.Add(d)
	}
	m.entries[f.Change.ID] = e
	return e, nil
}

func (m *memErrors) List(context.Context, string) ([]ErrorEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var es []ErrorEntry
	for _, e := range m.entries {
		es = append(es, e)
	}
	return es, nil
}

func (m *memErrors) Clear(_ context.Context, _, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.entries, id)
	return nil
}

func (m *memErrors) Retry(context.Context, string, []string) (int, error) { return 0, nil }
func (m *memErrors) Purge(context.Context, string, []string) (int, error) { return 0, nil }

func (m *memErrors) ids() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for _, f := range m.fs {
		ids = append(ids, f.Change.ID+":"+f.Stage)
	}
	return ids
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testSpec(t *testing.T, filterSrc, transformSrc string, src Source, sinks ...Sink) *Spec {
	t.Helper()
	s := &Spec{File: "test.yaml", source: src}
	s.SetDefaults()
	s.Name = "test"
	s.Batch = Batch{Size: 3, Wait: Duration(20 * time.Millisecond)}
	s.TransformTimeout = Duration(200 * time.Millisecond)
	if filterSrc != "" {
		f, err := compileFilter(filterSrc, s.TransformMemory)
		if err != nil {
			t.Fatal(err)
		}
		s.filter = f
	}
	if transformSrc != "" {
		tr, err := compileTransform("test.js", scriptLoc{}, transformSrc, s.jsLimits(), false)
		if err != nil {
			t.Fatal(err)
		}
		s.transform = tr
	}
	for i, k := range sinks {
		s.outputs = append(s.outputs, NamedSink{Name: fmt.Sprintf("mem#%d", i), Sink: k})
	}
	return s
}

func doc(id string, kv ...any) Change {
	d := map[string]any{"_id": id}
	for i := 0; i+1 < len(kv); i += 2 {
		d[kv[i].(string)] = kv[i+1]
	}
	return Change{ID: id, Rev: "1-a", Doc: d}
}

func feed(cs ...Change) *chanSource {
	s := &chanSource{in: make(chan Change, len(cs))}
	for i, c := range cs {
		if c.Seq == "" && c.Err == nil {
			c.Seq = fmt.Sprint(i + 1)
		}
		s.in <- c
	}
	close(s.in)
	return s
}

func runToEnd(t *testing.T, s *Spec, opts RunOptions) {
	t.Helper()
	if opts.Log == nil {
		opts.Log = quietLog()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := NewPillow(s, opts).Run(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRunFilterTransformDeletes(t *testing.T) {
	src := feed(
		doc("a", "type", "case", "name", "alice"),
		doc("b", "type", "user", "name", "bob"),
		Change{ID: "c", Rev: "2-x", Deleted: true, Doc: map[string]any{"_id": "c", "_deleted": true}},
		doc("_design/app", "type", "case"),
		Change{ID: "d", Rev: "1-d", RawDoc: []byte(`{"_id":"d","type":"case","name":"dora","kids":["x","y"]}`)},
		doc("e", "type", "case", "name", "eve", "drop", true),
		Change{ID: "f", Rev: "1-f", RawDoc: []byte(`{not json`)},
	)
	sink := &memSink{}
	errs := &memErrors{}
	cps := &memCheckpoints{}
	s := testSpec(t, `doc.type == "case"`, `
		function transform(doc, change) {
			if (doc.drop) return null;
			const out = [{ _id: doc._id, name: doc.name.toUpperCase(), rev: change.rev }];
			for (const k of doc.kids || []) out.push({ _id: doc._id + "/" + k, parent: doc._id });
			return out;
		}`, src, sink)
	runToEnd(t, s, RunOptions{Errors: errs, Checkpoints: cps})

	got := sink.records()
	want := []Record{
		{ID: "a", DocID: "a", Rev: "1-a", Seq: "1", Doc: map[string]any{"_id": "a", "name": "ALICE", "rev": "1-a"}},
		{ID: "c", DocID: "c", Rev: "2-x", Seq: "3", Delete: true},
		{ID: "d", DocID: "d", Rev: "1-d", Seq: "5", Doc: map[string]any{"_id": "d", "name": "DORA", "rev": "1-d"}},
		{ID: "d/x", DocID: "d", Rev: "1-d", Seq: "5", Doc: map[string]any{"_id": "d/x", "parent": "d"}},
		{ID: "d/y", DocID: "d", Rev: "1-d", Seq: "5", Doc: map[string]any{"_id": "d/y", "parent": "d"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("records:\n got %+v\nwant %+v", got, want)
	}
	if ids := errs.ids(); !reflect.DeepEqual(ids, []string{"f:decode"}) {
		t.Errorf("failures = %v", ids)
	}
	if cps.get() != "7" {
		t.Errorf("checkpoint = %q, want 7", cps.get())
	}
}

func TestRunWithoutTransformPassesDocuments(t *testing.T) {
	sink := &memSink{}
	s := testSpec(t, "", "", feed(doc("a", "x", 1.0)), sink)
	s.SkipDeletes = true
	runToEnd(t, s, RunOptions{})
	got := sink.records()
	if len(got) != 1 || !reflect.DeepEqual(got[0].Doc, map[string]any{"_id": "a", "x": 1.0}) {
		t.Fatalf("records = %+v", got)
	}
}

func TestRunSkipDeletesAndIncludeDesign(t *testing.T) {
	sink := &memSink{}
	s := testSpec(t, "", "", feed(
		Change{ID: "a", Deleted: true},
		doc("_design/x"),
	), sink)
	s.SkipDeletes, s.IncludeDesign = true, true
	runToEnd(t, s, RunOptions{})
	got := sink.records()
	if len(got) != 1 || got[0].ID != "_design/x" {
		t.Fatalf("records = %+v", got)
	}
}

func TestTransformGlobalsDoNotLeak(t *testing.T) {
	var cs []Change
	for i := 0; i < 10; i++ {
		cs = append(cs, doc(fmt.Sprint(i)))
	}
	sink := &memSink{}
	errs := &memErrors{}
	s := testSpec(t, "", `
		var counter = 0;
		const seen = {};
		function transform(doc) {
			const before = Object.keys(seen).length;
			try { seen[doc._id] = true; } catch (e) {}
			try { counter++; } catch (e) {}
			try { Object.prototype.polluted = 1; } catch (e) {}
			return { n: counter, seen: before, polluted: ({}).polluted === 1 };
		}`, feed(cs...), sink)
	runToEnd(t, s, RunOptions{Errors: errs})
	got := sink.records()
	if len(got) != 10 {
		t.Fatalf("got %d records, failures %v", len(got), errs.ids())
	}
	for _, r := range got {
		d := r.Doc.(map[string]any)
		if d["n"] != 0.0 || d["seen"] != 0.0 || d["polluted"] != false {
			t.Fatalf("state leaked between documents: %v", d)
		}
	}
}

func TestTransformTimeoutAndErrors(t *testing.T) {
	sink := &memSink{}
	errs := &memErrors{}
	s := testSpec(t, "", `
		function transform(doc) {
			if (doc.loop) { for (;;) {} }
			if (doc.throw) throw new Error("bad doc " + doc._id);
			if (doc.num) return 42;
			return { ok: true };
		}`, feed(doc("a"), doc("loop", "loop", true), doc("b"), doc("throw", "throw", true), doc("num", "num", true), doc("c")), sink)
	s.Workers = 1
	runToEnd(t, s, RunOptions{Errors: errs})
	var ids []string
	for _, r := range sink.records() {
		ids = append(ids, r.ID)
	}
	if !reflect.DeepEqual(ids, []string{"a", "b", "c"}) {
		t.Errorf("written %v", ids)
	}
	errs.mu.Lock()
	defer errs.mu.Unlock()
	if len(errs.fs) != 3 {
		t.Fatalf("failures: %v", errs.fs)
	}
	for i, want := range []string{
		"transform: timed out after 200ms of CPU time",
		"transform: Error: bad doc throw (at test.js:4:25)",
		"transform: returned a number; return an object, an array of objects, or null",
	} {
		if got := errs.fs[i].Err.Error(); got != want {
			t.Errorf("failure %d: %q, want %q", i, got, want)
		}
	}
}

func TestBatchFlushesOnWait(t *testing.T) {
	src := &chanSource{in: make(chan Change)}
	sink := &memSink{written: make(chan int, 10)}
	cps := &memCheckpoints{}
	s := testSpec(t, "", "", src, sink)
	s.Batch = Batch{Size: 1000, Wait: Duration(50 * time.Millisecond)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- NewPillow(s, RunOptions{Log: quietLog(), Checkpoints: cps}).Run(ctx) }()
	c := doc("a")
	c.Seq = "17"
	src.in <- c
	select {
	case n := <-sink.written:
		if n != 1 {
			t.Fatalf("batch of %d", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a lone change was not written: the batch did not flush on wait")
	}
	deadline := time.Now().Add(5 * time.Second)
	for cps.get() != "17" && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if cps.get() != "17" {
		t.Fatalf("checkpoint = %q, want 17", cps.get())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCheckpointWaitsForSink(t *testing.T) {
	sink := &memSink{fail: 2}
	cps := &memCheckpoints{}
	s := testSpec(t, "", "", feed(doc("a"), doc("b")), sink)
	p := NewPillow(s, RunOptions{Checkpoints: cps, Log: quietLog()})
	sawDown := make(chan []string, 1)
	go func() {
		for {
			if ok, why := p.Health(); !ok {
				sawDown <- why
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case why := <-sawDown:
		if len(why) != 1 || why[0] != "sink mem#0: sink down" {
			t.Errorf("unhealthy because %v", why)
		}
	case <-time.After(time.Second):
		t.Error("the pillow never reported itself unhealthy while its sink was down")
	}
	if ok, why := p.Health(); !ok {
		t.Errorf("still unhealthy after the sink recovered: %v", why)
	}
	if len(sink.records()) != 2 {
		t.Fatalf("records = %v", sink.records())
	}
	if !reflect.DeepEqual(cps.saves, []string{"2"}) {
		t.Fatalf("checkpoints saved: %v", cps.saves)
	}
}

func TestSinkRejectsOneRecord(t *testing.T) {
	sink := &memSink{reject: func(r Record) error {
		if r.ID == "b" {
			return errors.New("mapping error")
		}
		return nil
	}}
	errs := &memErrors{}
	s := testSpec(t, "", "", feed(doc("a"), doc("b"), doc("c")), sink)
	runToEnd(t, s, RunOptions{Errors: errs})
	if ids := errs.ids(); !reflect.DeepEqual(ids, []string{"b:sink:mem#0"}) {
		t.Fatalf("failures = %v", ids)
	}
	if len(sink.records()) != 2 {
		t.Fatalf("records = %v", sink.records())
	}
}

func TestStopFlushesAndCheckpoints(t *testing.T) {
	src := &chanSource{in: make(chan Change, 10), gotSince: make(chan string, 1)}
	sink := &memSink{}
	cps := &memCheckpoints{seq: "5"}
	s := testSpec(t, "", "", src, sink)
	s.Batch = Batch{Size: 1000, Wait: Duration(time.Hour)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- NewPillow(s, RunOptions{Log: quietLog(), Checkpoints: cps}).Run(ctx) }()
	if since := <-src.gotSince; since != "5" {
		t.Fatalf("source started from %q, want the checkpoint 5", since)
	}
	for i := 6; i <= 8; i++ {
		c := doc(fmt.Sprint(i))
		c.Seq = fmt.Sprint(i)
		src.in <- c
	}
	for len(src.in) > 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if len(sink.records()) != 3 || cps.get() != "8" {
		t.Fatalf("after stop: %d records, checkpoint %q", len(sink.records()), cps.get())
	}
}

func TestOrderKeptAcrossWorkers(t *testing.T) {
	var cs []Change
	for i := 0; i < 2000; i++ {
		cs = append(cs, doc(fmt.Sprintf("%05d", i)))
	}
	sink := &memSink{}
	s := testSpec(t, "", `function transform(doc) { return { i: doc._id }; }`, feed(cs...), sink)
	s.Batch.Size = 500
	s.Workers = 4
	runToEnd(t, s, RunOptions{})
	got := sink.records()
	if len(got) != 2000 {
		t.Fatalf("%d records", len(got))
	}
	for i, r := range got {
		if r.ID != fmt.Sprintf("%05d", i) {
			t.Fatalf("record %d is %s: order lost", i, r.ID)
		}
	}
}

type failingCheckpoints struct{ err error }

func (f failingCheckpoints) LoadCheckpoint(context.Context, string) (string, error) { return "", f.err }
func (f failingCheckpoints) SaveCheckpoint(context.Context, string, string) error   { return f.err }

func TestPermanentErrorStopsPillow(t *testing.T) {
	s := testSpec(t, "", "", &chanSource{in: make(chan Change)}, &memSink{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := NewPillow(s, RunOptions{Log: quietLog(), Checkpoints: failingCheckpoints{Permanent(errors.New("unauthorized (401)"))}}).Run(ctx)
	if err == nil || err.Error() != "pillow test: loading the checkpoint: unauthorized (401)" {
		t.Fatalf("Run = %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("a permanent error was retried until the deadline")
	}
}

// txSink saves the checkpoint with its records, in a store it shares.
type txSink struct {
	memSink
	store  *memCheckpoints
	others *memSink // must have the batch before the checkpoint moves
	order  []string
}

func (s *txSink) SharesStore(cps CheckpointStore) bool { return cps == CheckpointStore(s.store) }
func (s *txSink) WriteCheckpointed(ctx context.Context, rs []Record, pillow, seq string, _ func(RecordErrors) error) error {
	if len(rs) > 0 {
		if err := s.Write(ctx, rs); err != nil {
			return err
		}
	}
	s.order = append(s.order, fmt.Sprintf("%d-before-others-had-%d", len(rs), len(s.others.records())))
	s.store.mu.Lock()
	s.store.seq = seq
	s.store.mu.Unlock()
	return nil
}

func TestTransactionalSinkSavesCheckpointLast(t *testing.T) {
	other := &memSink{fail: 1}
	cps := &memCheckpoints{}
	tx := &txSink{store: cps, others: other}
	s := testSpec(t, `doc.keep == true`, "", feed(doc("a", "keep", true), doc("b", "keep", true), doc("c"), doc("d")), other, tx)
	s.Batch.Size = 2
	runToEnd(t, s, RunOptions{Checkpoints: cps})
	if cps.get() != "4" || len(cps.saves) != 0 {
		t.Fatalf("checkpoint %q, saved through the store %v: want 4 saved only by the sink", cps.get(), cps.saves)
	}
	if want := []string{"2-before-others-had-2", "0-before-others-had-2"}; !reflect.DeepEqual(tx.order, want) {
		t.Fatalf("writes %v, want %v", tx.order, want)
	}
}

// readerSource is a chanSource whose documents can be read again.
type readerSource struct {
	chanSource
	mu   sync.Mutex
	docs map[string]map[string]any
}

func (r *readerSource) ReadDoc(_ context.Context, id string) (Change, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.docs[id]
	if !ok {
		return Change{ID: id, Deleted: true}, nil
	}
	cp := map[string]any{}
	for k, v := range d {
		cp[k] = v
	}
	return Change{ID: id, Rev: "2-fixed", Doc: cp}, nil
}

func (r *readerSource) set(id string, d map[string]any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.docs[id] = d
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFailedChangeRetriedFromCurrentDocument(t *testing.T) {
	src := &readerSource{chanSource: chanSource{in: make(chan Change, 4)}, docs: map[string]map[string]any{}}
	sink := &memSink{}
	errs := &memErrors{}
	s := testSpec(t, "", `function transform(doc) { if (doc.bad) throw new Error("bad"); return { ok: doc._id }; }`, src, sink)
	s.Errors = RetryPolicy{MaxAttempts: 3, Backoff: Duration(30 * time.Millisecond), MaxBackoff: Duration(time.Second), Poll: Duration(10 * time.Millisecond)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- NewPillow(s, RunOptions{Log: quietLog(), Errors: errs}).Run(ctx) }()

	src.set("x", map[string]any{"_id": "x", "bad": true})
	c := doc("x", "bad", true)
	c.Seq = "1"
	src.in <- c
	waitFor(t, "three failed attempts", func() bool { return len(errs.ids()) == 3 })
	time.Sleep(100 * time.Millisecond)
	if n := len(errs.ids()); n != 3 {
		t.Fatalf("%d attempts, want max_attempts 3", n)
	}
	e, _ := errs.List(ctx, "test")
	if len(e) != 1 || e[0].Attempts != 3 || !e[0].NextAttempt.IsZero() {
		t.Fatalf("entries: %+v", e)
	}
	cancel()
	<-done

	// A new definition retries what the old one gave up on; the document
	// is fixed meanwhile, so the retry clears the entry.
	src.set("x", map[string]any{"_id": "x"})
	s2 := testSpec(t, "", `function transform(doc) { if (doc.bad) throw new Error("still bad"); return { ok: doc._id, v: 2 }; }`, src, sink)
	s2.Hash = "new"
	s2.Errors = s.Errors
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- NewPillow(s2, RunOptions{Log: quietLog(), Errors: errs}).Run(ctx) }()
	waitFor(t, "the entry to clear", func() bool { e, _ := errs.List(ctx, "test"); return len(e) == 0 })
	got := sink.records()
	if len(got) != 1 || got[0].ID != "x" || got[0].Rev != "2-fixed" {
		t.Fatalf("records: %+v", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestLaterSuccessClearsError(t *testing.T) {
	errs := &memErrors{}
	sink := &memSink{}
	bad := doc("x", "bad", true)
	good := doc("x")
	s := testSpec(t, "", `function transform(doc) { if (doc.bad) throw new Error("bad"); return doc; }`, feed(bad, doc("y"), good), sink)
	s.Batch.Size = 1
	runToEnd(t, s, RunOptions{Errors: errs})
	if e, _ := errs.List(context.Background(), "test"); len(e) != 0 {
		t.Fatalf("entry not cleared by the fixed document: %+v", e)
	}
	if len(errs.ids()) != 1 {
		t.Fatalf("failures: %v", errs.ids())
	}
}

func TestRetryPolicyNext(t *testing.T) {
	r := RetryPolicy{MaxAttempts: 5, Backoff: Duration(time.Second), MaxBackoff: Duration(5 * time.Second)}
	var got []time.Duration
	for n := 1; n <= 5; n++ {
		got = append(got, r.Next(n))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 0}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Next = %v, want %v", got, want)
	}
}

func TestPermanentWriteErrorStopsPillow(t *testing.T) {
	src := &chanSource{in: make(chan Change, 1)}
	src.in <- Change{ID: "a", Seq: "1", Doc: map[string]any{}}
	s := testSpec(t, "", "", src, permanentSink{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := NewPillow(s, RunOptions{Log: quietLog()}).Run(ctx)
	if err == nil || err.Error() != "pillow test: table gone" || ctx.Err() != nil {
		t.Fatalf("Run = %v (ctx %v), want the permanent error at once", err, ctx.Err())
	}
}

type permanentSink struct{}

func (permanentSink) Open(context.Context) error { return nil }
func (permanentSink) Close() error               { return nil }
func (permanentSink) Write(context.Context, []Record) error {
	return Permanent(errors.New("table gone"))
}

func TestSequenceRewindCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	cs := []Change{doc("a"), doc("b"), doc("c"), doc("d")}
	for i, seq := range []string{"5-g1AAA", "6-g1AAB", "3-g1AAC", "4-g1AAD"} {
		cs[i].Seq = seq
	}
	src := &chanSource{in: make(chan Change, len(cs))}
	for _, c := range cs {
		src.in <- c
	}
	close(src.in)
	runToEnd(t, testSpec(t, "", "", src, &memSink{}), RunOptions{Metrics: m})
	if got := testutil.ToFloat64(m.rewinds.WithLabelValues("test")); got != 1 {
		t.Fatalf("rewinds = %v, want 1 (6 → 3)", got)
	}
}

// A change row without its document (a feed read without include_docs) is
// a failed change, not a record of null.
func TestChangeWithoutDocFails(t *testing.T) {
	sink := &memSink{}
	errs := &memErrors{}
	cps := &memCheckpoints{}
	s := testSpec(t, "", "", feed(doc("a"), Change{ID: "b", Rev: "1-b"}, Change{ID: "c", Rev: "2-c", Deleted: true}), sink)
	runToEnd(t, s, RunOptions{Errors: errs, Checkpoints: cps})
	if ids := errs.ids(); !reflect.DeepEqual(ids, []string{"b:source"}) {
		t.Fatalf("failures = %v", ids)
	}
	if e := errs.entries["b"]; e.Error != "the change has no document (the feed row has no doc)" {
		t.Fatalf("error = %q", e.Error)
	}
	var got []string
	for _, r := range sink.records() {
		got = append(got, fmt.Sprintf("%s:%v:%v", r.ID, r.Delete, r.Doc != nil))
	}
	if !reflect.DeepEqual(got, []string{"a:false:true", "c:true:false"}) {
		t.Fatalf("records = %v", got)
	}
	if cps.get() != "3" {
		t.Fatalf("checkpoint = %q, want 3", cps.get())
	}
}

// An entry is not retried again while its previous retry is still being
// processed: with a slow sink and a fast poll, it still gets exactly
// max_attempts attempts.
func TestRetriesNeverExceedMaxAttempts(t *testing.T) {
	src := &readerSource{chanSource: chanSource{in: make(chan Change, 4)}, docs: map[string]map[string]any{}}
	sink := &memSink{reject: func(r Record) error {
		if r.ID == "x" {
			time.Sleep(20 * time.Millisecond) // a slow server: many polls pass meanwhile
			return errors.New("rejected")
		}
		return nil
	}}
	errs := &memErrors{}
	s := testSpec(t, "", "", src, sink)
	s.Errors = RetryPolicy{MaxAttempts: 3, Backoff: Duration(time.Millisecond), MaxBackoff: Duration(time.Millisecond), Poll: Duration(time.Millisecond)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- NewPillow(s, RunOptions{Log: quietLog(), Errors: errs}).Run(ctx) }()
	src.set("x", map[string]any{"_id": "x"})
	c := doc("x")
	c.Seq = "1"
	src.in <- c
	waitFor(t, "the entry to be given up", func() bool {
		e, _ := errs.List(ctx, "test")
		return len(e) == 1 && e[0].NextAttempt.IsZero()
	})
	// Stopping drains whatever is still in flight: extra attempts, if
	// any were sent, are recorded before Run returns.
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := len(errs.ids()); n != 3 {
		t.Fatalf("%d attempts recorded, want max_attempts 3: %v", n, errs.ids())
	}
	if e, _ := errs.List(context.Background(), "test"); e[0].Attempts != 3 {
		t.Fatalf("entry: %+v", e[0])
	}
}

// A position (a change with only Seq: the server filtered out the rest of
// the feed) is checkpointed and nothing is processed for it, also alone
// in a batch.
func TestPositionOnlyChangeCheckpoints(t *testing.T) {
	sink := &memSink{}
	cps := &memCheckpoints{}
	errs := &memErrors{}
	c := doc("a")
	c.Seq = "1"
	s := testSpec(t, "", "", feed(c, Change{Seq: "7"}), sink)
	s.Batch.Size = 1
	p := NewPillow(s, RunOptions{Log: quietLog(), Checkpoints: cps, Errors: errs})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sink.records(); len(got) != 1 || got[0].ID != "a" {
		t.Fatalf("records = %+v", got)
	}
	if cps.get() != "7" || len(errs.ids()) != 0 || p.Stats.Seen.Load() != 1 {
		t.Fatalf("checkpoint %q, failures %v, seen %d", cps.get(), errs.ids(), p.Stats.Seen.Load())
	}
}

func (*guardSink) GuardsPositions() bool { return true }

func TestRewindStopsPositionGuardedPillow(t *testing.T) {
	changes := func() []Change {
		var cs []Change
		for i, seq := range []string{"5", "6", "7", "1", "2"} {
			c := doc(fmt.Sprintf("d%d", i))
			c.Seq = seq
			cs = append(cs, c)
		}
		return cs
	}
	// A sink that keeps records by position: the changes before the
	// rewind are written and checkpointed, then the pillow stops, and the
	// checkpoint is saved again.
	guarded := &guardSink{}
	cps := &memCheckpoints{}
	s := testSpec(t, "", "", feed(changes()...), guarded)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := NewPillow(s, RunOptions{Log: quietLog(), Checkpoints: cps}).Run(ctx)
	if err == nil || !IsPermanent(err) || !strings.Contains(err.Error(), "the feed went back from position 7 to 1") ||
		!strings.Contains(err.Error(), "run ptop reindex test") {
		t.Fatalf("Run = %v", err)
	}
	if n := len(guarded.records()); n != 3 {
		t.Errorf("%d records written, want the 3 before the rewind", n)
	}
	if got := cps.get(); got != "7" {
		t.Errorf("checkpoint %q, want 7", got)
	}
	// The rewind counts from the checkpoint too: a start from 7 that
	// reads 1 stops at once.
	s = testSpec(t, "", "", feed(changes()[3:]...), &guardSink{})
	err = NewPillow(s, RunOptions{Log: quietLog(), Checkpoints: cps}).Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "from position 7 to 1") {
		t.Fatalf("Run from the checkpoint = %v", err)
	}
	// Other sinks go on through a rewind.
	plain := &memSink{}
	runToEnd(t, testSpec(t, "", "", feed(changes()...), plain), RunOptions{})
	if n := len(plain.records()); n != 5 {
		t.Errorf("%d records written, want 5", n)
	}
}

func (*nowSource) ResolveStart(context.Context) (string, error) { return "40", nil }

func TestStartResolvedAndSaved(t *testing.T) {
	cps := &memCheckpoints{}
	src := &nowSource{chanSource{in: make(chan Change), gotSince: make(chan string, 1)}}
	close(src.in)
	runToEnd(t, testSpec(t, "", "", src, &memSink{}), RunOptions{Checkpoints: cps})
	if got := <-src.gotSince; got != "40" {
		t.Errorf("the source started from %q, want 40", got)
	}
	if got := cps.get(); got != "40" {
		t.Errorf("checkpoint %q, want the resolved start saved", got)
	}
}

// guardSink is a memSink that keeps records by feed position.
type guardSink struct{ memSink }

// nowSource resolves its start to "40".
type nowSource struct{ chanSource }

func (s *memSink) raw() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []Record
	for _, b := range s.batches {
		all = append(all, b...)
	}
	return all
}

// Without filter or transform, a document read raw passes as the feed sent
// it: numbers beyond float64 and key order intact; invalid UTF-8 becomes
// U+FFFD; a row that is not a JSON object fails its change.
func TestRunPassesRawDocumentsExactly(t *testing.T) {
	sink := &memSink{}
	errs := &memErrors{}
	raw := func(id, s string) Change { return Change{ID: id, Rev: "1-a", RawDoc: []byte(s)} }
	s := testSpec(t, "", "", feed(
		raw("big", `{"_id":"big","z":12345678901234567890123,"a":9007199254740993,"f":1.0000000000000000001}`),
		raw("utf8", "{\"_id\":\"utf8\",\"s\":\"a\xffb\",\"u\":\"\\ud800\"}"),
		raw("bad", `{"_id":"bad",`),
		raw("array", `[1]`),
	), sink)
	s.SkipDeletes = true
	runToEnd(t, s, RunOptions{Errors: errs})
	got := sink.raw()
	if len(got) != 2 {
		t.Fatalf("records = %+v", got)
	}
	for i, want := range []string{
		`{"_id":"big","z":12345678901234567890123,"a":9007199254740993,"f":1.0000000000000000001}`,
		"{\"_id\":\"utf8\",\"s\":\"a\uFFFDb\",\"u\":\"\\ud800\"}",
	} {
		if b, ok := got[i].Doc.(json.RawMessage); !ok || string(b) != want {
			t.Errorf("record %d: %T %s, want %s", i, got[i].Doc, got[i].Doc, want)
		}
	}
	if ids := errs.ids(); !reflect.DeepEqual(ids, []string{"bad:decode", "array:decode"}) {
		t.Errorf("failed: %v", ids)
	}
}

// With a filter and no transform, a kept document passes as sent too.
func TestRunFilterOnlyPassesRawDocuments(t *testing.T) {
	sink := &memSink{}
	s := testSpec(t, `doc.keep`, "", feed(
		Change{ID: "a", Rev: "1-a", RawDoc: []byte(`{"_id":"a","keep":true,"n":9007199254740993}`)},
		Change{ID: "b", Rev: "1-a", RawDoc: []byte(`{"_id":"b","keep":false}`)},
	), sink)
	s.SkipDeletes = true
	runToEnd(t, s, RunOptions{})
	got := sink.raw()
	if len(got) != 1 || string(got[0].Doc.(json.RawMessage)) != `{"_id":"a","keep":true,"n":9007199254740993}` {
		t.Fatalf("records = %+v", got)
	}
}
