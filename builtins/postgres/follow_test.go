package postgres

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// TestRecordsFollowTheirDocument runs the scenario of testenv.FollowFeeds
// into a table, with a restart between its two parts: the table holds
// exactly what the current documents produce, found by _doc_id (the
// pillow keeps no record sets of its own).
func TestRecordsFollowTheirDocument(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	// An existing table from before _doc_id: create adds it, indexed.
	pg.ExecIn(t, dsn, `CREATE TABLE hh (_id text PRIMARY KEY, case_id text, parent text, doc jsonb, _rev text, _seq bigint)`)
	for i := range testenv.FollowFeeds {
		spec := loadPillow(t, fmt.Sprintf("name: hh\nsource: {file: {path: %q}}\n%ssinks:\n  - postgres: {dsn: %q, table: hh, columns: {case_id: text, parent: text}, create: true}\n",
			testenv.FollowFeedFile(t, i), testenv.FollowPillow, dsn))
		p := engine.NewPillow(spec, engine.RunOptions{Log: quietLog()})
		if err := p.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		got := table(t, pg, dsn, "SELECT _id FROM hh ORDER BY _id")
		if want := strings.Join(testenv.FollowAfter[i], "\n"); got != want {
			t.Fatalf("after part %d:\n%s\nwant\n%s", i+1, got, want)
		}
	}
	if got := table(t, pg, dsn, "SELECT count(*) FROM hh WHERE _doc_id IS DISTINCT FROM case_id"); got != "0" {
		t.Errorf("%s rows whose _doc_id is not their document's", got)
	}
	if got := table(t, pg, dsn, "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = 'hh'::regclass AND a.attname = '_doc_id'"); got != "hh__doc_id_idx" {
		t.Errorf("index of _doc_id: %q", got)
	}
}

// TestReplaceKeepsNewerRows: a document's set written from an earlier feed
// position (a reindex behind the live feed) removes none of the rows a
// later position wrote.
func TestReplaceKeepsNewerRows(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: t\ncreate: true\n", dsn))
	open(t, s)
	ctx := context.Background()
	// Each revision n-a comes from feed position n.
	r := func(id, doc, rev string) engine.Record {
		return engine.Record{ID: id, DocID: doc, Rev: rev, Seq: rev[:1], Doc: map[string]any{}}
	}
	if err := s.WriteDocSets(ctx, []engine.Record{r("d:a", "d", "1-a"), r("d:b", "d", "1-a"), r("e:a", "e", "1-a")},
		[]engine.DocSet{{DocID: "d", Rev: "1-a", Seq: "1", IDs: []string{"d:a", "d:b"}}, {DocID: "e", Rev: "1-a", Seq: "1", IDs: []string{"e:a"}}}, "", "", nil); err != nil {
		t.Fatal(err)
	}
	// d now produces d:c only, at 3-a.
	if err := s.WriteDocSets(ctx, []engine.Record{r("d:c", "d", "3-a")}, []engine.DocSet{{DocID: "d", Rev: "3-a", Seq: "3", IDs: []string{"d:c"}}}, "", "", nil); err != nil {
		t.Fatal(err)
	}
	// An older revision's set (2-a: d:a only) arrives late.
	if err := s.WriteDocSets(ctx, []engine.Record{r("d:a", "d", "2-a")}, []engine.DocSet{{DocID: "d", Rev: "2-a", Seq: "2", IDs: []string{"d:a"}}}, "", "", nil); err != nil {
		t.Fatal(err)
	}
	// d:c stays. (d:a comes back: a deleted row leaves no revision behind
	// to compare with; the revision guard's business, not this one's.)
	if got, want := table(t, pg, dsn, "SELECT _id, _rev FROM t ORDER BY _id"), "d:a|2-a\nd:c|3-a\ne:a|1-a"; got != want {
		t.Fatalf("rows:\n%s\nwant\n%s", got, want)
	}
	// e is filtered out: its set is empty.
	if err := s.WriteDocSets(ctx, nil, []engine.DocSet{{DocID: "e", Rev: "2-a", Seq: "4"}}, "", "", nil); err != nil {
		t.Fatal(err)
	}
	if got, want := table(t, pg, dsn, "SELECT _id FROM t ORDER BY _id"), "d:a\nd:c"; got != want {
		t.Fatalf("rows after e left:\n%s\nwant\n%s", got, want)
	}
}

// TestCheckpointStoreKeepsRecordSets runs the scenario into the file sink
// of a pillow whose checkpoint store is Postgres: the record sets are kept
// in the store's TABLE_records, and both runs (two processes, as far as
// the store can tell) share them.
func TestCheckpointStoreKeepsRecordSets(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	out := filepath.Join(t.TempDir(), "out.jsonl")
	// The dump grows as a feed does: the second run resumes after the
	// checkpoint, in the same file.
	feed := filepath.Join(t.TempDir(), "feed.jsonl")
	var dump []byte
	for i := range testenv.FollowFeeds {
		part, err := os.ReadFile(testenv.FollowFeedFile(t, i))
		if err != nil {
			t.Fatal(err)
		}
		dump = append(dump, part...)
		if err := os.WriteFile(feed, dump, 0o644); err != nil {
			t.Fatal(err)
		}
		spec := loadPillow(t, fmt.Sprintf("name: hh\nsource: {file: {path: %q}}\n%scheckpoint: {postgres: {dsn: %q, table: cps.ptop_checkpoints}}\nsinks:\n  - file: {path: %q}\n",
			feed, testenv.FollowPillow, dsn, out))
		if err := engine.NewPillow(spec, engine.RunOptions{Log: quietLog()}).Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got, want := testenv.FileSinkIDs(t, out), testenv.FollowAfter[i]; !reflect.DeepEqual(got, want) {
			t.Fatalf("after part %d: %v, want %v", i+1, got, want)
		}
	}
	got := table(t, pg, dsn, "SELECT pillow, doc_id, array_to_string(ids, ',') FROM cps.ptop_checkpoints_records ORDER BY 2")
	if want := "hh||ptop: this pillow keeps record sets\nhh|c2|c2:h8\nhh|c3|c3:h3,c3:h6\nhh|c5|c5:h9"; got != want {
		t.Errorf("record sets:\n%s\nwant\n%s", got, want)
	}
}
