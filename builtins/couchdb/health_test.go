package couchdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// waitFeedError waits until the source's FeedError contains want.
func waitFeedError(t *testing.T, src *Source, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		since, err := src.FeedError()
		if err != nil && strings.Contains(err.Error(), want) {
			if since.IsZero() {
				t.Fatalf("FeedError %v without the time it began", err)
			}
			if strings.Contains(err.Error(), "feed silent") {
				t.Fatalf("FeedError %q", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("FeedError is %v, want it to contain %q", err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFeedUnreachable: a server that refuses connections is "cannot reach
// HOST", and the feed delivers again, nothing lost, once it answers.
func TestFeedUnreachable(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	proxy := testenv.StartFaultProxy(t, fmt.Sprintf("127.0.0.1:%d", couch.Port))
	src := newTestSource(t, Config{URL: proxy.URL, DB: "db", Heartbeat: engine.Duration(200 * time.Millisecond)})
	proxy.Set(t, testenv.Refuse)
	r := startRun(t, src, "")
	waitFeedError(t, src, "cannot reach "+proxy.Addr+": ")
	couch.Put(t, "db", "a", nil)
	proxy.Set(t, testenv.Pass)
	if c := r.next(t); c.ID != "a" {
		t.Fatalf("got %+v, want a", c)
	}
	if _, err := src.FeedError(); err != nil {
		t.Fatalf("FeedError is %v once the feed delivers", err)
	}
}

// TestFeedStalledAfterHeaders: a feed that connects but never sends a
// row or a heartbeat is failing, and does not count as activity.
func TestFeedStalledAfterHeaders(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	proxy := testenv.StartFaultProxy(t, fmt.Sprintf("127.0.0.1:%d", couch.Port))
	src := newTestSource(t, Config{URL: proxy.URL, DB: "db", Heartbeat: engine.Duration(100 * time.Millisecond)})
	proxy.Set(t, testenv.StallAfterHeaders)
	r := startRun(t, src, "")
	waitFeedError(t, src, "no data from the server")
	for proxy.Changes() < 3 {
		time.Sleep(20 * time.Millisecond) // it keeps reconnecting
	}
	if !src.LastActivity().IsZero() {
		t.Fatalf("LastActivity %v: connecting counted as activity", src.LastActivity())
	}
	couch.Put(t, "db", "a", nil)
	proxy.Set(t, testenv.Pass)
	if c := r.next(t); c.ID != "a" {
		t.Fatalf("got %+v, want a", c)
	}
}

// TestFeedCutMidRow: responses cut in the middle of a row are reconnected
// and resumed: every change arrives once, none as an unreadable row.
func TestFeedCutMidRow(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	proxy := testenv.StartFaultProxy(t, fmt.Sprintf("127.0.0.1:%d", couch.Port))
	src := newTestSource(t, Config{URL: proxy.URL, DB: "db", Heartbeat: engine.Duration(200 * time.Millisecond)})
	proxy.Set(t, testenv.CutMidRow)
	for i := range 5 {
		couch.Put(t, "db", fmt.Sprintf("d%d", i), nil)
	}
	r := startRun(t, src, "")
	for proxy.Cuts() < 3 {
		time.Sleep(20 * time.Millisecond)
	}
	proxy.Set(t, testenv.Pass)
	seen := map[string]int{}
	for range 5 {
		c := r.next(t)
		if c.Err != nil {
			t.Fatalf("a cut row came out as a change: %+v", c)
		}
		seen[c.ID]++
	}
	for i := range 5 {
		if id := fmt.Sprintf("d%d", i); seen[id] != 1 {
			t.Errorf("%s seen %d times", id, seen[id])
		}
	}
	r.none(t, 300*time.Millisecond)
}

// TestFakeResponseEndsMidRow: a response that ends cleanly inside a row
// is a reconnect from the last whole row, not a failed change.
func TestFakeResponseEndsMidRow(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			fmt.Fprint(w, `{"seq":1,"id":"a","changes":[{"rev":"1-a"}],"doc":{"_id":"a"}}`+"\n"+`{"seq":2,"id":"b","chan`)
			return
		}
		if got := r.URL.Query().Get("since"); got != "1" {
			t.Errorf("reconnected since %q, want 1", got)
		}
		fmt.Fprint(w, `{"seq":2,"id":"b","changes":[{"rev":"1-b"}],"doc":{"_id":"b"}}`+"\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	f.updateSeq = "2"
	src := newTestSource(t, Config{URL: f.url(""), DB: "db"})
	r := startRun(t, src, "")
	for _, want := range []string{"a", "b"} {
		if c := r.next(t); c.ID != want || c.Err != nil {
			t.Fatalf("got %+v, want %s", c, want)
		}
	}
}

// TestLeaseStore: leases are documents of the errors database, created
// with it, compare-and-swapped by _rev; the error store does not list them.
func TestLeaseStore(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	src := newTestSource(t, Config{URL: couch.URL, DB: "db"})
	ctx := t.Context()
	if l, err := src.ReadLease(ctx, "p"); err != nil || l != (engine.Lease{}) {
		t.Fatalf("unwritten lease: %+v, %v", l, err)
	}
	at := time.Now().UTC()
	a := engine.Lease{Holder: "a:1:x", TTL: 3 * time.Second, Renewed: at, Space: "h/ns"}
	v1, err := src.WriteLease(ctx, "p", "", a) // creates ptop_errors
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.WriteLease(ctx, "p", "", engine.Lease{Holder: "b:2:y"}); !errors.Is(err, engine.ErrLeaseConflict) {
		t.Fatalf("second first write: %v", err)
	}
	got, err := src.ReadLease(ctx, "p")
	if err != nil || got.Holder != a.Holder || got.TTL != a.TTL || !got.Renewed.Equal(at) || got.Space != a.Space || got.Version != v1 {
		t.Fatalf("read %+v, %v; wrote %+v version %s", got, err, a, v1)
	}
	v2, err := src.WriteLease(ctx, "p", v1, a)
	if err != nil || v2 == v1 {
		t.Fatalf("renewal: %q, %v", v2, err)
	}
	if _, err := src.WriteLease(ctx, "p", v1, engine.Lease{Holder: "b:2:y"}); !errors.Is(err, engine.ErrLeaseConflict) {
		t.Fatalf("write with a stale version: %v", err)
	}
	if _, ok := couch.Get(t, DefaultErrorsDB, "~lease:db:p"); !ok {
		t.Fatal("no lease document ~lease:db:p")
	}
	es, _ := src.ErrorStore()
	if entries, err := es.List(ctx, ""); err != nil || len(entries) != 0 {
		t.Fatalf("the error store lists %v, %v", entries, err)
	}
	if n, err := es.Purge(ctx, "", nil); err != nil || n != 0 {
		t.Fatalf("purge removed %d, %v", n, err)
	}
}

// TestFeedMissingFilter: a design-document filter that does not exist is
// named as such, not as a missing database.
func TestFeedMissingFilter(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	for _, ddoc := range []map[string]any{nil, {"filters": map[string]any{"other": "function(doc){ return true; }"}}} {
		if ddoc != nil {
			couch.Put(t, "db", "_design/app", ddoc)
		}
		src := newTestSource(t, Config{URL: couch.URL, DB: "db", Filter: "app/nope"})
		r := startRun(t, src, "")
		err := r.wait(t, 10*time.Second)
		want := fmt.Sprintf(`couchdb %s/db: filter "app/nope" does not exist: no design document "_design/app" with a function "nope" in its "filters": `, couch.URL)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("design doc %v: Run returned %v, want %s…", ddoc, err, want)
		}
	}
}

// TestCheckpointNotASequence: a checkpoint document whose seq is not a
// sequence id, of whatever JSON type, is one clear permanent error.
func TestCheckpointNotASequence(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	src := newTestSource(t, Config{URL: couch.URL, DB: "db"})
	for _, bad := range []any{map[string]any{"a": 1}, "garbage", []any{1, "x"}, true} {
		couch.Do(t, http.MethodDelete, "/db/_local/ptop-p", nil)
		couch.Put(t, "db", "_local/ptop-p", map[string]any{"seq": bad})
		raw, _ := json.Marshal(bad)
		_, err := src.LoadCheckpoint(t.Context(), "p")
		want := fmt.Sprintf("couchdb %s/db: checkpoint _local/ptop-p holds seq %s, which is not a sequence id: delete the document", couch.URL, clip(raw))
		if err == nil || !engine.IsPermanent(err) || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("seq %s: %v (permanent %v), want %s…", raw, err, engine.IsPermanent(err), want)
		}
	}
}

// TestRecreatedDatabaseOneRewind: a database created again behind a
// running pillow is read again from its beginning, and counts as
// one rewind.
func TestRecreatedDatabaseOneRewind(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"a": "x", "b": "x", "c": "x", "d": "x", "e": "x"})
	t.Setenv("TEST_COUCH_URL", couch.URL)
	path := filepath.Join(t.TempDir(), "p.yaml")
	pillow := "name: p\nsource:\n  couchdb:\n    url: ${TEST_COUCH_URL}\n    db: db\n    heartbeat: 200ms\nbatch: {size: 2, wait: 20ms}\nsinks:\n  - couchdbtest: {}\n"
	if err := os.WriteFile(path, []byte(pillow), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := engine.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	p := engine.NewPillow(spec, engine.RunOptions{Log: testLogger(t), Metrics: engine.NewMetrics(reg)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	waitSeen := func(n int64) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); p.Stats.Seen.Load() < n; {
			if time.Now().After(deadline) {
				t.Fatalf("%d seen, want %d", p.Stats.Seen.Load(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitSeen(5)
	// The in-memory server restarts empty: the database is new. (A
	// DELETE and PUT of the database under pouchdb-server leaves a
	// running feed on the old one.)
	couch.Kill(t)
	couch.Restart(t)
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"f": "x", "g": "x"})
	waitSeen(7)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	rewinds := -1.0
	for _, mf := range mfs {
		if mf.GetName() == "ptop_sequence_rewinds_total" {
			rewinds = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if rewinds != 1 {
		t.Fatalf("rewinds = %v, want 1", rewinds)
	}
}
