package postgres

import (
	"context"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// table reads a table's rows as "key:rev:gen:col1:col2…" strings, by key.
func table(t testing.TB, pg *testenv.Postgres, dsn, sql string) string {
	t.Helper()
	var out []string
	for _, r := range pg.Query(t, dsn, sql) {
		parts := make([]string, len(r))
		for i, v := range r {
			switch x := v.(type) {
			case nil:
				parts[i] = "NULL"
			case time.Time:
				parts[i] = x.UTC().Format(time.RFC3339)
			default:
				parts[i] = fmt.Sprint(x)
			}
		}
		out = append(out, strings.Join(parts, "|"))
	}
	return strings.Join(out, "\n")
}

func TestUpsertDeleteAndRevisions(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: cases\ncolumns: {name: text, n: integer}\ncreate: true\n", dsn))
	open(t, s)
	rows := func() string {
		return table(t, pg, dsn, `SELECT _id, name, n, doc, _rev, _seq FROM cases ORDER BY _id`)
	}

	write(t, s,
		rec("a", "1-a", map[string]any{"_id": "a", "_rev": "1-a", "name": "A", "n": int64(1), "x": "ax"}),
		rec("b", "1-b", map[string]any{"name": "B", "n": 2.0}),
		rec("c", "", map[string]any{"name": "C"}),
	)
	want := "a|A|1|map[x:ax]|1-a|1\nb|B|2|map[]|1-b|1\nc|C|NULL|map[]|NULL|NULL"
	if got := rows(); got != want {
		t.Fatalf("after insert:\n%s\nwant\n%s", got, want)
	}

	// Updates replace (the upsert path: the keys exist); a deletion removes.
	write(t, s,
		rec("a", "2-a", map[string]any{"name": "A2", "y": true}),
		del("b", "2-b"),
		rec("d", "1-d", map[string]any{"name": "D"}),
	)
	want = "a|A2|NULL|map[y:true]|2-a|2\nc|C|NULL|map[]|NULL|NULL\nd|D|NULL|map[]|1-d|1"
	if got := rows(); got != want {
		t.Fatalf("after update:\n%s\nwant\n%s", got, want)
	}

	// Older revisions change nothing: neither an update nor a deletion.
	write(t, s,
		rec("a", "1-a", map[string]any{"name": "stale"}),
		del("d", "0-d"),
		rec("a", "2-b", map[string]any{"name": "A2 again"}), // same generation: replaces
	)
	want = "a|A2 again|NULL|map[]|2-b|2\nc|C|NULL|map[]|NULL|NULL\nd|D|NULL|map[]|1-d|1"
	if got := rows(); got != want {
		t.Fatalf("after stale writes:\n%s\nwant\n%s", got, want)
	}
	write(t, s, del("a", "1-x"))
	if got := rows(); got != want {
		t.Fatalf("a stale deletion removed a row:\n%s", got)
	}

	// Without a revision there is no order: written whatever the row's
	// generation; and a revision then replaces them.
	write(t, s, rec("a", "", map[string]any{"name": "no rev"}), del("d", ""))
	want = "a|no rev|NULL|map[]|NULL|NULL\nc|C|NULL|map[]|NULL|NULL"
	if got := rows(); got != want {
		t.Fatalf("after rev-less writes:\n%s\nwant\n%s", got, want)
	}
	write(t, s, rec("c", "1-c", map[string]any{"name": "C1"}))
	if got := rows(); !strings.Contains(got, "c|C1|NULL|map[]|1-c|1") {
		t.Fatalf("a revision did not replace a rev-less row:\n%s", got)
	}

	// A deleted row comes back with a newer revision.
	write(t, s, rec("b", "3-b", map[string]any{"name": "B3"}))
	if got := rows(); !strings.Contains(got, "b|B3|NULL|map[]|3-b|3") {
		t.Fatalf("recreated row missing:\n%s", got)
	}
	// Deleting what is not there is fine.
	write(t, s, del("nothing", "1-x"))
}

func TestDuplicateIDsInBatch(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: t\ncolumns: {v: text}\ncreate: true\ndoc: false\n", dsn))
	open(t, s)
	rows := func() string { return table(t, pg, dsn, `SELECT _id, v, _rev FROM t ORDER BY _id`) }
	for _, round := range []string{"new", "existing"} {
		write(t, s,
			rec("a", "1-a", map[string]any{"v": "a1 " + round}),
			rec("b", "1-b", map[string]any{"v": "b1 " + round}),
			rec("a", "2-a", map[string]any{"v": "a2 " + round}),
			rec("a", "1-z", map[string]any{"v": "a1 stale " + round}), // older: does not win
			rec("c", "1-c", map[string]any{"v": "c1 " + round}),
			del("c", "2-c"),
			del("d", "1-d"),
			rec("d", "2-d", map[string]any{"v": "d2 " + round}),
			rec("b", "1-b", map[string]any{"v": "b1 last " + round}), // same generation: the last wins
		)
		want := fmt.Sprintf("a|a2 %[1]s|2-a\nb|b1 last %[1]s|1-b\nd|d2 %[1]s|2-d", round)
		if round == "existing" {
			// The second round's revisions equal the first's: they replace.
			want = "a|a2 existing|2-a\nb|b1 last existing|1-b\nd|d2 existing|2-d"
		}
		if got := rows(); got != want {
			t.Fatalf("%s:\n%s\nwant\n%s", round, got, want)
		}
	}
}

func TestValuesAreData(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: weird\ncolumns: {name: text, \"Odd \\\"col\\\"; DROP\": text, j: jsonb}\ncreate: true\n", dsn))
	open(t, s)
	nasty := []string{
		`'; DROP TABLE weird; --`,
		`Robert'); DROP TABLE students;--`,
		`"double" and 'single' quotes`,
		"tab\there, newline\nthere, return\r, backslash \\ and \\N and \\.",
		`$1 $$ dollar $$ quoting $tag$`,
		"ünïcødé ✓ 日本語 🎉",
		"\\.\n\\.",
		"",
	}
	for round := 1; round <= 2; round++ { // COPY path, then the upsert path
		var recs []engine.Record
		for i, v := range nasty {
			id := fmt.Sprintf("%s#%d", v, i)
			recs = append(recs, rec(id, fmt.Sprintf("%d-x", round), map[string]any{
				"name": v, "Odd \"col\"; DROP": v, "j": v, v: v,
			}))
		}
		write(t, s, recs...)
		got := pg.Query(t, dsn, `SELECT _id, name, "Odd ""col""; DROP", j, doc FROM weird ORDER BY _id`)
		if len(got) != len(nasty) {
			t.Fatalf("round %d: %d rows, want %d", round, len(got), len(nasty))
		}
		byID := map[string][]any{}
		for _, r := range got {
			byID[r[0].(string)] = r
		}
		for i, v := range nasty {
			r := byID[fmt.Sprintf("%s#%d", v, i)]
			if r == nil {
				t.Fatalf("round %d: no row for %q", round, v)
			}
			if r[1] != v || r[2] != v || r[3] != v || !reflect.DeepEqual(r[4], map[string]any{v: v}) {
				t.Errorf("round %d: %q stored as %q", round, v, r[1:])
			}
		}
	}
	if n := pg.Query(t, dsn, "SELECT count(*) FROM pg_tables WHERE tablename = 'weird'")[0][0]; n != int64(1) {
		t.Fatal("table gone")
	}
}

func TestConversions(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf(`dsn: %q
table: conv
columns:
  i: integer
  big: bigint
  num: numeric(10,2)
  f: double precision
  b: boolean
  ts: timestamptz
  d: date
  tags: text[]
  ints: int[]
  j: jsonb
  obj: jsonb
  s: text
create: true
`, dsn))
	open(t, s)
	write(t, s, rec("x", "1-x", map[string]any{
		"i": int64(42), "big": 9007199254740993.0, "num": "12.345", "f": 0.1,
		"b": true, "ts": "2026-01-31T08:00:00+03:00", "d": "Jan 31 2026",
		"tags": []any{"a", "b,c", `q"uote`, nil}, "ints": []any{1.0, int64(2)},
		"j": "a string", "obj": map[string]any{"k": []any{1.0, "two"}},
		"s": map[string]any{"z": 1.0},
	}))
	got := table(t, pg, dsn, `SELECT i, big, num::text, f, b, ts, d::text, tags::text, ints::text, j::text, obj::text, s FROM conv`)
	want := `42|9007199254740992|12.35|0.1|true|2026-01-31T05:00:00Z|2026-01-31|{a,"b,c","q\"uote",NULL}|{1,2}|"a string"|{"k": [1, "two"]}|{"z":1}`
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	// A modifier is checked, not applied by cutting: on the COPY path and
	// on the upsert path alike.
	pg.ExecIn(t, dsn, "ALTER TABLE conv ADD COLUMN short varchar(3), ADD COLUMN money numeric(5,1)")
	s2 := loadSink(t, fmt.Sprintf("dsn: %q\ntable: conv\ncolumns: {short: varchar(3), money: \"numeric(5,1)\"}\n", dsn))
	open(t, s2)
	for _, id := range []string{"new", "x"} { // not in the table yet; there
		err := s2.Write(context.Background(), []engine.Record{
			rec(id, "5-a", map[string]any{"short": "abcd", "money": 1.25}),
			rec(id+"2", "5-a", map[string]any{"short": "abc", "money": 1.25}),
		})
		var re engine.RecordErrors
		if !errors.As(err, &re) || len(re) != 1 || re[0].Index != 0 || !strings.Contains(re[0].Err.Error(), "too long") {
			t.Fatalf("%s: %v", id, err)
		}
		if got := table(t, pg, dsn, "SELECT short, money::text FROM conv WHERE _id = '"+id+"2'"); got != "abc|1.3" {
			t.Fatalf("%s: %s", id, got)
		}
	}
	// Missing fields and nulls are NULL.
	write(t, s, rec("y", "1-y", map[string]any{"i": nil}))
	if got := table(t, pg, dsn, `SELECT i, ts, j FROM conv WHERE _id = 'y'`); got != "NULL|NULL|NULL" {
		t.Fatalf("nulls: %s", got)
	}
}

func TestRecordErrors(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: t\ncolumns: {opened_on: timestamptz, n: smallint}\ncreate: true\n", dsn))
	open(t, s)
	batch := func(gen int) []engine.Record {
		var rs []engine.Record
		for i := 0; i < 20; i++ {
			d := map[string]any{"opened_on": "2026-01-01T00:00:00Z", "n": float64(i)}
			switch i {
			case 3:
				d["opened_on"] = "not-a-date"
			case 11:
				d["n"] = 1e6 // out of range for smallint
			case 12:
				d["note"] = "NUL \u0000 in jsonb" // jsonb refuses \u0000
			case 17:
				d["opened_on"] = "nul \x00 byte" // text cannot hold it
			}
			rev := fmt.Sprintf("%d-r", gen)
			if i == 7 {
				rs = append(rs, engine.Record{ID: "r7", Rev: rev, Doc: []any{"not an object"}})
				continue
			}
			rs = append(rs, rec(fmt.Sprintf("r%02d", i), rev, d))
		}
		return rs
	}
	for gen := 1; gen <= 2; gen++ { // new rows (COPY fails), then existing ones (upsert fails)
		err := s.Write(context.Background(), batch(gen))
		var re engine.RecordErrors
		if !errors.As(err, &re) {
			t.Fatalf("gen %d: error %v, want RecordErrors", gen, err)
		}
		var idx []int
		for _, e := range re {
			idx = append(idx, e.Index)
		}
		if fmt.Sprint(idx) != "[3 7 11 12 17]" {
			t.Fatalf("gen %d: rejected %v: %v", gen, idx, err)
		}
		for _, e := range re {
			t.Logf("record %d: %v", e.Index, e.Err)
		}
		if msg := re[0].Err.Error(); !strings.Contains(msg, "not-a-date") || !strings.Contains(msg, "22007") {
			t.Errorf("message of record 3: %s", msg)
		}
		got := pg.Query(t, dsn, "SELECT count(*), min(_seq), max(_seq) FROM t")[0]
		if got[0] != int64(15) || got[1] != int64(gen) || got[2] != int64(gen) {
			t.Fatalf("gen %d: rows %v, want 15 of generation %d", gen, got, gen)
		}
	}
}

func TestCreateTable(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: Reports.CaseList\nkey: case_id\ncolumns:\n  zeta: text\n  opened_on: timestamptz\n  tags: text[]\ncreate: true\n", dsn))
	open(t, s)
	got := table(t, pg, dsn, `SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute
		WHERE attrelid = '"Reports"."CaseList"'::regclass AND attnum > 0 ORDER BY attnum`)
	want := "case_id|text|true\nzeta|text|false\nopened_on|timestamp with time zone|false\ntags|text[]|false\ndoc|jsonb|false\n_rev|text|false\n_seq|bigint|false\n_doc_id|text|false"
	if got != want {
		t.Fatalf("columns:\n%s\nwant\n%s", got, want)
	}
	write(t, s, rec("k1", "1-a", map[string]any{"zeta": "z", "case_id": "ignored", "other": 1.0}))
	if got := table(t, pg, dsn, `SELECT case_id, zeta, doc FROM "Reports"."CaseList"`); got != "k1|z|map[other:1]" {
		t.Fatalf("row %s", got)
	}
	s.Close()

	// Opening again finds the table; a new column is added.
	s2 := loadSink(t, fmt.Sprintf("dsn: %q\ntable: Reports.CaseList\nkey: case_id\ncolumns:\n  zeta: text\n  added: integer\ncreate: true\n", dsn))
	open(t, s2)
	write(t, s2, rec("k2", "1-a", map[string]any{"added": 5.0}))
	if got := table(t, pg, dsn, `SELECT case_id, added FROM "Reports"."CaseList" ORDER BY 1`); got != "k1|NULL\nk2|5" {
		t.Fatalf("rows %s", got)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	pg.ExecIn(t, dsn, `CREATE TABLE partial (_id text PRIMARY KEY, name text, _rev text);
		CREATE TABLE nokey (_id text, doc jsonb, _rev text, _seq bigint, _doc_id text)`)
	for _, tc := range []struct{ cfg, want string }{
		{"table: missing\n", `table missing does not exist: create it, or set create: true`},
		{"table: s.missing\n", `table s.missing does not exist`},
		{
			"table: partial\ncolumns: {name: text, opened_on: timestamptz}\n",
			`table partial has no column "opened_on", "doc", "_seq", "_doc_id": add them with ALTER TABLE "partial" ADD COLUMN "opened_on" timestamptz, ADD COLUMN "doc" jsonb, ADD COLUMN "_seq" bigint, ADD COLUMN "_doc_id" text; CREATE INDEX ON "partial" ("_doc_id"), or set create: true`,
		},
		{"table: partial\nkey: id\ndoc: false\n", `table partial has no key column "id"`},
		{"table: nokey\n", `table nokey has no primary key or unique index on its key column "_id" (upserts need one): ALTER TABLE "nokey" ADD PRIMARY KEY ("_id")`},
		{"table: x\ncolumns: {a: nosuchtype}\ncreate: true\n", `column "a": type "nosuchtype" does not exist in this database`},
	} {
		s := loadSink(t, fmt.Sprintf("dsn: %q\n", dsn)+tc.cfg)
		err := s.Open(context.Background())
		s.Close()
		if err == nil || err.Error() != tc.want && !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: error\n%v\nwant\n%s", tc.cfg, err, tc.want)
		} else if !engine.IsPermanent(err) {
			t.Errorf("%s: error not permanent: %v", tc.cfg, err)
		}
	}

	// A missing database and a refused connection: permanent, and not.
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: x\n", pg.DSNFor("nodb")))
	if err := s.Open(context.Background()); !engine.IsPermanent(err) || !strings.Contains(err.Error(), "nodb") {
		t.Errorf("missing database: %v (permanent %v)", err, engine.IsPermanent(err))
	}
	s.Close()
	port, _ := testenv.FreePort()
	s = loadSink(t, fmt.Sprintf("dsn: postgres://u:secret@127.0.0.1:%d/db?sslmode=disable&connect_timeout=2\ntable: x\n", port))
	err := s.Open(context.Background())
	if err == nil || engine.IsPermanent(err) || strings.Contains(err.Error(), "secret") {
		t.Errorf("refused connection: %v (permanent %v)", err, engine.IsPermanent(err))
	}
	s.Close()
}

// A table dropped while the pillow runs: with create it is made again,
// without it the write fails permanently.
func TestTableDroppedWhileRunning(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	for _, create := range []bool{true, false} {
		pg.ExecIn(t, dsn, "CREATE TABLE IF NOT EXISTS dropme (_id text PRIMARY KEY, doc jsonb, _rev text, _seq bigint, _doc_id text)")
		s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: dropme\ncreate: %v\n", dsn, create))
		open(t, s)
		write(t, s, rec("a", "1-a", map[string]any{}))
		pg.ExecIn(t, dsn, "DROP TABLE dropme")
		err := s.Write(context.Background(), []engine.Record{rec("b", "1-b", map[string]any{})})
		if err == nil || engine.IsPermanent(err) {
			t.Fatalf("create %v: first write after the drop: %v", create, err)
		}
		err = s.Write(context.Background(), []engine.Record{rec("b", "1-b", map[string]any{})})
		if create && err != nil {
			t.Fatalf("write after the drop with create: %v", err)
		}
		if !create && !engine.IsPermanent(err) {
			t.Fatalf("write after the drop without create: %v", err)
		}
		s.Close()
	}
}

func TestCheckpointStore(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	cps, err := NewCheckpoints(&CheckpointConfig{DSN: dsn, Table: "meta.cps"}, engine.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	defer cps.(*Checkpoints).Close()
	ctx := context.Background()
	if seq, err := cps.LoadCheckpoint(ctx, "p"); seq != "" || err != nil {
		t.Fatalf("first load: %q, %v", seq, err)
	}
	for _, seq := range []string{"12", "13-g1AAAAB5eJzLYWBg4MhgTmHgz8tPSTV0MDQy1zMAQsMcoEQiQ1L9____szKYE"} {
		if err := cps.SaveCheckpoint(ctx, "p", seq); err != nil {
			t.Fatal(err)
		}
		if got, err := cps.LoadCheckpoint(ctx, "p"); got != seq || err != nil {
			t.Fatalf("load: %q, %v; want %q", got, err, seq)
		}
	}
	if got, _ := cps.LoadCheckpoint(ctx, "other"); got != "" {
		t.Fatalf("other pillow: %q", got)
	}
	if n := pg.Query(t, dsn, "SELECT count(*) FROM meta.cps WHERE updated_at > now() - interval '1 minute'")[0][0]; n != int64(1) {
		t.Fatalf("rows %v", n)
	}
}

func TestSharesStore(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: t\ncreate: true\n", dsn))
	store := func(dsn string) engine.CheckpointStore {
		c, err := NewCheckpoints(&CheckpointConfig{DSN: dsn, Table: "cps"}, engine.BuildContext{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// The same server, database and user, written differently.
	kv := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=5", pg.Host, pg.Port, pg.User, strings.Split(strings.Split(dsn, "/")[3], "?")[0])
	for _, other := range []string{pg.DSNFor("ptop"), strings.Replace(dsn, "postgres@", "someone@", 1)} {
		if s.SharesStore(store(other)) {
			t.Errorf("shares a store with %s", other)
		}
	}
	if s.SharesStore(nil) {
		t.Error("shares a nil store")
	}
	if !s.SharesStore(store(kv)) {
		t.Fatalf("does not share a store with %s", kv)
	}
	open(t, s)
	ctx := context.Background()
	if err := s.WriteCheckpointed(ctx, []engine.Record{rec("a", "1-a", map[string]any{})}, "p", "7", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteCheckpointed(ctx, nil, "p", "8-opaque", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteCheckpointed(ctx, []engine.Record{rec("b", "1-b", map[string]any{})}, "p", "", nil); err != nil {
		t.Fatal(err)
	}
	if got := table(t, pg, dsn, "SELECT pillow, seq FROM cps"); got != "p|8-opaque" {
		t.Fatalf("checkpoints %s", got)
	}
	if got := table(t, pg, dsn, "SELECT _id FROM t ORDER BY 1"); got != "a\nb" {
		t.Fatalf("rows %s", got)
	}

	// A rejected record is reported, and the rest commits with the checkpoint.
	err := s.WriteCheckpointed(ctx, []engine.Record{rec("c", "1-c", map[string]any{}), {ID: "", Rev: "1-x"}}, "p", "9", nil)
	var re engine.RecordErrors
	if !errors.As(err, &re) || len(re) != 1 || re[0].Index != 1 {
		t.Fatalf("error %v", err)
	}
	if got := table(t, pg, dsn, "SELECT seq, (SELECT count(*) FROM t) FROM cps"); got != "9|3" {
		t.Fatalf("checkpoint and rows %s", got)
	}
}

func TestClassify(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: code, Message: "m"}) }
	for _, tc := range []struct {
		err               error
		permanent, record bool
	}{
		{pg("57P01"), false, false}, // admin shutdown
		{pg("57P03"), false, false}, // starting up
		{pg("40001"), false, false}, // serialization failure
		{pg("53300"), false, false}, // too many connections
		{pg("28P01"), true, false},  // bad password
		{pg("3D000"), true, false},  // no such database
		{pg("22007"), false, true},  // bad datetime
		{pg("23502"), false, true},  // not null
		{pg("54000"), false, true},  // index row too large
		{context.DeadlineExceeded, false, false},
		{errors.New("connection reset by peer"), false, false},
	} {
		if got := engine.IsPermanent(classify(tc.err)); got != tc.permanent {
			t.Errorf("%v: permanent %v, want %v", tc.err, got, tc.permanent)
		}
		if got := isRecordError(tc.err); got != tc.record {
			t.Errorf("%v: record error %v, want %v", tc.err, got, tc.record)
		}
	}
}

// TestLeaseStore: leases are compare-and-swapped: a write with a stale
// version is a conflict, as is a first write of a lease that exists.
func TestLeaseStore(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	c, err := NewCheckpoints(&CheckpointConfig{DSN: dsn, Table: "meta.cps"}, engine.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	cps := c.(*Checkpoints)
	defer cps.Close()
	ctx := context.Background()
	if l, err := cps.ReadLease(ctx, "p"); err != nil || l != (engine.Lease{}) {
		t.Fatalf("unwritten lease: %+v, %v", l, err)
	}
	at := time.Now().UTC().Truncate(time.Microsecond)
	a := engine.Lease{Holder: "a:1:x", TTL: 3 * time.Second, Renewed: at, Space: "h/ns"}
	v1, err := cps.WriteLease(ctx, "p", "", a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cps.WriteLease(ctx, "p", "", engine.Lease{Holder: "b:2:y"}); !errors.Is(err, engine.ErrLeaseConflict) {
		t.Fatalf("second first write: %v", err)
	}
	got, err := cps.ReadLease(ctx, "p")
	if err != nil || got.Holder != a.Holder || got.TTL != a.TTL || !got.Renewed.Equal(at) || got.Space != a.Space || got.Version != v1 {
		t.Fatalf("read %+v, %v; wrote %+v version %s", got, err, a, v1)
	}
	v2, err := cps.WriteLease(ctx, "p", v1, a)
	if err != nil || v2 == v1 {
		t.Fatalf("renewal: %q, %v", v2, err)
	}
	if _, err := cps.WriteLease(ctx, "p", v1, engine.Lease{Holder: "b:2:y"}); !errors.Is(err, engine.ErrLeaseConflict) {
		t.Fatalf("write with a stale version: %v", err)
	}
	if l, _ := cps.ReadLease(ctx, "p"); l.Holder != a.Holder {
		t.Fatalf("holder %q after a lost race", l.Holder)
	}
	if n := pg.Query(t, dsn, "SELECT count(*) FROM meta.cps_lease")[0][0]; n != int64(1) {
		t.Fatalf("rows %v", n)
	}
}

// TestColumnTypeAltered: after ALTER COLUMN … TYPE while the sink runs,
// values the table now takes are not rejected under the old type: the
// sink reads the table's types again and writes the batch again, once.
func TestColumnTypeAltered(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf("dsn: %q\ntable: t\ncolumns: {n: integer}\ncreate: true\n", dsn))
	open(t, s)
	write(t, s, rec("a", "1-a", map[string]any{"n": 1.0}), rec("b", "1-b", map[string]any{"n": 2.0}))
	pg.ExecIn(t, dsn, "ALTER TABLE t ALTER COLUMN n TYPE bigint")
	for _, round := range []struct {
		name string
		ids  [3]string
	}{{"existing rows (upsert)", [3]string{"a", "b", "c"}}, {"new rows (COPY)", [3]string{"x", "y", "z"}}} {
		err := s.Write(context.Background(), []engine.Record{
			rec(round.ids[0], "2-a", map[string]any{"n": 5e9}),
			rec(round.ids[1], "2-b", map[string]any{"n": "not a number"}),
			rec(round.ids[2], "2-c", map[string]any{"n": 6e9}),
		})
		var re engine.RecordErrors
		if !errors.As(err, &re) || len(re) != 1 || re[0].Index != 1 {
			t.Fatalf("%s: error %v, want only record 1 rejected", round.name, err)
		}
		got := pg.Query(t, dsn, fmt.Sprintf("SELECT n FROM t WHERE _id IN ('%s', '%s') ORDER BY _id", round.ids[0], round.ids[2]))
		if len(got) != 2 || got[0][0] != int64(5e9) || got[1][0] != int64(6e9) {
			t.Fatalf("%s: rows %v, want 5000000000 and 6000000000", round.name, got)
		}
	}
}

// A document passed through as the feed sent it (json.RawMessage) keeps
// its numbers exact in numeric, bigint and jsonb columns and in doc.
func TestRawDocumentNumbersExact(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	s := loadSink(t, fmt.Sprintf(`dsn: %q
table: exact
columns:
  big: bigint
  num: numeric
  j: jsonb
create: true
`, dsn))
	open(t, s)
	raw := stdjson.RawMessage(`{"_id":"x","big":9007199254740993,"num":12345678901234567890123,"j":{"n":12345678901234567890123},"other":9007199254740993}`)
	write(t, s, engine.Record{ID: "x", DocID: "x", Rev: "1-x", Doc: raw})
	got := table(t, pg, dsn, `SELECT big, num::text, j::text, doc->>'other' FROM exact`)
	if want := `9007199254740993|12345678901234567890123|{"n": 12345678901234567890123}|9007199254740993`; got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}
