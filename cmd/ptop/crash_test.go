package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
)

// foldLines replays the file sink's output into the state a store would
// hold: the last index of each id, minus the deleted ones.
func foldLines(ls []line) map[string]map[string]any {
	state := map[string]map[string]any{}
	for _, l := range ls {
		if l.Action == "delete" {
			delete(state, l.ID)
		} else {
			state[l.ID] = l.Doc
		}
	}
	return state
}

// expectedState applies the pillow's filter and transform, written again
// in Go, to the database's current documents.
func expectedState(t *testing.T, couch *testenv.Couch, db string) map[string]map[string]any {
	_, body := couch.Do(t, http.MethodGet, "/"+db+"/_all_docs?include_docs=true", nil)
	var all struct {
		Rows []struct {
			Doc map[string]any `json:"doc"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(body, &all); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]any{}
	for _, r := range all.Rows {
		if r.Doc["type"] == "case" {
			v := r.Doc["v"].(float64)
			want[r.Doc["_id"].(string)] = map[string]any{"v": v, "double": v * 2}
		}
	}
	return want
}

// TestKill9AtRandom kills ptop with SIGKILL at random moments, ten times,
// while it reads 20k documents and more are updated and deleted; after the
// last restart the sink's state is exactly filter+transform of the
// database's documents.
func TestKill9AtRandom(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "crash")
	const n = 20000
	for lo := 0; lo < n; lo += 1000 {
		docs := make([]map[string]any, 0, 1000)
		for i := lo; i < lo+1000; i++ {
			typ := "case"
			if i%5 == 4 {
				typ = "form"
			}
			docs = append(docs, map[string]any{"_id": fmt.Sprintf("d%05d", i), "type": typ, "v": i})
		}
		couch.BulkDocs(t, "crash", docs)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "out.jsonl")
	pdir := filepath.Join(dir, "pipelines")
	write(t, filepath.Join(pdir, "crash.yaml"), `name: crash
source:
  couchdb: {url: "${COUCH_URL}", db: crash, heartbeat: 1s}
filter: doc.type == "case"
transform: |
  function transform(doc) { return { v: doc.v, double: doc.v * 2 }; }
batch: {size: 200, wait: 20ms}
workers: 1
sinks:
  - file: {path: "${OUT}"}
`)
	t.Setenv("COUCH_URL", couch.URL)
	t.Setenv("OUT", out)

	// Meanwhile, documents are updated and deleted (their type kept), and
	// ptop is killed at random ten times.
	stopWriting := editAtRandom(t, couch.URL+"/crash/", rand.New(rand.NewPCG(1, 2)), func(rnd *rand.Rand) string {
		return fmt.Sprintf("d%05d", rnd.IntN(n))
	}, func(rnd *rand.Rand, d map[string]any) (remove bool) {
		if rnd.IntN(4) == 0 {
			return true
		}
		d["v"] = d["v"].(float64) + 100000
		return false
	})
	killAtRandom(t, pdir, 10, rand.New(rand.NewPCG(3, 4)), 150*time.Millisecond, 400*time.Millisecond)
	stopWriting()
	killedAt := len(readLines(t, out))

	p := startPtop(t, "run", pdir)
	want := expectedState(t, couch, "crash")
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := foldLines(readLines(t, out))
		if reflect.DeepEqual(got, want) {
			break
		}
		if time.Now().After(deadline) {
			missing, wrong, extra := 0, 0, 0
			for id, w := range want {
				if g, ok := got[id]; !ok {
					missing++
				} else if !reflect.DeepEqual(g, w) {
					wrong++
				}
			}
			for id := range got {
				if _, ok := want[id]; !ok {
					extra++
				}
			}
			t.Fatalf("after the kills the sink differs from the database: %d missing, %d stale, %d extra (of %d); log:\n%s",
				missing, wrong, extra, len(want), p.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.stop(t)
	t.Logf("%d records written before the last start, %d expected in the end", killedAt, len(want))
}

// editAtRandom edits documents under base (a database URL ending in "/")
// every 2 ms until the returned stop is called: pick names the document,
// edit changes it, or says to delete it. A document already deleted is
// skipped.
func editAtRandom(t *testing.T, base string, rnd *rand.Rand, pick func(*rand.Rand) string, edit func(*rand.Rand, map[string]any) (remove bool)) (stop func()) {
	t.Helper()
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-time.After(2 * time.Millisecond):
			}
			id := pick(rnd)
			resp, err := http.Get(base + id)
			if err != nil {
				t.Errorf("get: %v", err)
				return
			}
			var d map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&d)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				continue // deleted already
			}
			var req *http.Request
			if edit(rnd, d) {
				req, _ = http.NewRequest(http.MethodDelete, base+id+"?rev="+d["_rev"].(string), nil)
			} else {
				b, _ := json.Marshal(d)
				req, _ = http.NewRequest(http.MethodPut, base+id, bytes.NewReader(b))
				req.Header.Set("Content-Type", "application/json")
			}
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_ = resp.Body.Close()
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// killAtRandom runs `ptop run dir` times times, each killed with SIGKILL
// after at least minRun and up to spread more.
func killAtRandom(t *testing.T, dir string, times int, rnd *rand.Rand, minRun, spread time.Duration) {
	t.Helper()
	for i := 0; i < times; i++ {
		p := startPtop(t, "run", dir)
		time.Sleep(minRun + time.Duration(rnd.Int64N(int64(spread))))
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}
