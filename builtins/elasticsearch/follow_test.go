//go:build unix

package elasticsearch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	_ "github.com/dimagi/ptop/builtins/file"
	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// TestRecordsFollowTheirDocument runs the scenario of testenv.FollowFeeds
// into a real index, with a restart between its two parts (the record
// sets, kept by the engine, shared by the two runs as a checkpoint store
// would keep them): the index holds exactly what the current documents
// produce.
func TestRecordsFollowTheirDocument(t *testing.T) {
	t.Parallel()
	srv := testenv.StartOpenSearch(t)
	index := uniqueIndex(t)
	sets := &engine.MemRecordSets{}
	for i := range testenv.FollowFeeds {
		file := filepath.Join(t.TempDir(), "hh.yaml")
		if err := os.WriteFile(file, []byte(fmt.Sprintf("name: hh\nsource: {file: {path: %q}}\n%ssinks:\n  - elasticsearch: {url: %q, index: %s}\n",
			testenv.FollowFeedFile(t, i), testenv.FollowPillow, srv.URL, index)), 0o644); err != nil {
			t.Fatal(err)
		}
		spec, err := engine.LoadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := engine.NewPillow(spec, engine.RunOptions{Log: testLogger(t), RecordSets: sets}).Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		var got []string
		for id := range indexState(t, srv, index) {
			got = append(got, id)
		}
		sort.Strings(got)
		if want := testenv.FollowAfter[i]; !reflect.DeepEqual(got, want) {
			t.Fatalf("after part %d: %v, want %v", i+1, got, want)
		}
	}
}
