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
	if !found || src["name"] != "brian 1" || src["village"] != "Nakuru" || src["age"] != float64(2) || version != 1 {
		t.Errorf("case-00000001: %v version %d", src, version)
	}
}
