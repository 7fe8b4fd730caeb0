//go:build unix

package couchdb

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// Tests of the error store and ReadDoc against a real pouchdb-server.

func newStore(t *testing.T, couch *testenv.Couch, errorsDB string) (*Source, engine.ErrorStore) {
	t.Helper()
	src := newTestSource(t, Config{URL: couch.URL, DB: "db", ErrorsDB: errorsDB})
	es, err := src.ErrorStore()
	if err != nil {
		t.Fatal(err)
	}
	return src, es
}

func failure(pillow, id string, at time.Time) engine.Failure {
	return engine.Failure{
		Pillow: pillow, Hash: "h1", Stage: "transform", Err: errors.New("boom " + id), Time: at,
		Change: engine.Change{ID: id, Seq: "7", Rev: "1-abc"},
	}
}

func backoff(attempts int) time.Duration { return time.Duration(attempts) * time.Minute }

func record(t *testing.T, es engine.ErrorStore, f engine.Failure) engine.ErrorEntry {
	t.Helper()
	e, err := es.Record(context.Background(), f, backoff)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func list(t *testing.T, es engine.ErrorStore, pillow string) []engine.ErrorEntry {
	t.Helper()
	es2, err := es.List(context.Background(), pillow)
	if err != nil {
		t.Fatal(err)
	}
	return es2
}

// keys lists entries as "pillow:docid".
func keys(es []engine.ErrorEntry) []string {
	ks := []string{}
	for _, e := range es {
		ks = append(ks, e.Pillow+":"+e.DocID)
	}
	return ks
}

func sameTime(a, b time.Time) bool { return a.Equal(b) && a.IsZero() == b.IsZero() }

func TestErrorStoreRecord(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	_, es := newStore(t, couch, "")
	ctx := context.Background()

	// No database yet: no entries, and List does not create it.
	if got := list(t, es, "p"); len(got) != 0 {
		t.Fatalf("entries before any failure: %+v", got)
	}
	if status, _ := couch.Do(t, "GET", "/ptop_errors", nil); status != 404 {
		t.Fatalf("GET /ptop_errors before any failure: HTTP %d, want 404", status)
	}

	// A new entry, in a database created for it.
	t1 := time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.FixedZone("X", 3600))
	e := record(t, es, failure("p", "doc1", t1))
	want := engine.ErrorEntry{
		Pillow: "p", DocID: "doc1", Seq: "7", Rev: "1-abc", Hash: "h1", Stage: "transform",
		Error: "boom doc1", Attempts: 1, FirstFailed: t1, LastFailed: t1, NextAttempt: t1.Add(time.Minute),
	}
	checkEntry(t, "first record", e, want)
	got := list(t, es, "p")
	if len(got) != 1 {
		t.Fatalf("List: %+v", got)
	}
	checkEntry(t, "first record, listed", got[0], want)

	// The document as stored.
	doc, ok := couch.Get(t, "ptop_errors", "p:doc1")
	if !ok {
		t.Fatal("no document p:doc1 in ptop_errors")
	}
	for k, v := range map[string]any{
		"pillow": "p", "doc_id": "doc1", "seq": "7", "rev": "1-abc", "hash": "h1", "stage": "transform",
		"error": "boom doc1", "attempts": 1.0,
		"first_failed": "2025-01-02T02:04:05.123456789Z", "last_failed": "2025-01-02T02:04:05.123456789Z",
		"next_attempt": "2025-01-02T02:05:05.123456789Z",
	} {
		if doc[k] != v {
			t.Errorf("stored %s = %#v, want %#v", k, doc[k], v)
		}
	}

	// Another attempt: first_failed stays, the rest is the new failure's.
	t2 := t1.Add(time.Hour)
	f := failure("p", "doc1", t2)
	f.Change.Seq, f.Change.Rev, f.Hash, f.Stage, f.Err = "9", "2-def", "h2", "sink:es", errors.New("rejected")
	e = record(t, es, f)
	want = engine.ErrorEntry{
		Pillow: "p", DocID: "doc1", Seq: "9", Rev: "2-def", Hash: "h2", Stage: "sink:es",
		Error: "rejected", Attempts: 2, FirstFailed: t1, LastFailed: t2, NextAttempt: t2.Add(2 * time.Minute),
	}
	checkEntry(t, "second record", e, want)
	checkEntry(t, "second record, listed", list(t, es, "p")[0], want)

	// Given up: next returns 0.
	t3 := t2.Add(time.Hour)
	e, err := es.Record(ctx, failure("p", "doc1", t3), func(n int) time.Duration {
		if n != 3 {
			t.Errorf("next(%d), want next(3)", n)
		}
		return 0
	})
	if err != nil {
		t.Fatal(err)
	}
	if e.Attempts != 3 || !e.NextAttempt.IsZero() || !e.FirstFailed.Equal(t1) || !e.LastFailed.Equal(t3) {
		t.Errorf("given up: %+v", e)
	}
	got = list(t, es, "p")
	if !got[0].NextAttempt.IsZero() || got[0].Attempts != 3 {
		t.Errorf("given up, listed: %+v", got[0])
	}
	if doc, _ := couch.Get(t, "ptop_errors", "p:doc1"); doc["next_attempt"] != nil {
		t.Errorf("given up: stored next_attempt %#v, want null", doc["next_attempt"])
	}
	// A negative wait gives up too.
	if e, _ := es.Record(ctx, failure("p", "doc2", t3), func(int) time.Duration { return -time.Second }); !e.NextAttempt.IsZero() {
		t.Errorf("negative wait: next attempt %v", e.NextAttempt)
	}
}

func checkEntry(t *testing.T, what string, got, want engine.ErrorEntry) {
	t.Helper()
	times := [][2]time.Time{{got.FirstFailed, want.FirstFailed}, {got.LastFailed, want.LastFailed}, {got.NextAttempt, want.NextAttempt}}
	for _, tt := range times {
		if !sameTime(tt[0], tt[1]) {
			t.Errorf("%s: times %v %v %v, want %v %v %v", what,
				got.FirstFailed, got.LastFailed, got.NextAttempt, want.FirstFailed, want.LastFailed, want.NextAttempt)
			break
		}
	}
	got.FirstFailed, got.LastFailed, got.NextAttempt = time.Time{}, time.Time{}, time.Time{}
	want.FirstFailed, want.LastFailed, want.NextAttempt = time.Time{}, time.Time{}, time.Time{}
	if got != want {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func TestErrorStoreExistingDatabase(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "errs")
	couch.Put(t, "errs", "unrelated", map[string]any{"x": 1})
	couch.Put(t, "errs", "_design/app", map[string]any{"views": map[string]any{}})
	_, es := newStore(t, couch, "errs")
	record(t, es, failure("p", "a", time.Now()))
	if got := keys(list(t, es, "")); !reflect.DeepEqual(got, []string{"p:a"}) {
		t.Errorf("List: %v", got)
	}
	// Purging everything leaves documents that are not entries alone.
	if n, err := es.Purge(context.Background(), "", nil); err != nil || n != 1 {
		t.Errorf("Purge all: %d, %v", n, err)
	}
	for _, id := range []string{"unrelated", "_design/app"} {
		if _, ok := couch.Get(t, "errs", id); !ok {
			t.Errorf("%s was purged", id)
		}
	}
}

func TestErrorStoreList(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	_, es := newStore(t, couch, "")
	now := time.Now()
	// "a1:…" sorts before "a:…" by id; List sorts by pillow.
	for _, k := range [][2]string{{"b", "z"}, {"a1", "x"}, {"a", "y"}, {"a", "b"}, {"a.b", "c"}, {"b", "a"}} {
		record(t, es, failure(k[0], k[1], now))
	}
	for pillow, want := range map[string][]string{
		"":    {"a:b", "a:y", "a.b:c", "a1:x", "b:a", "b:z"},
		"a":   {"a:b", "a:y"},
		"a1":  {"a1:x"},
		"b":   {"b:a", "b:z"},
		"c":   {},
		"a.b": {"a.b:c"},
	} {
		if got := keys(list(t, es, pillow)); !reflect.DeepEqual(got, want) {
			t.Errorf("List(%q) = %v, want %v", pillow, got, want)
		}
	}

	// Another database of the same server that does not exist.
	_, missing := newStore(t, couch, "nothing_here")
	got, err := missing.List(context.Background(), "")
	if err != nil || len(got) != 0 {
		t.Errorf("List of a missing database: %v, %v", got, err)
	}
	if n, err := missing.Retry(context.Background(), "a", nil); err != nil || n != 0 {
		t.Errorf("Retry on a missing database: %d, %v", n, err)
	}
	if n, err := missing.Retry(context.Background(), "a", []string{"b"}); err != nil || n != 0 {
		t.Errorf("Retry by id on a missing database: %d, %v", n, err)
	}
	if n, err := missing.Purge(context.Background(), "", nil); err != nil || n != 0 {
		t.Errorf("Purge on a missing database: %d, %v", n, err)
	}
	if err := missing.Clear(context.Background(), "a", "b"); err != nil {
		t.Errorf("Clear on a missing database: %v", err)
	}
}

func TestErrorStoreListPages(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	_, es := newStore(t, couch, "")
	// More entries than a page, with some of another pillow around.
	n := pageSize + pageSize/2
	docs := make([]map[string]any, 0, n+2)
	for i := range n {
		docs = append(docs, map[string]any{"_id": fmt.Sprintf("p:%05d", i), "pillow": "p", "doc_id": fmt.Sprintf("%05d", i), "attempts": 1})
	}
	docs = append(docs, map[string]any{"_id": "o:1", "pillow": "o", "doc_id": "1"}, map[string]any{"_id": "q:1", "pillow": "q", "doc_id": "1"})
	couch.CreateDB(t, "ptop_errors")
	couch.BulkDocs(t, "ptop_errors", docs)
	if got := list(t, es, "p"); len(got) != n || got[0].DocID != "00000" || got[n-1].DocID != fmt.Sprintf("%05d", n-1) {
		t.Fatalf("List: %d entries", len(got))
	}
	if got := list(t, es, ""); len(got) != n+2 {
		t.Fatalf("List all: %d entries", len(got))
	}
	if c, err := es.Retry(context.Background(), "p", nil); err != nil || c != n {
		t.Fatalf("Retry: %d, %v", c, err)
	}
	if c, err := es.Purge(context.Background(), "p", nil); err != nil || c != n {
		t.Fatalf("Purge: %d, %v", c, err)
	}
	if got := keys(list(t, es, "")); !reflect.DeepEqual(got, []string{"o:1", "q:1"}) {
		t.Fatalf("after Purge: %v", got)
	}
}

func TestErrorStoreClear(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	_, es := newStore(t, couch, "")
	ctx := context.Background()
	now := time.Now()
	record(t, es, failure("p", "a", now))
	record(t, es, failure("p", "b", now))
	record(t, es, failure("q", "a", now))
	if err := es.Clear(ctx, "p", "a"); err != nil {
		t.Fatal(err)
	}
	if got := keys(list(t, es, "")); !reflect.DeepEqual(got, []string{"p:b", "q:a"}) {
		t.Errorf("after Clear: %v", got)
	}
	// Nothing to clear.
	if err := es.Clear(ctx, "p", "a"); err != nil {
		t.Errorf("Clear again: %v", err)
	}
	// A cleared document fails again: a new entry, attempts from 1.
	if e := record(t, es, failure("p", "a", now)); e.Attempts != 1 {
		t.Errorf("after Clear, attempts %d", e.Attempts)
	}
}

func TestErrorStoreRetry(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	_, es := newStore(t, couch, "")
	ctx := context.Background()
	now := time.Now()
	later := func(int) time.Duration { return time.Hour }
	never := func(int) time.Duration { return 0 }
	for _, k := range []struct {
		pillow, id string
		next       func(int) time.Duration
	}{{"p", "a", later}, {"p", "b", never}, {"p", "c", later}, {"q", "a", later}} {
		if _, err := es.Record(ctx, failure(k.pillow, k.id, now), k.next); err != nil {
			t.Fatal(err)
		}
	}
	due := func(pillow string) []string {
		var ids []string
		for _, e := range list(t, es, pillow) {
			if !e.NextAttempt.IsZero() && !e.NextAttempt.After(time.Now()) {
				ids = append(ids, e.DocID)
			}
		}
		return ids
	}
	if d := due(""); len(d) != 0 {
		t.Fatalf("due before Retry: %v", d)
	}

	// By id, a given-up entry too; unknown ids are no entries.
	n, err := es.Retry(ctx, "p", []string{"b", "c", "nope", "b"})
	if err != nil || n != 2 {
		t.Fatalf("Retry by id: %d, %v", n, err)
	}
	if d := due("p"); !reflect.DeepEqual(d, []string{"b", "c"}) {
		t.Errorf("due after Retry by id: %v", d)
	}
	e := list(t, es, "p")[1]
	if e.Attempts != 1 || e.Error != "boom b" || e.Stage != "transform" {
		t.Errorf("Retry changed more than next_attempt: %+v", e)
	}

	// All of a pillow's.
	n, err = es.Retry(ctx, "p", nil)
	if err != nil || n != 3 {
		t.Fatalf("Retry all of p: %d, %v", n, err)
	}
	if d := due("p"); !reflect.DeepEqual(d, []string{"a", "b", "c"}) {
		t.Errorf("due after Retry all: %v", d)
	}
	if d := due("q"); len(d) != 0 {
		t.Errorf("another pillow's entries retried: %v", d)
	}

	// Every pillow's.
	if n, err := es.Retry(ctx, "", nil); err != nil || n != 4 {
		t.Fatalf("Retry all: %d, %v", n, err)
	}
	if d := due("q"); !reflect.DeepEqual(d, []string{"a"}) {
		t.Errorf("due after Retry of every pillow: %v", d)
	}
	// A failure after a retry counts on.
	if e := record(t, es, failure("p", "b", time.Now())); e.Attempts != 2 || e.NextAttempt.IsZero() {
		t.Errorf("after Retry: %+v", e)
	}
}

func TestErrorStorePurge(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	_, es := newStore(t, couch, "")
	ctx := context.Background()
	now := time.Now()
	for _, k := range [][2]string{{"p", "a"}, {"p", "b"}, {"p", "c"}, {"q", "a"}, {"q", "b"}, {"r", "a"}} {
		record(t, es, failure(k[0], k[1], now))
	}
	check := func(what string, n int, err error, wantN int, want ...string) {
		t.Helper()
		if err != nil || n != wantN {
			t.Fatalf("%s: %d, %v; want %d", what, n, err, wantN)
		}
		if got := keys(list(t, es, "")); !slices.Equal(got, want) {
			t.Errorf("%s: left %v, want %v", what, got, want)
		}
	}
	n, err := es.Purge(ctx, "p", []string{"a", "c", "nope"})
	check("Purge by ids", n, err, 2, "p:b", "q:a", "q:b", "r:a")
	n, err = es.Purge(ctx, "q", nil)
	check("Purge of a pillow", n, err, 2, "p:b", "r:a")
	n, err = es.Purge(ctx, "q", nil)
	check("Purge of a pillow again", n, err, 0, "p:b", "r:a")
	n, err = es.Purge(ctx, "", nil)
	check("Purge all", n, err, 2)
	// A purged document that fails again starts over.
	if e := record(t, es, failure("p", "b", now)); e.Attempts != 1 {
		t.Errorf("after Purge: attempts %d", e.Attempts)
	}
}

func TestErrorStoreOddIDs(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	_, es := newStore(t, couch, "")
	ctx := context.Background()
	ids := []string{"a/b", "ünï cødé ☃ 😀", "x?y#z%20+&=", "_design/app"}
	for _, id := range ids {
		record(t, es, failure("p", id, time.Now()))
		if e := record(t, es, failure("p", id, time.Now())); e.Attempts != 2 {
			t.Errorf("%q: attempts %d, want 2", id, e.Attempts)
		}
	}
	got := list(t, es, "p")
	if len(got) != len(ids) {
		t.Fatalf("List: %v", keys(got))
	}
	for _, e := range got {
		if e.Attempts != 2 || e.Error != "boom "+e.DocID {
			t.Errorf("entry %+v", e)
		}
	}
	if _, ok := couch.Get(t, "ptop_errors", "p:a/b"); !ok {
		t.Errorf("no document p:a/b")
	}
	if n, err := es.Retry(ctx, "p", ids[:2]); err != nil || n != 2 {
		t.Errorf("Retry: %d, %v", n, err)
	}
	if err := es.Clear(ctx, "p", ids[1]); err != nil {
		t.Fatal(err)
	}
	if n, err := es.Purge(ctx, "p", ids[:1]); err != nil || n != 1 {
		t.Errorf("Purge: %d, %v", n, err)
	}
	if got := keys(list(t, es, "p")); !reflect.DeepEqual(got, []string{"p:_design/app", "p:x?y#z%20+&="}) {
		t.Errorf("left %q", got)
	}
}

func TestErrorStoreConcurrentRecords(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	_, es := newStore(t, couch, "")
	// Writers racing for the same entry (and to create the database)
	// conflict; each tries again and every attempt is counted.
	const writers = 4
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Go(func() {
			_, err := es.Record(context.Background(), failure("p", "a", time.Now()), backoff)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := list(t, es, "p"); len(got) != 1 || got[0].Attempts != writers {
		t.Errorf("entries %+v, want one with %d attempts", got, writers)
	}
}

func TestErrorStoreLongError(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	_, es := newStore(t, couch, "")
	f := failure("p", "a", time.Now())
	msg := make([]byte, 0, 200<<10)
	for len(msg) < 200<<10 {
		msg = append(msg, "é…"...)
	}
	f.Err = errors.New(string(msg))
	e := record(t, es, f)
	if len(e.Error) > maxErrorBytes+100 || len(e.Error) < maxErrorBytes-10 {
		t.Errorf("error of %d bytes kept as %d", len(msg), len(e.Error))
	}
	if got := list(t, es, "p"); got[0].Error != e.Error {
		t.Errorf("listed error differs")
	}
}

func TestReadDoc(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	src := newTestSource(t, Config{URL: couch.URL, DB: "db"})
	ctx := context.Background()

	read := func(id string) engine.Change {
		t.Helper()
		c, err := src.ReadDoc(ctx, id)
		if err != nil {
			t.Fatalf("ReadDoc(%q): %v", id, err)
		}
		if c.ID != id || c.Seq != "" || c.Err != nil {
			t.Errorf("ReadDoc(%q): %+v", id, c)
		}
		return c
	}

	// A live document.
	rev := couch.Put(t, "db", "live", map[string]any{"n": 1})
	c := read("live")
	if c.Rev != rev || c.Deleted || doc(t, c)["n"] != 1.0 || doc(t, c)["_id"] != "live" {
		t.Errorf("live: %+v %s", c, c.RawDoc)
	}

	// Updated: the latest revision.
	rev2 := couch.Put(t, "db", "live", map[string]any{"_rev": rev, "n": 2})
	if c := read("live"); c.Rev != rev2 || doc(t, c)["n"] != 2.0 {
		t.Errorf("updated: %+v %s", c, c.RawDoc)
	}

	// Deleted: the tombstone's revision.
	rev = couch.Put(t, "db", "gone", map[string]any{"n": 1})
	del := couch.Delete(t, "db", "gone", rev)
	c = read("gone")
	if g, _ := splitRev(c.Rev); c.Rev != del || g != 2 || !c.Deleted || c.RawDoc != nil || c.Doc != nil {
		t.Errorf("deleted: %+v, want rev %s", c, del)
	}

	// Deleted after several updates.
	rev = couch.Put(t, "db", "gone3", nil)
	rev = couch.Put(t, "db", "gone3", map[string]any{"_rev": rev})
	rev = couch.Put(t, "db", "gone3", map[string]any{"_rev": rev})
	del = couch.Delete(t, "db", "gone3", rev)
	if c := read("gone3"); c.Rev != del || !c.Deleted {
		t.Errorf("deleted at generation 4: %+v, want rev %s", c, del)
	}

	// Deleted, then written again.
	rev = couch.Put(t, "db", "back", map[string]any{"v": 1})
	couch.Delete(t, "db", "back", rev)
	rev = couch.Put(t, "db", "back", map[string]any{"v": 2})
	if c := read("back"); c.Rev != rev || c.Deleted || doc(t, c)["v"] != 2.0 {
		t.Errorf("recreated: %+v", c)
	}

	// Never written.
	if c := read("never"); !c.Deleted || c.Rev != "" || c.RawDoc != nil {
		t.Errorf("never written: %+v", c)
	}

	// A design document, live and deleted.
	rev = couch.Put(t, "db", "_design/app", map[string]any{"views": map[string]any{}})
	if c := read("_design/app"); c.Rev != rev || c.Deleted || doc(t, c)["_id"] != "_design/app" {
		t.Errorf("design doc: %+v", c)
	}
	del = couch.Delete(t, "db", "_design/app", rev)
	if c := read("_design/app"); c.Rev != del || !c.Deleted {
		t.Errorf("deleted design doc: %+v", c)
	}

	// Ids that need escaping.
	for _, id := range []string{"a/b", "ünï cødé ☃ 😀", "x?y#z%20+&="} {
		rev := couch.Put(t, "db", id, map[string]any{"id": id})
		if c := read(id); c.Rev != rev || doc(t, c)["id"] != id {
			t.Errorf("%q: %+v", id, c)
		}
		del := couch.Delete(t, "db", id, rev)
		if c := read(id); c.Rev != del || !c.Deleted {
			t.Errorf("%q deleted: %+v", id, c)
		}
	}

	// No id, no database.
	if _, err := src.ReadDoc(ctx, ""); err == nil {
		t.Error("ReadDoc of an empty id: no error")
	}
	missing := newTestSource(t, Config{URL: couch.URL, DB: "missing"})
	if c, err := missing.ReadDoc(ctx, "x"); err == nil || engine.IsPermanent(err) {
		t.Errorf("ReadDoc in a missing database: %+v, %v", c, err)
	} else {
		t.Log(err)
	}
}

// TestReadDocOpenRevs checks what pouchdb-server answers to open_revs=all,
// which ReadDoc relies on.
func TestReadDocOpenRevs(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	rev := couch.Put(t, "db", "d", map[string]any{"x": 1})
	del := couch.Delete(t, "db", "d", rev)
	status, body := couch.Do(t, "GET", "/db/d?open_revs=all", nil)
	want := fmt.Sprintf(`[{"ok":{"_id":"d","_rev":%q,"_deleted":true}}]`, del)
	if status != 200 || strings.TrimSpace(string(body)) != want {
		t.Errorf("deleted: HTTP %d %s, want 200 %s", status, body, want)
	}
	status, body = couch.Do(t, "GET", "/db/never?open_revs=all", nil)
	if status != 404 {
		t.Errorf("never written: HTTP %d %s, want 404", status, body)
	}
	status, body = couch.Do(t, "GET", "/db/"+url.PathEscape("a/b")+"?open_revs=all", nil)
	if status != 404 {
		t.Errorf("never written a/b: HTTP %d %s, want 404", status, body)
	}
}

func TestPillowErrorStore(t *testing.T) {
	// Through the engine: a change whose transform throws is recorded in
	// the error store, retried from a fresh read of the document until the
	// pillow gives up, and cleared once a new revision goes through.
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	couch.Put(t, "db", "good", map[string]any{"bad": false})
	rev := couch.Put(t, "db", "bad/1", map[string]any{"bad": true})
	t.Setenv("TEST_COUCH_URL", couch.URL)
	path := filepath.Join(t.TempDir(), "p.yaml")
	pillow := `name: p
source:
  couchdb:
    url: ${TEST_COUCH_URL}
    db: db
    heartbeat: 200ms
    errors_db: errs
batch: {size: 2, wait: 50ms}
errors: {max_attempts: 3, backoff: 100ms, max_backoff: 100ms, poll: 100ms}
transform: |
  function transform(doc) {
    if (doc.bad) throw new Error("bad document");
    return doc;
  }
sinks:
  - couchdbtest: {}
`
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
	waitDoc := func(what string, ok func(map[string]any, bool) bool) map[string]any {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; {
			d, found := couch.Get(t, "errs", "p:bad/1")
			if ok(d, found) {
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: entry %v", what, d)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	d := waitDoc("given up", func(d map[string]any, found bool) bool {
		return found && d["attempts"] == 3.0 && d["next_attempt"] == nil
	})
	if d["rev"] != rev || d["stage"] != "transform" || !strings.Contains(fmt.Sprint(d["error"]), "bad document") {
		t.Errorf("entry %v", d)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if cp, _ := couch.Get(t, "db", "_local/ptop-p"); cp["seq"] == "2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the checkpoint did not pass the failed change")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Fixed: the new revision goes through and clears the entry.
	couch.Put(t, "db", "bad/1", map[string]any{"_rev": rev, "bad": false})
	waitDoc("cleared", func(_ map[string]any, found bool) bool { return !found })
}
