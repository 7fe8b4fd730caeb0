package postgres

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// rebuildTarget calls RebuildTarget and opens the sink it returns, closed
// when the test ends.
func rebuildTarget(t testing.TB, s *Sink) *Sink {
	t.Helper()
	ts, _, err := s.RebuildTarget(context.Background(), false)
	if err != nil {
		t.Fatalf("RebuildTarget: %v", err)
	}
	target := ts.(*Sink)
	open(t, target)
	return target
}

func promote(t testing.TB, s *Sink, keepOld bool) string {
	t.Helper()
	msg, err := s.Promote(context.Background(), keepOld)
	if err != nil {
		t.Fatalf("Promote: %v", err)
	}
	return msg
}

// relations lists the tables and indexes of a schema, as "name(kind)".
func relations(t testing.TB, pg *testenv.Postgres, dsn, schema string) string {
	t.Helper()
	return table(t, pg, dsn, fmt.Sprintf(`SELECT relname || '(' || relkind::text || ')' FROM pg_class
		WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s) AND relkind IN ('r', 'i') ORDER BY relname`, quoteLiteral(schema)))
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func TestRebuildTargetCreatesAndReuses(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	// A table made by hand, written without create.
	pg.ExecIn(t, dsn, `CREATE TABLE cases (_id text PRIMARY KEY, name varchar(10), doc jsonb, _rev text, _seq bigint, _doc_id text);
		INSERT INTO cases VALUES ('old', 'Old', '{}', '1-a', 1)`)
	cfg := fmt.Sprintf("dsn: %q\ntable: cases\ncolumns: {name: text, age: integer}\n", dsn)
	s := loadSink(t, cfg)
	target := rebuildTarget(t, s)
	// As create: true makes it from this configuration.
	got := table(t, pg, dsn, `SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute
		WHERE attrelid = 'cases__reindex'::regclass AND attnum > 0 ORDER BY attnum`)
	want := "_id|text|true\nname|text|false\nage|integer|false\ndoc|jsonb|false\n_rev|text|false\n_seq|bigint|false\n_doc_id|text|false"
	if got != want {
		t.Fatalf("columns:\n%s\nwant\n%s", got, want)
	}
	write(t, target,
		rec("a", "2-a", map[string]any{"name": "a name longer than ten", "age": 7.0, "x": 1.0}),
		rec("b", "1-b", map[string]any{"name": "B"}))
	write(t, target, rec("a", "1-a", map[string]any{"name": "stale"}), del("b", "2-b"))
	rows := func(tbl string) string {
		return table(t, pg, dsn, `SELECT _id, name, age, doc, _rev, _seq FROM `+tbl+` ORDER BY _id`)
	}
	if got, want := rows("cases__reindex"), "a|a name longer than ten|7|map[x:1]|2-a|2"; got != want {
		t.Fatalf("rebuilt rows:\n%s\nwant\n%s", got, want)
	}
	if got := table(t, pg, dsn, "SELECT _id FROM cases"); got != "old" {
		t.Fatalf("the live table changed: %s", got)
	}
	target.Close()

	// Again, as a resumed reindex: the table and its rows are kept; a
	// column of a changed configuration is added.
	s2 := loadSink(t, cfg+"  # changed\n")
	s2.cfg.Columns["extra"] = "boolean"
	s2.columns = append(s2.columns, "extra")
	target2 := rebuildTarget(t, s2)
	write(t, target2, rec("c", "1-c", map[string]any{"extra": true}))
	if got, want := table(t, pg, dsn, `SELECT _id, extra FROM cases__reindex ORDER BY _id`), "a|NULL\nc|true"; got != want {
		t.Fatalf("resumed rows:\n%s\nwant\n%s", got, want)
	}

	// The sink of a rebuild is not rebuilt or promoted itself.
	if _, _, err := target2.RebuildTarget(context.Background(), false); err == nil {
		t.Error("RebuildTarget of a rebuild's sink succeeded")
	}
	if _, err := target2.Promote(context.Background(), false); err == nil {
		t.Error("Promote of a rebuild's sink succeeded")
	}
}

func TestRebuildErrors(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	ctx := context.Background()

	// Nothing to promote.
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: cases\ncreate: true\n", dsn))
	open(t, s)
	_, err := s.Promote(ctx, false)
	if err == nil || !engine.IsPermanent(err) || !strings.Contains(err.Error(), "there is no rebuilt table cases__reindex") {
		t.Errorf("Promote without a rebuilt table: %v", err)
	}

	// A name too long for its shadow is refused at load.
	long := strings.Repeat("n", 55)
	path := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(path, []byte(fmt.Sprintf("name: p\nsource: {file: {path: /dev/null}}\nsinks:\n  - postgres: {dsn: %q, table: %s}\n", dsn, long)), 0o644)
	if _, err := engine.LoadFile(path); err == nil || !strings.HasSuffix(err.Error(), `table name "`+long+`" is 55 bytes; it may have at most 54`) {
		t.Errorf("a table name too long for its shadow: %v", err)
	}
	// The longest name that fits.
	s = loadSink(t, fmt.Sprintf("dsn: %q\ntable: %s\ncreate: true\n", dsn, long[:54]))
	open(t, s)
	write(t, rebuildTarget(t, s), rec("a", "1-a", nil))
	for range 2 {
		promote(t, s, true)
		write(t, rebuildTarget(t, s), rec("a", "1-a", nil))
	}
	promote(t, s, false)
	if got := count(dsn, "SELECT count(*) FROM "+long[:54]); got != 1 {
		t.Errorf("rows of the long-named table: %d", got)
	}

	// A view on the live table: it cannot be dropped; nothing changes.
	s = loadSink(t, fmt.Sprintf("dsn: %q\ntable: viewed\ncreate: true\n", dsn))
	open(t, s)
	write(t, s, rec("live", "1-a", nil))
	pg.ExecIn(t, dsn, "CREATE VIEW v AS SELECT _id FROM viewed")
	write(t, rebuildTarget(t, s), rec("rebuilt", "1-a", nil))
	_, err = s.Promote(ctx, false)
	if err == nil || !strings.Contains(err.Error(), "cannot drop table viewed") || !strings.Contains(err.Error(), "view v depends on table viewed") {
		t.Errorf("Promote over a view: %v", err)
	}
	if got := table(t, pg, dsn, "SELECT (SELECT _id FROM viewed), (SELECT _id FROM viewed__reindex)"); got != "live|rebuilt" {
		t.Errorf("after a failed Promote: %s", got)
	}
	// Keeping the old table, the view follows it.
	promote(t, s, true)
	if got := table(t, pg, dsn, "SELECT (SELECT _id FROM viewed), (SELECT _id FROM v)"); got != "rebuilt|live" {
		t.Errorf("after Promote keeping the old table: %s", got)
	}
}

func TestPromote(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	ctx := context.Background()
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: cases\ncolumns: {name: text}\ncreate: true\n", dsn))
	s.promoteWait = 200 * time.Millisecond
	open(t, s)
	var recs []engine.Record
	for i := range 100 {
		recs = append(recs, rec(fmt.Sprintf("d%03d", i), "1-a", map[string]any{"name": "live"}))
	}
	write(t, s, recs...)
	target := rebuildTarget(t, s)
	for i := range recs {
		recs[i].Rev, recs[i].Seq = "2-b", "2"
		recs[i].Doc = map[string]any{"name": "rebuilt"}
	}
	write(t, target, append(recs, rec("new", "1-a", map[string]any{"name": "rebuilt"}))...)

	// Readers run during the swap: each sees the old table or the new,
	// never none. A transaction reading the table holds the swap up for
	// longer than its lock timeout: the swap waits, then goes through.
	pool, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close(ctx)
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, "SELECT count(*) FROM cases"); err != nil {
		t.Fatal(err)
	}
	var (
		stop          atomic.Bool
		wg            sync.WaitGroup
		mu            sync.Mutex
		seen          = map[string]int{}
		readerErrs    []error
		readerQueries atomic.Int64
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				mu.Lock()
				readerErrs = append(readerErrs, err)
				mu.Unlock()
				return
			}
			defer conn.Close(ctx)
			for !stop.Load() {
				var n int64
				var name string
				err := conn.QueryRow(ctx, "SELECT count(*), min(name) FROM cases").Scan(&n, &name)
				readerQueries.Add(1)
				mu.Lock()
				if err != nil {
					readerErrs = append(readerErrs, err)
				} else {
					seen[fmt.Sprintf("%d %s", n, name)]++
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	go func() {
		time.Sleep(700 * time.Millisecond) // the swap gives up waiting at least twice
		holder.Commit(ctx)
	}()
	msg := promote(t, s, false)
	time.Sleep(100 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if msg != "table cases replaced by the rebuilt one (old one dropped)" {
		t.Errorf("message %q", msg)
	}
	if len(readerErrs) > 0 {
		t.Fatalf("%d of %d reads failed, first: %v", len(readerErrs), readerQueries.Load(), readerErrs[0])
	}
	if len(seen) != 2 || seen["100 live"] == 0 || seen["101 rebuilt"] == 0 {
		t.Fatalf("readers saw %v", seen)
	}
	if got, want := relations(t, pg, dsn, "public"), "cases(r)\ncases__doc_id_idx(i)\ncases_pkey(i)"; got != want {
		t.Fatalf("relations:\n%s\nwant\n%s", got, want)
	}

	// The catch-up pass, written into the rebuild's sink after the swap,
	// lands in the live table, with the revision guard.
	write(t, target, rec("d000", "3-c", map[string]any{"name": "caught up"}), rec("d001", "1-a", map[string]any{"name": "stale"}))
	if got, want := table(t, pg, dsn, "SELECT _id, name, _rev FROM cases WHERE _id IN ('d000', 'd001') ORDER BY 1"), "d000|caught up|3-c\nd001|rebuilt|2-b"; got != want {
		t.Fatalf("catch-up rows:\n%s\nwant\n%s", got, want)
	}
	if got := relations(t, pg, dsn, "public"); strings.Contains(got, "__reindex") || strings.Contains(got, "__old") {
		t.Fatalf("a rebuild table is back: %s", got)
	}
	// A second Promote has nothing to swap in.
	if _, err := s.Promote(ctx, false); err == nil || !strings.Contains(err.Error(), "no rebuilt table") {
		t.Fatalf("second Promote: %v", err)
	}
}

// TestRepeatedReindexes rebuilds a table three times in a row, keeping the
// old one or not, and checks the names of the tables and indexes each time.
func TestRepeatedReindexes(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: cases\ncolumns: {name: text}\ncreate: true\n", dsn))
	open(t, s)
	write(t, s, rec("r0", "1-a", map[string]any{"name": "round 0"}))
	for round, keepOld := range []bool{true, true, false, true} {
		target := rebuildTarget(t, s)
		write(t, target, rec(fmt.Sprintf("r%d", round+1), "1-a", map[string]any{"name": fmt.Sprint("round ", round+1)}))
		msg := promote(t, s, keepOld)
		want, rels := "table cases replaced by the rebuilt one (old one dropped)", "cases(r)\ncases__doc_id_idx(i)\ncases_pkey(i)"
		if keepOld {
			want, rels = "table cases replaced by the rebuilt one (old one kept as cases__old)", "cases(r)\ncases__doc_id_idx(i)\ncases__old(r)\ncases__old__doc_id_idx(i)\ncases__old_pkey(i)\ncases_pkey(i)"
		}
		if msg != want {
			t.Errorf("round %d: message %q, want %q", round+1, msg, want)
		}
		if got := relations(t, pg, dsn, "public"); got != rels {
			t.Fatalf("round %d: relations:\n%s\nwant\n%s", round+1, got, rels)
		}
		if got, want := table(t, pg, dsn, "SELECT _id FROM cases ORDER BY 1"), fmt.Sprintf("r%d", round+1); got != want {
			t.Fatalf("round %d: rows %s, want %s", round+1, got, want)
		}
		if keepOld {
			if got, want := table(t, pg, dsn, "SELECT _id FROM cases__old ORDER BY 1"), strings.TrimPrefix(fmt.Sprintf("live%d\nr%d", round-1, round), "live-1\n"); got != want {
				t.Fatalf("round %d: old rows %s, want %s", round+1, got, want)
			}
		}
		// The live sink writes on into the new table.
		write(t, s, rec(fmt.Sprintf("live%d", round), "1-a", nil))
		if got := count(dsn, fmt.Sprintf("SELECT count(*) FROM cases WHERE _id = 'live%d'", round)); got != 1 {
			t.Fatalf("round %d: the live write is not in the new table", round+1)
		}
		if got := table(t, pg, dsn, "SELECT conname FROM pg_constraint WHERE conrelid = 'cases'::regclass"); got != "cases_pkey" {
			t.Fatalf("round %d: constraints %s", round+1, got)
		}
	}
}

// TestRebuildWithoutLiveTable promotes a rebuilt table when the live one
// was never made.
func TestRebuildWithoutLiveTable(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: fresh\n", dsn))
	write(t, rebuildTarget(t, s), rec("a", "1-a", nil))
	if msg := promote(t, s, true); msg != "table fresh created from the rebuilt one (there was none)" {
		t.Errorf("message %q", msg)
	}
	if got, want := relations(t, pg, dsn, "public"), "fresh(r)\nfresh__doc_id_idx(i)\nfresh_pkey(i)"; got != want {
		t.Fatalf("relations:\n%s\nwant\n%s", got, want)
	}
	open(t, s)
	write(t, s, rec("b", "1-b", nil))
	if got := table(t, pg, dsn, "SELECT _id FROM fresh ORDER BY 1"); got != "a\nb" {
		t.Fatalf("rows %s", got)
	}
}

// TestRebuildSchemaQualified rebuilds schema.table, and an unqualified
// table the search path finds in another schema than the first.
func TestRebuildSchemaQualified(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: Reports.CaseList\nkey: case_id\ncolumns: {n: integer}\ncreate: true\n", dsn))
	open(t, s)
	write(t, s, rec("live", "1-a", map[string]any{"n": 1.0}))
	target := rebuildTarget(t, s)
	if got := target.dst.table.Sanitize(); got != `"Reports"."CaseList__reindex"` {
		t.Fatalf("rebuild table %s", got)
	}
	write(t, target, rec("rebuilt", "1-a", map[string]any{"n": 2.0}))
	if msg := promote(t, s, true); msg != "table Reports.CaseList replaced by the rebuilt one (old one kept as Reports.CaseList__old)" {
		t.Errorf("message %q", msg)
	}
	if got, want := relations(t, pg, dsn, "Reports"), "CaseList(r)\nCaseList__doc_id_idx(i)\nCaseList__old(r)\nCaseList__old__doc_id_idx(i)\nCaseList__old_pkey(i)\nCaseList_pkey(i)"; got != want {
		t.Fatalf("relations:\n%s\nwant\n%s", got, want)
	}
	write(t, s, rec("live2", "1-a", map[string]any{"n": 3.0}))
	if got := table(t, pg, dsn, `SELECT case_id, n FROM "Reports"."CaseList" ORDER BY 1`); got != "live2|3\nrebuilt|2" {
		t.Fatalf("rows %s", got)
	}
	if got := relations(t, pg, dsn, "public"); got != "" {
		t.Fatalf("relations in public: %s", got)
	}

	// search_path = first, second; the table is in second.
	pg.ExecIn(t, dsn, `CREATE SCHEMA first; CREATE SCHEMA second; CREATE TABLE second.t (_id text PRIMARY KEY, doc jsonb, _rev text, _seq bigint, _doc_id text)`)
	sp := dsn + "&search_path=first,second"
	s = loadSink(t, fmt.Sprintf("dsn: %q\ntable: t\n", sp))
	open(t, s)
	write(t, rebuildTarget(t, s), rec("rebuilt", "1-a", nil))
	promote(t, s, false)
	if got, want := relations(t, pg, dsn, "second"), "t(r)\nt__doc_id_idx(i)\nt_pkey(i)"; got != want {
		t.Fatalf("relations in second:\n%s\nwant\n%s", got, want)
	}
	if got := relations(t, pg, dsn, "first"); got != "" {
		t.Fatalf("relations in first: %s", got)
	}
	write(t, s, rec("live", "1-a", nil))
	if got := table(t, pg, dsn, `SELECT _id FROM second.t ORDER BY 1`); got != "live\nrebuilt" {
		t.Fatalf("rows %s", got)
	}
}

// TestLiveSinkFollowsPromote keeps a live sink writing, as the running
// pillow does, while a reindex (with another definition: a column more)
// rebuilds and swaps its table: every write succeeds, and those after
// the swap land in the new table.
func TestLiveSinkFollowsPromote(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	ctx := context.Background()
	live := loadSink(t, fmt.Sprintf("dsn: %q\ntable: cases\ncolumns: {name: text}\ncreate: true\n", dsn))
	open(t, live)
	rebuild := loadSink(t, fmt.Sprintf("dsn: %q\ntable: cases\ncolumns: {name: text, n: integer}\ncreate: true\n", dsn))

	// The live pillow: batches of new documents (COPY), updates and
	// deletions (upserts and deletes with a look-up), on both pooled
	// connections, so that every statement is prepared before the swap.
	var (
		stop    atomic.Bool
		batches atomic.Int64
		errs    = make(chan error, 1)
		done    = make(chan struct{})
		swapped atomic.Int64 // the batch count when Promote returned
		after   []string     // ids written after the swap
	)
	swapped.Store(-1)
	go func() {
		defer close(done)
		for i := 0; !stop.Load(); i++ {
			var recs []engine.Record
			for j := range 5 {
				recs = append(recs, rec(fmt.Sprintf("n%05d-%d", i, j), "1-a", map[string]any{"name": "new"}))
			}
			recs = append(recs,
				rec(fmt.Sprintf("u%02d", i%10), fmt.Sprintf("%d-a", i+1), map[string]any{"name": fmt.Sprint("update ", i)}),
				del(fmt.Sprintf("n%05d-0", i-1), "2-a"))
			if err := live.Write(ctx, recs); err != nil {
				errs <- fmt.Errorf("batch %d: %w", i, err)
				return
			}
			if swapped.Load() >= 0 {
				after = append(after, recs[1].ID)
			}
			batches.Add(1)
		}
	}()
	waitFor(t, "live writes", func() bool { return batches.Load() > 20 })

	target := rebuildTarget(t, rebuild)
	var recs []engine.Record
	for i := range 10 {
		recs = append(recs, rec(fmt.Sprintf("u%02d", i), "1-a", map[string]any{"name": "rebuilt", "n": float64(i)}))
	}
	write(t, target, recs...)
	promote(t, rebuild, false)
	swapped.Store(batches.Load())
	waitFor(t, "live writes after the swap", func() bool { return batches.Load() > swapped.Load()+20 })
	stop.Store(true)
	<-done
	select {
	case err := <-errs:
		t.Fatalf("a live write failed: %v", err)
	default:
	}
	if len(after) < 20 {
		t.Fatalf("%d batches after the swap", len(after))
	}
	// Whatever the live sink wrote after the swap is in the new table
	// (which has the rebuild's column n).
	ids := make([]string, len(after))
	for i, id := range after {
		ids[i] = quoteLiteral(id)
	}
	if got := count(dsn, "SELECT count(*) FROM cases WHERE n IS NULL AND _id IN ("+strings.Join(ids, ",")+")"); got != int64(len(after)) {
		t.Fatalf("%d of the %d live writes after the swap are in the new table", got, len(after))
	}
	// The rebuilt rows that the live pillow updated since carry its newer
	// revisions.
	if got := count(dsn, "SELECT count(*) FROM cases WHERE _id LIKE 'u%' AND _rev NOT LIKE '1-%' AND name LIKE 'update %'"); got != 10 {
		t.Fatalf("%d updated rows, want 10", got)
	}
}

// TestRebuildCheckpointed writes the rebuild's records with its
// checkpoint, in the store of the same database.
func TestRebuildCheckpointed(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	ctx := context.Background()
	cps, err := NewCheckpoints(&CheckpointConfig{DSN: dsn, Table: "cps"}, engine.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	defer cps.(*Checkpoints).Close()
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: t\ncreate: true\n", dsn))
	ts, _, err := s.RebuildTarget(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	target := ts.(engine.TransactionalSink)
	if !target.SharesStore(cps) {
		t.Fatal("the rebuild's sink does not share the store")
	}
	if err := target.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := target.WriteCheckpointed(ctx, []engine.Record{rec("a", "1-a", nil)}, "p.reindex", "5", nil); err != nil {
		t.Fatal(err)
	}
	if got := table(t, pg, dsn, "SELECT (SELECT seq FROM cps WHERE pillow = 'p.reindex'), (SELECT _id FROM t__reindex)"); got != "5|a" {
		t.Fatalf("checkpoint and rows %s", got)
	}
	promote(t, s, false)
	if err := target.WriteCheckpointed(ctx, []engine.Record{rec("b", "1-b", nil)}, "p.reindex", "6", nil); err != nil {
		t.Fatal(err)
	}
	if got := table(t, pg, dsn, "SELECT (SELECT seq FROM cps WHERE pillow = 'p.reindex'), (SELECT string_agg(_id, ',' ORDER BY _id) FROM t)"); got != "6|a,b" {
		t.Fatalf("checkpoint and rows after the swap %s", got)
	}

	// A store in the sink's database, shared before RebuildTarget, is
	// the rebuild's too.
	s2 := loadSink(t, fmt.Sprintf("dsn: %q\ntable: t2\ncreate: true\n", dsn))
	s2.SharesStore(cps)
	ts2, _, err := s2.RebuildTarget(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ts2.Close()
	if err := ts2.(engine.TransactionalSink).WriteCheckpointed(ctx, []engine.Record{rec("a", "1-a", nil)}, "q.reindex", "1", nil); err != nil {
		t.Fatal(err)
	}
}

// TestPromoteCarriesIndexesAndGrants: the live table's other indexes are
// built on the rebuilt one, under their names, and its privileges granted.
func TestPromoteCarriesIndexesAndGrants(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	role := "ptop_reader_" + strings.ToLower(strings.ReplaceAll(dsn[strings.LastIndex(dsn, "/")+1:strings.Index(dsn, "?")], "-", "_"))
	pg.ExecIn(t, dsn, fmt.Sprintf(`CREATE ROLE %s`, pgx.Identifier{role}.Sanitize()))
	t.Cleanup(func() {
		pg.ExecIn(t, dsn, "DROP OWNED BY "+pgx.Identifier{role}.Sanitize())
		pg.Exec(t, "DROP ROLE "+pgx.Identifier{role}.Sanitize())
	})
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: cases\ncolumns: {name: text, domain: text, dropped: text}\ncreate: true\n", dsn))
	open(t, s)
	write(t, s, rec("a", "1-a", map[string]any{"name": "A", "domain": "d"}))
	pg.ExecIn(t, dsn, fmt.Sprintf(`CREATE INDEX ON cases (name);
		CREATE UNIQUE INDEX by_domain ON cases (domain, name) WHERE domain IS NOT NULL;
		CREATE INDEX ON cases ((doc->>'x'));
		CREATE INDEX ON cases (dropped);
		GRANT SELECT, UPDATE ON cases TO %s`, pgx.Identifier{role}.Sanitize()))

	// The new definition has no column "dropped".
	rebuild := loadSink(t, fmt.Sprintf("dsn: %q\ntable: cases\ncolumns: {name: text, domain: text}\ncreate: true\n", dsn))
	target := rebuildTarget(t, rebuild)
	write(t, target, rec("a", "2-a", map[string]any{"name": "A", "domain": "d"}), rec("b", "1-a", map[string]any{"name": "B", "domain": "d"}))
	msg := promote(t, rebuild, false)
	if want := "table cases replaced by the rebuilt one (old one dropped); 3 indexes of the old table built: by_domain, cases_expr_idx, cases_name_idx"; msg != want {
		t.Errorf("message\n%s\nwant\n%s", msg, want)
	}
	want := `by_domain|CREATE UNIQUE INDEX by_domain ON public.cases USING btree (domain, name) WHERE (domain IS NOT NULL)
cases__doc_id_idx|CREATE INDEX cases__doc_id_idx ON public.cases USING btree (_doc_id)
cases_expr_idx|CREATE INDEX cases_expr_idx ON public.cases USING btree (((doc ->> 'x'::text)))
cases_name_idx|CREATE INDEX cases_name_idx ON public.cases USING btree (name)
cases_pkey|CREATE UNIQUE INDEX cases_pkey ON public.cases USING btree (_id)`
	indexes := func() string {
		return table(t, pg, dsn, "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'cases'::regclass ORDER BY 1")
	}
	if got := indexes(); got != want {
		t.Fatalf("indexes:\n%s\nwant\n%s", got, want)
	}
	if got := table(t, pg, dsn, fmt.Sprintf("SELECT has_table_privilege(%[1]s, 'cases', 'SELECT'), has_table_privilege(%[1]s, 'cases', 'UPDATE'), has_table_privilege(%[1]s, 'cases', 'DELETE')", quoteLiteral(role))); got != "true|true|false" {
		t.Fatalf("privileges of %s: %s", role, got)
	}

	// Again: the same indexes under the same names; a unique index the
	// rebuilt rows break stops the promotion.
	target = rebuildTarget(t, rebuild)
	write(t, target, rec("a", "1-a", map[string]any{"name": "A", "domain": "d"}), rec("b", "1-b", map[string]any{"name": "A", "domain": "d"}))
	_, err := rebuild.Promote(context.Background(), true)
	if err == nil || !strings.Contains(err.Error(), "building index by_domain of table cases on the rebuilt table") {
		t.Fatalf("Promote with a broken unique index: %v", err)
	}
	write(t, target, del("b", "1-b"))
	promote(t, rebuild, true)
	if got := indexes(); got != want {
		t.Fatalf("indexes after the second rebuild:\n%s\nwant\n%s", got, want)
	}
	if got, want := relations(t, pg, dsn, "public"), "by_domain(i)\ncases(r)\ncases__doc_id_idx(i)\ncases__old(r)\ncases__old__doc_id_idx(i)\ncases__old_by_domain(i)\ncases__old_expr_idx(i)\ncases__old_name_idx(i)\ncases__old_pkey(i)\ncases_expr_idx(i)\ncases_name_idx(i)\ncases_pkey(i)"; got != want {
		t.Fatalf("relations:\n%s\nwant\n%s", got, want)
	}
}

func TestIndexNames(t *testing.T) {
	long := strings.Repeat("x", 54)
	for _, tc := range []struct{ rel, label, name string }{
		{"cases", "pkey", "cases_pkey"},
		{"cases__reindex", "name_idx", "cases__reindex_name_idx"},
		{long + "__reindex", "pkey", long + "__re_pkey"},
		{"é" + strings.Repeat("y", 60), "pkey", "é" + strings.Repeat("y", 56) + "_pkey"},
		{"t", strings.Repeat("l", 62), ""},
	} {
		got := objName(tc.rel, tc.label)
		if got != tc.name {
			t.Errorf("objName(%q, %q) = %q, want %q", tc.rel, tc.label, got, tc.name)
		}
		if got != "" {
			if base := indexBase(tc.rel, got); base != tc.label {
				t.Errorf("indexBase(%q, %q) = %q, want %q", tc.rel, got, base, tc.label)
			}
		}
	}
	if got := indexBase("cases", "by_domain"); got != "by_domain" {
		t.Errorf("indexBase of a name of its own: %q", got)
	}
	if got := indexBase("my_cases", "my_cases_pkey"); got != "pkey" {
		t.Errorf("indexBase(my_cases): %q", got)
	}
}
