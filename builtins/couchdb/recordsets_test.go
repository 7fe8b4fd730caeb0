//go:build unix

package couchdb

import (
	"context"
	"reflect"
	"testing"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// Tests of the record sets against a real pouchdb-server.

func TestRecordSetsRoundTrip(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	ctx := context.Background()
	a := newTestSource(t, Config{URL: couch.URL, DB: "db"})
	b := newTestSource(t, Config{URL: couch.URL, DB: "db"}) // another process

	load := func(src *Source, pillow string, ids ...string) []engine.RecordSet {
		t.Helper()
		got, err := src.LoadRecordSets(ctx, pillow, ids)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	strip := func(sets []engine.RecordSet) []engine.RecordSet {
		out := []engine.RecordSet{}
		for _, s := range sets {
			out = append(out, engine.RecordSet{DocID: s.DocID, IDs: s.IDs})
		}
		return out
	}
	// No database yet: no entries, and reading does not create it.
	if got := load(a, "p", "x", "y"); len(got) != 0 {
		t.Fatalf("entries before any save: %+v", got)
	}
	saved, err := a.SaveRecordSets(ctx, "p", []engine.RecordSet{
		{DocID: "x", IDs: []string{"x:1", "x:2"}},
		{DocID: "y", IDs: []string{"y"}},
		{DocID: "z"}, // no entry to remove: nothing written
	})
	if err != nil {
		t.Fatal(err)
	}
	if saved[0].Version == "" || saved[1].Version == "" || saved[2].Version != "" {
		t.Fatalf("versions after save: %+v", saved)
	}
	want := []engine.RecordSet{{DocID: "x", IDs: []string{"x:1", "x:2"}}, {DocID: "y", IDs: []string{"y"}}}
	got := load(b, "p", "x", "y", "z")
	if !reflect.DeepEqual(strip(got), want) {
		t.Fatalf("read by another process: %+v, want %+v", got, want)
	}
	// Pillows do not see each other's entries.
	if got := load(a, "q", "x", "y"); len(got) != 0 {
		t.Fatalf("pillow q sees %+v", got)
	}
	// b changes x; a, with the version it read before, still writes
	// (the batch being written decides), and removes y.
	if _, err := b.SaveRecordSets(ctx, "p", []engine.RecordSet{{DocID: "x", IDs: []string{"x:3"}, Version: got[0].Version}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SaveRecordSets(ctx, "p", []engine.RecordSet{
		{DocID: "x", IDs: []string{"x:4"}, Version: saved[0].Version},
		{DocID: "y", Version: saved[1].Version},
	}); err != nil {
		t.Fatal(err)
	}
	if got := load(b, "p", "x", "y"); !reflect.DeepEqual(strip(got), []engine.RecordSet{{DocID: "x", IDs: []string{"x:4"}}}) {
		t.Fatalf("after the conflict and the removal: %+v", got)
	}
	// A removed entry can come back, without a version.
	if _, err := a.SaveRecordSets(ctx, "p", []engine.RecordSet{{DocID: "y", IDs: []string{"y:9"}}}); err != nil {
		t.Fatal(err)
	}
	if got := load(b, "p", "y"); !reflect.DeepEqual(strip(got), []engine.RecordSet{{DocID: "y", IDs: []string{"y:9"}}}) {
		t.Fatalf("recreated entry: %+v", got)
	}
}
