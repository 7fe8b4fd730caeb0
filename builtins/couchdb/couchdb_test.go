//go:build unix

package couchdb

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// Tests against a real pouchdb-server.

func TestFeedChanges(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	revs := map[string]string{}
	for _, id := range []string{"a", "b", "c"} {
		revs[id] = couch.Put(t, "db", id, map[string]any{"name": id, "n": 1})
	}
	src := newTestSource(t, Config{URL: couch.URL, DB: "db", Heartbeat: engine.Duration(200 * time.Millisecond)})
	if !src.LastActivity().IsZero() {
		t.Errorf("LastActivity before Run: %v", src.LastActivity())
	}
	r := startRun(t, src, "")
	for i, id := range []string{"a", "b", "c"} {
		c := r.next(t)
		if c.ID != id || c.Seq != fmt.Sprint(i+1) || c.Rev != revs[id] || c.Deleted {
			t.Fatalf("change %d: %+v, want %s seq %d rev %s", i, c, id, i+1, revs[id])
		}
		d := doc(t, c)
		if d["_id"] != id || d["_rev"] != revs[id] || d["name"] != id || d["n"] != 1.0 {
			t.Errorf("change %d: doc %v", i, d)
		}
	}

	// An update is a new change with the new revision.
	rev2 := couch.Put(t, "db", "a", map[string]any{"_rev": revs["a"], "name": "a2"})
	c := r.next(t)
	if c.ID != "a" || c.Rev != rev2 || c.Seq != "4" || doc(t, c)["name"] != "a2" {
		t.Fatalf("update: %+v", c)
	}
	// A deletion.
	delRev := couch.Delete(t, "db", "b", revs["b"])
	c = r.next(t)
	if c.ID != "b" || c.Rev != delRev || !c.Deleted || c.Seq != "5" {
		t.Fatalf("deletion: %+v", c)
	}
	if d := doc(t, c); d["_deleted"] != true {
		t.Errorf("deletion doc: %v", d)
	}

	// Heartbeats keep LastActivity fresh on a quiet feed.
	time.Sleep(500 * time.Millisecond)
	if age := time.Since(src.LastActivity()); age > 400*time.Millisecond {
		t.Errorf("LastActivity is %v old with a 200ms heartbeat", age)
	}
	r.none(t, 300*time.Millisecond)
}

func TestFeedLargeDocument(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	big := strings.Repeat("0123456789abcdef", 5<<20/16) // 5 MiB
	couch.Put(t, "db", "big", map[string]any{"blob": big})
	couch.Put(t, "db", "small", map[string]any{"x": 1})
	r := startRun(t, newTestSource(t, Config{URL: couch.URL, DB: "db"}), "")
	c := r.next(t)
	if c.ID != "big" || doc(t, c)["blob"] != big {
		t.Fatalf("big document: id %s, %d bytes", c.ID, len(c.RawDoc))
	}
	if c := r.next(t); c.ID != "small" {
		t.Fatalf("after the big document: %+v", c)
	}
}

func putTyped(t *testing.T, couch *testenv.Couch, db string, docs map[string]string) {
	t.Helper()
	for _, id := range slices.Sorted(maps.Keys(docs)) {
		couch.Put(t, db, id, map[string]any{"type": docs[id]})
	}
}

func TestFeedSelector(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"a1": "a", "b1": "b", "a2": "a", "c1": "c"})
	src := newTestSource(t, Config{
		URL: couch.URL, DB: "db",
		Selector: map[string]any{"type": map[string]any{"$in": []any{"a", "c"}}},
	})
	r := startRun(t, src, "")
	for _, want := range []string{"a1", "a2", "c1"} {
		if c := r.next(t); c.ID != want || doc(t, c)["type"] == "b" {
			t.Fatalf("got %s (%s), want %s", c.ID, c.RawDoc, want)
		}
	}
	// Live changes are filtered too.
	putTyped(t, couch, "db", map[string]string{"b2": "b", "a3": "a"})
	if c := r.next(t); c.ID != "a3" {
		t.Fatalf("got %s, want a3", c.ID)
	}
	r.none(t, 300*time.Millisecond)
	if !couchAlive(t, couch) {
		t.Fatal("pouchdb-server died")
	}
}

func couchAlive(t *testing.T, couch *testenv.Couch) bool {
	status, _ := couch.Do(t, "GET", "/", nil)
	return status == 200
}

func TestFeedDesignFilter(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	couch.Put(t, "db", "_design/app", map[string]any{
		"filters": map[string]any{"by_type": "function(doc, req){ return doc.type === req.query.type; }"},
	})
	putTyped(t, couch, "db", map[string]string{"a1": "a", "b1": "b", "a2": "a", "b2": "b"})
	src := newTestSource(t, Config{URL: couch.URL, DB: "db", Filter: "app/by_type", Params: map[string]string{"type": "b"}})
	r := startRun(t, src, "")
	for _, want := range []string{"b1", "b2"} {
		if c := r.next(t); c.ID != want {
			t.Fatalf("got %s, want %s", c.ID, want)
		}
	}
	putTyped(t, couch, "db", map[string]string{"a3": "a", "b3": "b"})
	if c := r.next(t); c.ID != "b3" {
		t.Fatalf("got %s, want b3", c.ID)
	}
	r.none(t, 300*time.Millisecond)
}

func TestFeedSinceNow(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"old1": "x", "old2": "x"})
	// pouchdb-server sends the response headers with its first heartbeat.
	src := newTestSource(t, Config{URL: couch.URL, DB: "db", Since: "now", Heartbeat: engine.Duration(100 * time.Millisecond)})
	r := startRun(t, src, "")
	// Wait until the feed is open, so that "now" is before the next put.
	for deadline := time.Now().Add(10 * time.Second); src.LastActivity().IsZero(); {
		if time.Now().After(deadline) {
			t.Fatal("the feed did not open")
		}
		time.Sleep(10 * time.Millisecond)
	}
	couch.Put(t, "db", "new", nil)
	if c := r.next(t); c.ID != "new" || c.Seq != "3" {
		t.Fatalf("got %s seq %s, want new seq 3", c.ID, c.Seq)
	}
}

func TestFeedResume(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"d1": "x", "d2": "x", "d3": "x", "d4": "x"})

	// A checkpoint given to Run wins over the configured since.
	src := newTestSource(t, Config{URL: couch.URL, DB: "db", Since: "now"})
	r := startRun(t, src, "2")
	for _, want := range []string{"d3", "d4"} {
		if c := r.next(t); c.ID != want {
			t.Fatalf("got %s, want %s", c.ID, want)
		}
	}
	// The configured since when there is no checkpoint.
	src = newTestSource(t, Config{URL: couch.URL, DB: "db", Since: "3"})
	r = startRun(t, src, "")
	if c := r.next(t); c.ID != "d4" {
		t.Fatalf("got %s, want d4", c.ID)
	}
}

func TestFeedRewind(t *testing.T) {
	// A position past the database's end (the database was recreated)
	// reads it again from the beginning.
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"d1": "x", "d2": "x"})
	r := startRun(t, newTestSource(t, Config{URL: couch.URL, DB: "db"}), "50")
	for _, want := range []string{"d1", "d2"} {
		if c := r.next(t); c.ID != want {
			t.Fatalf("got %s, want %s", c.ID, want)
		}
	}
}

func TestCheckpoints(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	ctx := context.Background()
	src := newTestSource(t, Config{URL: couch.URL, DB: "db"})

	if seq, err := src.LoadCheckpoint(ctx, "p1"); err != nil || seq != "" {
		t.Fatalf("missing checkpoint: %q, %v", seq, err)
	}
	for _, seq := range []string{"3", "5", "12-g1AAAA"} {
		if err := src.SaveCheckpoint(ctx, "p1", seq); err != nil {
			t.Fatalf("save %s: %v", seq, err)
		}
	}
	if seq, err := src.LoadCheckpoint(ctx, "p1"); err != nil || seq != "12-g1AAAA" {
		t.Fatalf("load: %q, %v", seq, err)
	}
	d, ok := couch.Get(t, "db", "_local/ptop-p1")
	if !ok || d["seq"] != "12-g1AAAA" || d["pillow"] != "p1" {
		t.Fatalf("checkpoint document: %v", d)
	}
	if ts, _ := d["updated_at"].(string); ts == "" {
		t.Errorf("no updated_at: %v", d)
	} else if at, err := time.Parse(time.RFC3339, ts); err != nil || time.Since(at) > time.Minute {
		t.Errorf("updated_at %q: %v", ts, err)
	}

	// A fresh source (a restarted process) loads it, and can save over it
	// without knowing its revision beforehand.
	src2 := newTestSource(t, Config{URL: couch.URL, DB: "db"})
	if err := src2.SaveCheckpoint(ctx, "p1", "13"); err != nil {
		t.Fatalf("save from a fresh source: %v", err)
	}
	if seq, err := src2.LoadCheckpoint(ctx, "p1"); err != nil || seq != "13" {
		t.Fatalf("load from a fresh source: %q, %v", seq, err)
	}
	// The first source's revision is now stale: it recovers from the
	// conflict.
	if err := src.SaveCheckpoint(ctx, "p1", "14"); err != nil {
		t.Fatalf("save with a stale revision: %v", err)
	}
	if seq, err := newTestSource(t, Config{URL: couch.URL, DB: "db"}).LoadCheckpoint(ctx, "p1"); err != nil || seq != "14" {
		t.Fatalf("load: %q, %v", seq, err)
	}

	// Other pillows and checkpoint_id keep their own.
	if seq, err := src.LoadCheckpoint(ctx, "p2"); err != nil || seq != "" {
		t.Fatalf("p2: %q, %v", seq, err)
	}
	own := newTestSource(t, Config{URL: couch.URL, DB: "db", CheckpointID: "mine"})
	if err := own.SaveCheckpoint(ctx, "p1", "7"); err != nil {
		t.Fatal(err)
	}
	if d, ok := couch.Get(t, "db", "_local/mine"); !ok || d["seq"] != "7" {
		t.Fatalf("_local/mine: %v", d)
	}
	// Checkpoints are not changes.
	couch.Put(t, "db", "doc", nil)
	r := startRun(t, src, "")
	if c := r.next(t); c.ID != "doc" {
		t.Fatalf("got %s, want doc", c.ID)
	}
}

func TestCheckpointMissingDatabase(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	src := newTestSource(t, Config{URL: couch.URL, DB: "nope"})
	if seq, err := src.LoadCheckpoint(context.Background(), "p"); err != nil || seq != "" {
		t.Fatalf("load: %q, %v", seq, err)
	}
}

func TestFeedServerRestart(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"before1": "x", "before2": "x", "before3": "x"})
	src := newTestSource(t, Config{URL: couch.URL, DB: "db", Heartbeat: engine.Duration(500 * time.Millisecond)})
	r := startRun(t, src, "")
	for range 3 {
		r.next(t)
	}
	couch.Kill(t)
	time.Sleep(300 * time.Millisecond)
	couch.Restart(t)
	// In memory, the restarted server starts empty: its seqs restart at 1,
	// behind the feed's position, which the source notices.
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"after1": "x", "after2": "x"})
	got := map[string]bool{}
	for len(got) < 2 {
		c := r.next(t)
		if !strings.HasPrefix(c.ID, "after") {
			t.Fatalf("unexpected change %+v", c)
		}
		got[c.ID] = true
	}
}

func TestFeedServerStopped(t *testing.T) {
	// A server that goes away is waited for; Run returns only when
	// cancelled.
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	src := newTestSource(t, Config{URL: couch.URL, DB: "db"})
	r := startRun(t, src, "")
	couch.Put(t, "db", "x", nil)
	r.next(t)
	couch.Kill(t)
	r.none(t, time.Second)
	r.cancel()
	if err := r.wait(t, 5*time.Second); err != context.Canceled {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
}

func TestFeedMissingDatabase(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	src := newTestSource(t, Config{URL: couch.URL, DB: "nope"})
	r := startRun(t, src, "")
	err := r.wait(t, 5*time.Second)
	want := fmt.Sprintf(`couchdb %s/nope: database "nope" does not exist`, couch.URL)
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Run returned %v, want %s…", err, want)
	}
}

func TestPillowCheckpoints(t *testing.T) {
	// Through the engine: a pillow reading this source checkpoints into
	// the database, and starts again from there.
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"a": "x", "b": "x", "c": "x"})
	t.Setenv("TEST_COUCH_URL", couch.URL)
	path := filepath.Join(t.TempDir(), "p.yaml")
	pillow := "name: p\nsource:\n  couchdb:\n    url: ${TEST_COUCH_URL}\n    db: db\n    heartbeat: 200ms\nbatch: {size: 2, wait: 50ms}\nsinks:\n  - couchdbtest: {}\n"
	if err := os.WriteFile(path, []byte(pillow), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(wantSeq string, wantSeen int64) {
		t.Helper()
		spec, err := engine.LoadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		p := engine.NewPillow(spec, engine.RunOptions{Log: testLogger(t)})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("pillow: %v", err)
			}
		}()
		for deadline := time.Now().Add(10 * time.Second); ; {
			d, _ := couch.Get(t, "db", "_local/ptop-p")
			if d["seq"] == wantSeq && p.Stats.Seen.Load() == wantSeen {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("checkpoint %v, %d seen; want seq %s, %d seen", d, p.Stats.Seen.Load(), wantSeq, wantSeen)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	run("3", 3)
	couch.Put(t, "db", "d", nil)
	run("4", 1) // only the new change
}

// A pillow whose feed the server filters checkpoints the feed's end, not
// its last change that passed: when the last changes were filtered out,
// nothing stays pending for ever.
func TestPillowFilteredByServerReachesLastSeq(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"a1": "a", "b1": "b", "b2": "b"})
	t.Setenv("TEST_COUCH_URL", couch.URL)
	path := filepath.Join(t.TempDir(), "p.yaml")
	pillow := "name: p\nsource:\n  couchdb:\n    url: ${TEST_COUCH_URL}\n    db: db\n    heartbeat: 100ms\n    selector: {type: a}\nbatch: {size: 10, wait: 20ms}\nsinks:\n  - couchdbtest: {}\n"
	if err := os.WriteFile(path, []byte(pillow), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := engine.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := engine.NewPillow(spec, engine.RunOptions{Log: testLogger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("pillow: %v", err)
		}
	}()
	reach := func(seq string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; {
			d, _ := couch.Get(t, "db", "_local/ptop-p")
			if d["seq"] == seq {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("checkpoint %v, want seq %s", d, seq)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if n, err := spec.Src().(engine.PendingCounter).Pending(ctx, seq); err != nil || n != 0 {
			t.Fatalf("pending %d, %v; want 0", n, err)
		}
	}
	reach("3")
	if n := p.Stats.Seen.Load(); n != 1 {
		t.Fatalf("%d changes seen, want only a1", n)
	}
	// Live: a change filtered out after one that passed.
	putTyped(t, couch, "db", map[string]string{"a2": "a"})
	putTyped(t, couch, "db", map[string]string{"b3": "b"})
	reach("5")
	if n := p.Stats.Seen.Load(); n != 2 {
		t.Fatalf("%d changes seen, want a1 and a2", n)
	}
}

func TestPillowSinceNowSavesStart(t *testing.T) {
	// since: now is resolved and saved as the checkpoint when the pillow
	// starts: changes made while it is stopped, before any change passed,
	// are read on the next start.
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"old1": "x", "old2": "x"})
	t.Setenv("TEST_COUCH_URL", couch.URL)
	path := filepath.Join(t.TempDir(), "p.yaml")
	pillow := "name: p\nsource:\n  couchdb:\n    url: ${TEST_COUCH_URL}\n    db: db\n    since: now\n    heartbeat: 200ms\nbatch: {size: 100, wait: 50ms}\nsinks:\n  - couchdbtest: {}\n"
	if err := os.WriteFile(path, []byte(pillow), 0o644); err != nil {
		t.Fatal(err)
	}
	start := func() (*engine.Pillow, func()) {
		spec, err := engine.LoadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		p := engine.NewPillow(spec, engine.RunOptions{Log: testLogger(t)})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		return p, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("pillow: %v", err)
			}
		}
	}
	waitSeq := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; {
			if d, _ := couch.Get(t, "db", "_local/ptop-p"); d["seq"] == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no checkpoint %s", want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	p, stop := start()
	waitSeq("2") // saved before anything was read
	stop()
	if n := p.Stats.Seen.Load(); n != 0 {
		t.Fatalf("%d changes seen before now", n)
	}
	var docs []map[string]any
	for i := range 10 {
		docs = append(docs, map[string]any{"_id": fmt.Sprintf("new%d", i)})
	}
	couch.BulkDocs(t, "db", docs)
	p, stop = start()
	defer stop()
	waitSeq("12")
	if n := p.Stats.Seen.Load(); n != 10 {
		t.Fatalf("%d changes seen, want the 10 made while stopped", n)
	}
}
