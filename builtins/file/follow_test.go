package file

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// TestRecordsFollowTheirDocument runs the scenario of testenv.FollowFeeds
// from the file source into the file sink, with a restart between its two
// parts (the record sets shared by the two runs as a checkpoint store
// would keep them): the lines, applied in order, leave exactly what the
// current documents produce.
func TestRecordsFollowTheirDocument(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.jsonl")
	sets := &engine.MemRecordSets{}
	for i := range testenv.FollowFeeds {
		file := filepath.Join(dir, "hh.yaml")
		if err := os.WriteFile(file, []byte(fmt.Sprintf("name: hh\nsource: {file: {path: %q}}\n%ssinks:\n  - file: {path: %q}\n",
			testenv.FollowFeedFile(t, i), testenv.FollowPillow, out)), 0o644); err != nil {
			t.Fatal(err)
		}
		spec, err := engine.LoadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := engine.NewPillow(spec, engine.RunOptions{RecordSets: sets}).Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got, want := foldFile(t, out), testenv.FollowAfter[i]; !reflect.DeepEqual(got, want) {
			t.Fatalf("after part %d: %v, want %v", i+1, got, want)
		}
	}
}

// foldFile applies the file sink's lines in order and returns the ids left.
func foldFile(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	state := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l struct{ Action, ID string }
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		switch l.Action {
		case "index":
			state[l.ID] = true
		case "delete":
			delete(state, l.ID)
		default:
			t.Fatalf("line %s", sc.Bytes())
		}
	}
	ids := []string{}
	for id := range state {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
