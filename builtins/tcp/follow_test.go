//go:build unix

package tcp

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
	"time"

	_ "github.com/dimagi/ptop/builtins/file"
	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// foldLines applies the lines a peer received, in order: a record's line
// sets its id, {"_id":…,"_deleted":true} removes it. It returns the ids
// left.
func foldLines(t *testing.T, lines []string) []string {
	state := map[string]bool{}
	for _, l := range lines {
		var v struct {
			ID      string `json:"_id"`
			Deleted bool   `json:"_deleted"`
		}
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if v.Deleted {
			delete(state, v.ID)
		} else {
			state[v.ID] = true
		}
	}
	ids := []string{}
	for id := range state {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// TestRecordsFollowTheirDocument runs the scenario of testenv.FollowFeeds
// into a peer, with a restart between its two parts (the record sets
// shared by the two runs as a checkpoint store would keep them): the lines
// received, applied in order, leave exactly what the current documents
// produce.
func TestRecordsFollowTheirDocument(t *testing.T) {
	p := startPeer(t, peerOptions{})
	sets := &engine.MemRecordSets{}
	for i := range testenv.FollowFeeds {
		file := filepath.Join(t.TempDir(), "hh.yaml")
		if err := os.WriteFile(file, []byte(fmt.Sprintf("name: hh\nsource: {file: {path: %q}}\n%ssinks:\n  - tcp: {address: %q}\n",
			testenv.FollowFeedFile(t, i), testenv.FollowPillow, p.addr)), 0o644); err != nil {
			t.Fatal(err)
		}
		spec, err := engine.LoadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		pl := engine.NewPillow(spec, engine.RunOptions{Log: testLogger(t), RecordSets: sets})
		if err := pl.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		want := testenv.FollowAfter[i]
		var got []string
		p.waitFor(30*time.Second, func(lines []string) bool {
			got = foldLines(t, lines)
			return reflect.DeepEqual(got, want)
		})
	}
	// The form never indexed, then deleted, cost one delete line (its
	// own id, as every deletion sends), and nothing else.
	n := 0
	for _, l := range p.lines() {
		if l == `{"_id":"f1","_deleted":true}` {
			n++
		}
		if l == `{"_id":"f2","_deleted":true}` {
			t.Errorf("a delete for a document filtered out, never indexed: %s", l)
		}
	}
	if n != 1 {
		t.Errorf("%d deletes of f1, want 1", n)
	}
}
