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

	// Meanwhile, documents are updated and deleted (their type kept).
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		rnd := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			id := fmt.Sprintf("d%05d", rnd.IntN(n))
			resp, err := http.Get(couch.URL + "/crash/" + id)
			if err != nil {
				t.Errorf("get: %v", err)
				return
			}
			var d map[string]any
			json.NewDecoder(resp.Body).Decode(&d)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				continue // deleted already
			}
			var req *http.Request
			if rnd.IntN(4) == 0 {
				req, _ = http.NewRequest(http.MethodDelete, couch.URL+"/crash/"+id+"?rev="+d["_rev"].(string), nil)
			} else {
				d["v"] = d["v"].(float64) + 100000
				b, _ := json.Marshal(d)
				req, _ = http.NewRequest(http.MethodPut, couch.URL+"/crash/"+id, bytes.NewReader(b))
				req.Header.Set("Content-Type", "application/json")
			}
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}()

	rnd := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 10; i++ {
		p := startPtop(t, "run", pdir)
		time.Sleep(time.Duration(150+rnd.IntN(400)) * time.Millisecond)
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
	close(stop)
	<-writerDone
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
