package postgres

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	json "github.com/goccy/go-json"
	"github.com/jackc/pgx/v5"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// The benchmarks write 100k records, as the case-search transform makes
// them from internal/cmd/gendocs documents (~420 bytes): 8 columns and the
// rest in doc, in batches of 500 and 5000. Each is reported beside the
// bound, measured in the same iterations: the same rows, already typed,
// in one pgx COPY into an empty table of the same shape (raw-rows/s, %raw),
// and beside the same COPY done in the sink's batches, one transaction
// each (%raw-same-batches).
//
//	go test -run '^$' -bench Postgres -benchtime 3x ./builtins/postgres

const benchRecords = 100_000

const benchColumns = `{doc_type: text, domain: text, name: text, owner_id: text, opened_on: timestamptz, modified_on: timestamptz, closed: boolean, age: integer}`

var (
	villages = []string{"Kisumu", "Nakuru", "Eldoret", "Machakos"}
	first    = []string{"amina", "brian", "chege", "dalia", "esther", "faith", "grace", "hassan"}
)

// benchRecord is record i with revision generation gen.
func benchRecord(i, gen int) engine.Record {
	id := fmt.Sprintf("case-%08d", i)
	return engine.Record{ID: id, DocID: id, Rev: fmt.Sprintf("%d-%032x", gen, i), Doc: map[string]any{
		"_id":         id,
		"doc_type":    "CommCareCase",
		"domain":      []string{"demo", "prod", "test"}[i%3],
		"type":        "patient",
		"name":        fmt.Sprintf("%s %d", first[i%len(first)], i),
		"owner_id":    fmt.Sprintf("owner-%04d", i%500),
		"opened_on":   time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute).Format(time.RFC3339),
		"modified_on": time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(i+gen) * time.Minute).Format(time.RFC3339),
		"closed":      i%7 == 0,
		"age":         int64(1 + i%90),
		"village":     villages[i%len(villages)],
		"phone":       fmt.Sprintf("+2547%08d", i),
		"risk":        []string{"low", "medium", "high"}[i%3],
		"indices":     []any{map[string]any{"identifier": "parent", "referenced_type": "household", "referenced_id": fmt.Sprintf("hh-%06d", i/4)}},
	}}
}

var benchData = sync.OnceValue(func() []engine.Record {
	rs := make([]engine.Record, benchRecords)
	for i := range rs {
		rs[i] = benchRecord(i, 1)
	}
	return rs
})

// rawRows are the bench records as typed rows of the sink's table.
func rawRows(recs []engine.Record) [][]any {
	rows := make([][]any, len(recs))
	for i, r := range recs {
		d := r.Doc.(map[string]any)
		rest := map[string]any{"type": d["type"], "village": d["village"], "phone": d["phone"], "risk": d["risk"], "indices": d["indices"]}
		doc, _ := json.Marshal(rest)
		opened, _ := time.Parse(time.RFC3339, d["opened_on"].(string))
		modified, _ := time.Parse(time.RFC3339, d["modified_on"].(string))
		rows[i] = []any{
			r.ID, d["doc_type"], d["domain"], d["name"], d["owner_id"], opened, modified,
			d["closed"], int32(d["age"].(int64)), string(doc), r.Rev, int64(1),
		}
	}
	return rows
}

var rawColumns = []string{"_id", "doc_type", "domain", "name", "owner_id", "opened_on", "modified_on", "closed", "age", "doc", "_rev", "_seq"}

func BenchmarkPostgres(b *testing.B) {
	pg := testenv.SharedPostgres(b)
	dsn := pg.NewDatabase(b)
	recs := benchData()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(sql string) {
		if _, err := conn.Exec(ctx, sql); err != nil {
			b.Fatal(err)
		}
	}
	// The table as the sink creates it, made once by a sink.
	sink := loadSink(b, fmt.Sprintf("dsn: %q\ntable: cases\ncolumns: %s\ncreate: true\n", dsn, benchColumns))
	open(b, sink)
	sink.Close()
	exec("CREATE TABLE template (LIKE cases INCLUDING ALL)")
	fresh := func() {
		exec("DROP TABLE IF EXISTS cases; CREATE TABLE cases (LIKE template INCLUDING ALL); CHECKPOINT")
	}

	rows := rawRows(recs)
	// rawCopy copies the rows into a fresh table, in batches of batch
	// rows, each a transaction (0: all at once).
	rawCopy := func(batch int) time.Duration {
		fresh()
		if batch == 0 {
			batch = len(rows)
		}
		start := time.Now()
		for lo := 0; lo < len(rows); lo += batch {
			if _, err := conn.CopyFrom(ctx, pgx.Identifier{"cases"}, rawColumns, pgx.CopyFromRows(rows[lo:min(lo+batch, len(rows))])); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}

	// Each iteration measures the raw COPY next to the sink, so that both
	// see the same machine (shared, noisy).
	run := func(name string, batch int, prepare func(), data []engine.Record) {
		b.Run(name, func(b *testing.B) {
			var total, raw, rawBatched time.Duration
			for i := 0; i < b.N; i++ {
				raw += rawCopy(0)
				rawBatched += rawCopy(batch)
				prepare()
				s := loadSink(b, fmt.Sprintf("dsn: %q\ntable: cases\ncolumns: %s\n", dsn, benchColumns))
				open(b, s)
				start := time.Now()
				for lo := 0; lo < len(data); lo += batch {
					// As a pillow writes: with the record set of each
					// document, the rows it no longer produces removed.
					part := data[lo:min(lo+batch, len(data))]
					// (The engine leaves out documents at their first
					// revision: they have no rows to remove.)
					var sets []engine.DocSet
					for _, r := range part {
						if !strings.HasPrefix(r.Rev, "1-") {
							sets = append(sets, engine.DocSet{DocID: r.DocID, Rev: r.Rev, IDs: []string{r.ID}})
						}
					}
					if err := s.WriteDocSets(ctx, part, sets, "", "", nil); err != nil {
						b.Fatal(err)
					}
				}
				total += time.Since(start)
				s.Close()
			}
			rate := float64(len(data)*b.N) / total.Seconds()
			rawRate := float64(benchRecords*b.N) / raw.Seconds()
			rawBatchedRate := float64(benchRecords*b.N) / rawBatched.Seconds()
			b.ReportMetric(rate, "rows/s")
			b.ReportMetric(rawRate, "raw-rows/s")
			b.ReportMetric(100*rate/rawRate, "%raw")
			b.ReportMetric(100*rate/rawBatchedRate, "%raw-same-batches")
			b.ReportMetric(0, "ns/op")
		})
	}
	// New rows: the COPY path.
	run("new-batch-500", 500, fresh, recs)
	run("new-batch-5000", 5000, fresh, recs)
	// Every row exists with an older revision: the upsert path.
	newer := make([]engine.Record, len(recs))
	for i := range newer {
		newer[i] = benchRecord(i, 2)
	}
	loaded := func() {
		rawCopy(0)
		exec("VACUUM ANALYZE cases")
	}
	run("update-batch-500", 500, loaded, newer)
	run("update-batch-5000", 5000, loaded, newer)
}

// BenchmarkEncode is the client's share: records to COPY lines.
func BenchmarkEncode(b *testing.B) {
	recs := benchData()[:10000]
	cols := []string{"doc_type", "domain", "name", "owner_id", "opened_on", "modified_on", "closed", "age"}
	e := newEncoder("_id", cols, make([]kind, len(cols)), true, false)
	rows := make([]row, len(recs))
	for i := range recs {
		rows[i], _ = head(i, &recs[i])
	}
	var buf []byte
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		buf = buf[:0]
		for i := range recs {
			var err error
			if buf, err = e.appendCopy(buf, &recs[i], &rows[i]); err != nil {
				b.Fatal(err)
			}
			if len(buf) > 32*1024 {
				buf = buf[:0]
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(recs)), "ns/record")
}
