package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
)

func poisonPillow(fixed bool) string {
	transform := `function transform(doc) {
    if (doc.throw) throw new Error("cannot handle " + doc._id + ": " + "details ".repeat(20) + "end");
    if (doc.loop) { for (;;) {} }
    return { v: doc.v };
  }`
	limit := 1000000
	if fixed {
		transform = `function transform(doc) { return { v: doc.v, fixed: true }; }`
		limit = 0
	}
	return fmt.Sprintf(`name: poison
source:
  couchdb: {url: "${COUCH_URL}", db: poison, heartbeat: 1s}
transform: |
  %s
transform_timeout: 200ms
max_doc_bytes: %d
errors: {backoff: 1h, poll: 100ms}
batch: {size: 100, wait: 50ms}
sinks:
  - file: {path: "${OUT}"}
`, transform, limit)
}

// errorIDs lists the document ids in the error store through the command.
func errorIDs(t *testing.T, pdir string) []string {
	t.Helper()
	code, out, errOut := ptop(t, "errors", "poison", "--dir", pdir)
	if code != 0 {
		t.Fatalf("ptop errors: exit %d: %s", code, errOut)
	}
	var ids []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && f[0] == "poison" {
			ids = append(ids, f[1])
		}
	}
	sort.Strings(ids)
	return ids
}

// TestPoisonDocuments: documents whose transform throws or never returns,
// and one too large, land in the error store and nothing else does;
// fixing the pillow and sending SIGHUP drains the store.
func TestPoisonDocuments(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "poison")
	var docs []map[string]any
	for i := 0; i < 300; i++ {
		docs = append(docs, map[string]any{"_id": fmt.Sprintf("ok-%03d", i), "v": i})
	}
	docs = append(docs,
		map[string]any{"_id": "throw-1", "throw": true, "v": 1},
		map[string]any{"_id": "throw-2", "throw": true, "v": 2},
		map[string]any{"_id": "loop", "loop": true, "v": 3},
		map[string]any{"_id": "big", "v": 4, "blob": strings.Repeat("x", 4<<20)},
	)
	couch.BulkDocs(t, "poison", docs)

	dir := t.TempDir()
	out := filepath.Join(dir, "out.jsonl")
	pdir := filepath.Join(dir, "pipelines")
	write(t, filepath.Join(pdir, "poison.yaml"), poisonPillow(false))
	t.Setenv("COUCH_URL", couch.URL)
	t.Setenv("OUT", out)

	p := startPtop(t, "run", pdir)
	waitLines(t, p, out, 300)
	want := []string{"big", "loop", "throw-1", "throw-2"}
	deadline := time.Now().Add(20 * time.Second)
	for strings.Join(errorIDs(t, pdir), ",") != strings.Join(want, ",") {
		if time.Now().After(deadline) {
			t.Fatalf("error store holds %v, want %v; log:\n%s", errorIDs(t, pdir), want, p.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	for _, l := range readLines(t, out) {
		if !strings.HasPrefix(l.ID, "ok-") {
			t.Fatalf("poison document %s reached the sink", l.ID)
		}
	}
	if n := len(readLines(t, out)); n != 300 {
		t.Fatalf("%d records, want the 300 good ones", n)
	}
	_, listing, _ := ptop(t, "errors", "--dir", pdir)
	for _, s := range []string{"cannot handle throw-1", "timed out after 200ms", "more than max_doc_bytes (1000000)", "4 failed changes"} {
		if !strings.Contains(listing, s) {
			t.Fatalf("ptop errors does not show %q:\n%s", s, listing)
		}
	}
	// The table cuts errors short; -v and --json show them whole.
	whole := "cannot handle throw-1: " + strings.Repeat("details ", 20) + "end"
	if strings.Contains(listing, whole) {
		t.Fatalf("the table shows the long error whole:\n%s", listing)
	}
	if _, v, _ := ptop(t, "errors", "-v", "--dir", pdir); !strings.Contains(v, whole) || !strings.Contains(v, "4 failed changes") {
		t.Fatalf("ptop errors -v does not show %q:\n%s", whole, v)
	}
	code, js, errOut := ptop(t, "errors", "poison", "--json", "--dir", pdir)
	var entries []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(js), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("ptop errors --json: line %q: %v (exit %d, %s)", l, err, code, errOut)
		}
		entries = append(entries, e)
	}
	if len(entries) != 4 || entries[3]["id"] != "throw-2" || entries[2]["pillow"] != "poison" ||
		!strings.Contains(entries[2]["error"].(string), whole) || entries[2]["attempts"] != 1.0 {
		t.Fatalf("ptop errors --json:\n%s", js)
	}

	// The fix: a transform that copes, and no size limit.
	write(t, filepath.Join(pdir, "poison.yaml"), poisonPillow(true))
	p.cmd.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(20 * time.Second)
	for len(errorIDs(t, pdir)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("error store not drained after the fix: %v; log:\n%s", errorIDs(t, pdir), p.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fixed := map[string]bool{}
	for _, l := range waitLines(t, p, out, 304)[300:] {
		if l.Doc["fixed"] != true {
			t.Fatalf("retried %s without the new transform: %v", l.ID, l.Doc)
		}
		fixed[l.ID] = true
	}
	for _, id := range want {
		if !fixed[id] {
			t.Fatalf("%s did not arrive after the fix", id)
		}
	}
	p.stop(t)
}
