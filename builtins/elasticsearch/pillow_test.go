//go:build unix

package elasticsearch

import (
	"context"
	stdjson "encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/dimagi/ptop/builtins/couchdb"
	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// A pillow from a real CouchDB-protocol server into a real OpenSearch that
// is stopped for a while mid-run, then a restart of the pillow: nothing is
// lost, and the restarted pillow reads on from its checkpoint.
func TestPillowSurvivesServerStop(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "cases")
	srv := testenv.StartSearch(t, testenv.SearchOptions{Own: true})

	want := map[string]float64{} // id → n, what the index must hold in the end
	revs := map[string]string{}
	put := func(lo, hi int) {
		t.Helper()
		var docs []map[string]any
		for i := lo; i < hi; i++ {
			id := fmt.Sprintf("case-%04d", i)
			docs = append(docs, map[string]any{"_id": id, "n": i, "name": fmt.Sprintf("case %d", i)})
			want[id] = float64(i)
		}
		couch.BulkDocs(t, "cases", docs)
		for _, d := range docs {
			id := d["_id"].(string)
			doc, _ := couch.Get(t, "cases", id)
			revs[id] = doc["_rev"].(string)
		}
	}
	update := func(id string, n int) {
		t.Helper()
		revs[id] = couch.Put(t, "cases", id, map[string]any{"_rev": revs[id], "n": n, "name": "updated"})
		want[id] = float64(n)
	}
	remove := func(id string) {
		t.Helper()
		couch.Delete(t, "cases", id, revs[id])
		delete(want, id)
	}

	dir := t.TempDir()
	pillow := filepath.Join(dir, "es.yaml")
	if err := os.WriteFile(pillow, []byte(fmt.Sprintf(`name: es-stop
source:
  couchdb: {url: %q, db: cases, heartbeat: 1s}
transform: |
  function transform(doc) {
    return {_id: doc._id, n: doc.n, name: doc.name};
  }
batch: {size: 50, wait: 100ms}
sinks:
  - elasticsearch: {url: %q, index: cases, mapping_file: cases.json, timeout: 5s}
`, couch.URL, srv.URL)), 0o644); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "cases.json", `{"properties": {"n": {"type": "long"}, "name": {"type": "keyword"}}}`)

	put(0, 300)
	p1 := startPillow(t, pillow)
	waitForState(t, srv, "cases", want)

	srv.Stop(t)
	put(300, 400)
	for i := 0; i < 10; i++ {
		update(fmt.Sprintf("case-%04d", i), 1000+i)
		remove(fmt.Sprintf("case-%04d", 100+i))
	}
	time.Sleep(20 * time.Second) // an outage of ~20 s; the pillow keeps retrying meanwhile
	srv.Restart(t)
	waitForState(t, srv, "cases", want)
	p1.stop(t)

	// Changes made while no pillow runs are read from the checkpoint on.
	put(400, 450)
	for i := 200; i < 205; i++ {
		remove(fmt.Sprintf("case-%04d", i))
	}
	p2 := startPillow(t, pillow)
	waitForState(t, srv, "cases", want)
	p2.stop(t)
	if seen := p2.p.Stats.Seen.Load(); seen != 55 {
		t.Errorf("the restarted pillow read %d changes, want the 55 made after its checkpoint", seen)
	}
}

type runningPillow struct {
	p      *engine.Pillow
	cancel context.CancelFunc
	done   chan error
}

func startPillow(t *testing.T, file string) *runningPillow {
	t.Helper()
	spec, err := engine.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningPillow{p: engine.NewPillow(spec, engine.RunOptions{Log: testLogger(t)}), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- r.p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

func (r *runningPillow) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("pillow: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the pillow did not stop")
	}
}

// waitForState waits until index holds exactly want (id → n).
func waitForState(t *testing.T, srv *testenv.OpenSearch, index string, want map[string]float64) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var got map[string]float64
	for {
		got = indexState(t, srv, index)
		if equalState(got, want) {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	missing, extra, wrong := 0, 0, 0
	for id, n := range want {
		if m, ok := got[id]; !ok {
			missing++
		} else if m != n {
			wrong++
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			extra++
		}
	}
	t.Fatalf("index %s: %d documents, want %d: %d missing, %d extra, %d with the wrong n", index, len(got), len(want), missing, extra, wrong)
}

func equalState(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// indexState returns id → n of every document of index.
func indexState(t *testing.T, srv *testenv.OpenSearch, index string) map[string]float64 {
	t.Helper()
	if status, _ := srv.Do(t, http.MethodPost, "/"+index+"/_refresh", nil); status != http.StatusOK {
		return nil
	}
	status, body := srv.Do(t, http.MethodGet, "/"+index+"/_search?size=10000", nil)
	if status != http.StatusOK {
		return nil
	}
	var r struct {
		Hits struct {
			Hits []struct {
				ID     string `json:"_id"`
				Source struct {
					N float64 `json:"n"`
				} `json:"_source"`
			} `json:"hits"`
		} `json:"hits"`
	}
	if err := stdjson.Unmarshal(body, &r); err != nil {
		t.Fatalf("search %s: %v", index, err)
	}
	m := make(map[string]float64, len(r.Hits.Hits))
	for _, h := range r.Hits.Hits {
		m[h.ID] = h.Source.N
	}
	return m
}

// The shipped pillow pipelines/case-search-es.yaml, on the sample
// documents of internal/cmd/gendocs: it loads, and its strict mapping takes
// every record its transform makes.
func TestShippedPipeline(t *testing.T) { // not parallel: it sets environment variables
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	srv := testenv.StartOpenSearch(t)
	const n = 600
	gen := exec.Command("go", "run", "../../internal/cmd/gendocs", "-n", fmt.Sprint(n), "-couch", couch.URL, "-db", "sample")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("gendocs: %v\n%s", err, out)
	}
	t.Setenv("COUCH_URL", couch.URL)
	t.Setenv("COUCH_DB", "sample")
	t.Setenv("ES_URL", srv.URL)
	// The index is named by the mapping; start from an empty one.
	srv.Do(t, http.MethodDelete, "/case-search-*", nil)
	p := startPillow(t, "../../pipelines/case-search-es.yaml")
	want := 0
	for i := 0; i < n; i++ {
		if i%10 != 9 && i%3 != 2 { // CommCareCase, in domain demo or prod
			want++
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(indexState(t, srv, "case-search")) != want {
		if time.Now().After(deadline) {
			t.Fatalf("case-search holds %d documents, want %d", len(indexState(t, srv, "case-search")), want)
		}
		time.Sleep(200 * time.Millisecond)
	}
	p.stop(t)
	if failed := p.p.Stats.Failed.Load(); failed != 0 {
		t.Errorf("%d changes failed", failed)
	}
	src, version, found := srv.GetDoc(t, "case-search", "case-00000001")
	// Its version is the feed position of its change: the second document.
	if !found || src["name"] != "brian 1" || src["village"] != "Nakuru" || src["age"] != float64(2) || version != 2 {
		t.Errorf("case-00000001: %v version %d", src, version)
	}
}

// TestConflictWinnerWithLowerGeneration: CouchDB's current revision of a
// conflicted document can have a lower generation than the one indexed
// (3-… deleted, the branch 2-ffff… wins): the feed's last change of the
// document is the truth, and the index ends with it.
func TestConflictWinnerWithLowerGeneration(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	srv := testenv.StartOpenSearch(t)
	db, index := uniqueIndex(t), uniqueIndex(t)
	couch.CreateDB(t, db)
	dir := t.TempDir()
	pillow := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(pillow, []byte(fmt.Sprintf(`name: %s
source:
  couchdb: {url: %q, db: %s, heartbeat: 1s}
transform: |
  function transform(doc) { return {_id: doc._id, v: doc.v, rev: doc._rev}; }
batch: {size: 10, wait: 20ms}
sinks:
  - elasticsearch: {url: %q, index: %s}
`, db, couch.URL, db, srv.URL, index)), 0o644); err != nil {
		t.Fatal(err)
	}
	startPillow(t, pillow)
	waitRev := func(rev string) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); ; {
			// Not GetDoc: the index the first write created may still be
			// recovering (503).
			status, body := srv.Do(t, http.MethodGet, "/"+index+"/_doc/c1", nil)
			var d struct {
				Source map[string]any `json:"_source"`
			}
			if status == http.StatusOK && stdjson.Unmarshal(body, &d) == nil && d.Source["rev"] == rev {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("c1 is HTTP %d %s, want revision %s", status, body, rev)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	rev1 := couch.Put(t, db, "c1", map[string]any{"v": "one"})
	rev2 := couch.Put(t, db, "c1", map[string]any{"_rev": rev1, "v": "two"})
	rev3 := couch.Put(t, db, "c1", map[string]any{"_rev": rev2, "v": "three"})
	waitRev(rev3)

	hash1 := strings.SplitN(rev1, "-", 2)[1]
	branch := map[string]any{
		"_id": "c1", "_rev": "2-ffffffffffffffffffffffffffffffff", "v": "branch",
		"_revisions": map[string]any{"start": 2, "ids": []string{"ffffffffffffffffffffffffffffffff", hash1}},
	}
	status, body := couch.Do(t, http.MethodPost, "/"+db+"/_bulk_docs", map[string]any{"docs": []any{branch}, "new_edits": false})
	if status != http.StatusCreated {
		t.Fatalf("_bulk_docs new_edits:false: HTTP %d: %s", status, body)
	}
	couch.Delete(t, db, "c1", rev3)
	if cur, ok := couch.Get(t, db, "c1"); !ok || cur["_rev"] != "2-ffffffffffffffffffffffffffffffff" {
		t.Fatalf("the server's current c1: %v", cur)
	}
	waitRev("2-ffffffffffffffffffffffffffffffff")
}

// TestReindexCheckpointBelongsToItsIndex: an interrupted reindex resumes
// only into the index it began, under the same definition: when that
// half-built index was deleted, or the mapping changed, it rebuilds from
// the beginning, and the index it flips live holds every document.
func TestReindexCheckpointBelongsToItsIndex(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	srv := testenv.StartOpenSearch(t)
	db, alias := uniqueIndex(t), uniqueIndex(t)
	couch.CreateDB(t, db)
	const n = 1500
	want := map[string]float64{}
	var docs []map[string]any
	for i := range n {
		id := fmt.Sprintf("case-%04d", i)
		docs = append(docs, map[string]any{"_id": id, "n": i})
		want[id] = float64(i)
	}
	couch.BulkDocs(t, db, docs)
	dir := t.TempDir()
	pillow := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(pillow, []byte(fmt.Sprintf(`name: %s
source:
  couchdb: {url: %q, db: %s, heartbeat: 1s}
transform: |
  function transform(doc) { return {_id: doc._id, n: doc.n}; }
batch: {size: 10, wait: 20ms}
workers: 1
sinks:
  - elasticsearch: {url: %q, index: %s, mapping_file: m.json, settings: {number_of_shards: 1, number_of_replicas: 0}}
`, db, couch.URL, db, srv.URL, alias)), 0o644); err != nil {
		t.Fatal(err)
	}
	mapping := func(typ string) {
		writeFile(t, dir, "m.json", fmt.Sprintf(`{"properties": {"n": {"type": %q}}}`, typ))
	}
	// reindex runs a reindex of the pillow as the files say, interrupted
	// once its rebuild has saved a checkpoint when interrupt is set; it
	// returns the index it rebuilt into.
	reindex := func(interrupt bool) string {
		t.Helper()
		spec, err := engine.LoadFile(pillow)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		err = engine.Reindex(ctx, spec, engine.ReindexOptions{
			Log: testLogger(t), Every: 10 * time.Millisecond,
			Progress: func(p engine.ReindexProgress) {
				if interrupt && p.Phase == "rebuild" && p.Done > 0 {
					cancel()
				}
			},
		})
		target := spec.Outputs()[0].Sink.(*Sink).rebuilt
		if interrupt {
			srv.Refresh(t, target)
			if got := srv.Count(t, target); err == nil || got <= 0 || got >= n {
				t.Fatalf("interrupted reindex: %v, with %d documents in %s", err, got, target)
			}
		} else if err != nil {
			t.Fatalf("reindex: %v", err)
		}
		return target
	}

	// Interrupted, the half-built index deleted: from the beginning.
	mapping("long")
	half := reindex(true)
	if status, body := srv.Do(t, http.MethodDelete, "/"+half, nil); status != http.StatusOK {
		t.Fatalf("delete %s: HTTP %d: %s", half, status, body)
	}
	if got := reindex(false); got != half {
		t.Fatalf("rebuilt into %s, want %s again", got, half)
	}
	waitForState(t, srv, alias, want)

	// Interrupted, the mapping changed: from the beginning, into the new
	// mapping's index.
	mapping("integer")
	half = reindex(true)
	mapping("float")
	if got := reindex(false); got == half {
		t.Fatalf("rebuilt into the index of the previous mapping, %s", got)
	}
	waitForState(t, srv, alias, want)
}
