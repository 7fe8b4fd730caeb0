//go:build unix

package tcp

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

const testPillow = `name: tcp-test
source:
  couchdb:
    url: ${TEST_COUCH_URL}
    db: cases
    heartbeat: 200ms
filter: doc.doc_type == "CommCareCase"
transform: |
  function transform(doc, change) {
    return { _id: doc._id, name: doc.name.toUpperCase(), n: doc.n };
  }
batch: {size: 5, wait: 50ms}
sinks:
  - tcp: {address: "${TEST_TCP_ADDRESS}", write_timeout: 1s, dial_timeout: 1s}
`

// runningPillow is a pillow run in the background until stop.
type runningPillow struct {
	*engine.Pillow
	stop func()
}

func startPillow(t *testing.T, path string) *runningPillow {
	t.Helper()
	spec, err := engine.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := engine.NewPillow(spec, engine.RunOptions{Log: testLogger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("pillow: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("pillow did not stop")
		}
	}
	t.Cleanup(stop)
	return &runningPillow{Pillow: p, stop: stop}
}

func TestPillowThroughOutage(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "cases")
	revs := map[string]string{}
	put := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			id := fmt.Sprintf("case-%d", i)
			revs[id] = couch.Put(t, "cases", id, map[string]any{"doc_type": "CommCareCase", "name": fmt.Sprintf("case %d", i), "n": i})
		}
	}
	checkpoint := func() string {
		d, _ := couch.Get(t, "cases", "_local/ptop-tcp-test")
		s, _ := d["seq"].(string)
		return s
	}
	waitCheckpoint := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); checkpoint() != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("checkpoint %q, want %q", checkpoint(), want)
			}
		}
	}
	// has reports whether every case from lo to hi arrived.
	has := func(lines []string, lo, hi int) bool {
		ids := lineIDs(t, lines)
		for i := lo; i < hi; i++ {
			if !slices.Contains(ids, fmt.Sprintf("case-%d", i)) {
				return false
			}
		}
		return true
	}

	p := startPeer(t, peerOptions{})
	t.Setenv("TEST_COUCH_URL", couch.URL)
	t.Setenv("TEST_TCP_ADDRESS", p.addr)
	path := filepath.Join(t.TempDir(), "tcp-test.yaml")
	if err := os.WriteFile(path, []byte(testPillow), 0o644); err != nil {
		t.Fatal(err)
	}

	put(0, 10)
	pl := startPillow(t, path)
	p.waitFor(20*time.Second, func(l []string) bool { return has(l, 0, 10) })
	waitCheckpoint("10")
	var first map[string]any
	if err := json.Unmarshal([]byte(p.lines()[0]), &first); err != nil || !reflect.DeepEqual(first, map[string]any{"_id": "case-0", "name": "CASE 0", "n": 0.0}) {
		t.Errorf("first line %s (%v)", p.lines()[0], err)
	}

	// The peer goes down; changes go on. Nothing is acknowledged, so the
	// checkpoint holds.
	p.stop()
	written := pl.Stats.Written.Load()
	put(10, 20)
	couch.Delete(t, "cases", "case-3", revs["case-3"])
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) { // an outage of ~20 s
		if cp := checkpoint(); cp != "10" || pl.Stats.Written.Load() != written {
			t.Fatalf("with the peer down: checkpoint %q, %d records written (was %d)", cp, pl.Stats.Written.Load(), written)
		}
	}
	// The outage was real: changes were read while the peer was down. How
	// many depends on how they fell into batches (the pipeline holds a few
	// batches ahead of a blocked write, not the whole feed).
	if seen := pl.Stats.Seen.Load(); seen <= 10 {
		t.Fatalf("the pillow has seen %d changes, none while the peer was down", seen)
	}

	// The peer is back: everything arrives, then the checkpoint moves.
	p.restart()
	waitCheckpoint("21")
	lines := p.waitFor(5*time.Second, func(l []string) bool {
		return has(l, 0, 20) && slices.Contains(l, `{"_id":"case-3","_deleted":true}`)
	})

	// A restart of the pillow resumes from its checkpoint, without loss.
	pl.stop()
	before := len(lines)
	put(20, 25)
	startPillow(t, path)
	p.waitFor(20*time.Second, func(l []string) bool { return has(l[before:], 20, 25) })
	waitCheckpoint("26")
	if after := lineIDs(t, p.lines()[before:]); slices.Contains(after, "case-0") {
		t.Errorf("the restarted pillow started from the beginning: %q", after)
	}
}

func TestShippedPipelineRuns(t *testing.T) {
	// pipelines/cases-tcp.yaml on documents shaped like gendocs makes them.
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "cases")
	caseDoc := func(domain, docType string) map[string]any {
		return map[string]any{
			"doc_type": docType, "domain": domain, "type": "patient", "name": "amina 1", "owner_id": "owner-0001",
			"opened_on": "2026-01-01T08:01:00Z", "modified_on": "2026-03-01T08:01:00Z", "closed": false,
			"properties": map[string]any{"age": 2, "village": "Nakuru", "phone": "+254700000001", "risk": "medium"},
			"indices":    []any{map[string]any{"identifier": "parent", "referenced_type": "household", "referenced_id": "hh-000000"}},
		}
	}
	couch.Put(t, "cases", "case-1", caseDoc("demo", "CommCareCase"))
	couch.Put(t, "cases", "case-2", caseDoc("test", "CommCareCase"))
	couch.Put(t, "cases", "form-3", caseDoc("prod", "XFormInstance"))
	couch.Put(t, "cases", "case-4", caseDoc("prod", "CommCareCase"))
	p := startPeer(t, peerOptions{})
	t.Setenv("COUCH_URL", couch.URL)
	t.Setenv("COUCH_DB", "cases")
	t.Setenv("TCP_ADDRESS", p.addr)
	startPillow(t, "../../pipelines/cases-tcp.yaml")
	p.waitFor(20*time.Second, func(l []string) bool { return len(l) >= 2 })
	time.Sleep(200 * time.Millisecond)
	lines := p.lines()
	if len(lines) != 2 {
		t.Fatalf("lines: %q", lines)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"_id": "case-1", "domain": "demo", "name": "amina 1", "owner_id": "owner-0001",
		"opened_on": "2026-01-01T08:01:00Z", "closed": false, "age": 2.0, "village": "Nakuru",
	}
	if !reflect.DeepEqual(got, want) || lineIDs(t, lines)[1] != "case-4" {
		t.Fatalf("lines %q", lines)
	}
}
