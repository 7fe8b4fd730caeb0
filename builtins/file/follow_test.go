package file

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
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
		if got, want := testenv.FileSinkIDs(t, out), testenv.FollowAfter[i]; !reflect.DeepEqual(got, want) {
			t.Fatalf("after part %d: %v, want %v", i+1, got, want)
		}
	}
}
