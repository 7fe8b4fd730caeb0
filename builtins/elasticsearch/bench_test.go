//go:build unix

package elasticsearch

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// The sink against the same _bulk requests sent raw, into a real
// OpenSearch:
//
//	go test -run '^$' -bench 'Bulk' -benchtime 4x ./builtins/elasticsearch
//
// Each iteration writes benchRecords records through the sink and the
// same records raw (the requests the sink would send, encoded
// beforehand, through a bare net/http client), as the case-search pillow
// makes them from the sample documents (~420 bytes, 8 fields after the
// transform), into a fresh index, in batches of 500 and 1000.

const benchRecords = 100_000

// benchDocs returns the records of the sample documents of
// internal/cmd/gendocs, transformed as pipelines/case-search.yaml does.
func benchDocs(n int) []engine.Record {
	domains := []string{"demo", "prod", "test"}
	villages := []string{"Kisumu", "Nakuru", "Eldoret", "Machakos"}
	first := []string{"AMINA", "BRIAN", "CHEGE", "DALIA", "ESTHER", "FAITH", "GRACE", "HASSAN"}
	recs := make([]engine.Record, n)
	for i := range recs {
		id := fmt.Sprintf("case-%08d", i)
		recs[i] = engine.Record{
			ID: id, DocID: id, Rev: fmt.Sprintf("1-%032x", i), Seq: fmt.Sprint(i + 1),
			Doc: map[string]any{
				"_id":       id,
				"name":      fmt.Sprintf("%s %d", first[i%len(first)], i),
				"domain":    domains[i%3],
				"owner_id":  fmt.Sprintf("owner-%04d", i%500),
				"opened_on": time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute).Format(time.RFC3339),
				"closed":    i%7 == 0,
				"age":       int64(1 + i%90),
				"village":   villages[i%len(villages)],
			},
		}
	}
	return recs
}

func BenchmarkBulk(b *testing.B) {
	srv := testenv.StartOpenSearch(b)
	recs := benchDocs(benchRecords)
	warmed := false
	for _, batch := range []int{500, 1000} {
		// The raw requests: what the sink sends, encoded beforehand.
		var bodies [][]byte
		enc := &encoder{}
		enc.init()
		for lo := 0; lo < len(recs); lo += batch {
			var rerrs engine.RecordErrors
			spans := enc.encode(recs[lo:min(lo+batch, len(recs))], &rerrs)
			bodies = append(bodies, bytes.Clone(enc.body(spans, nil)))
		}
		client := &http.Client{}
		raw := func(b *testing.B) time.Duration {
			index := freshIndex(b, srv)
			url := srv.URL + "/" + index + "/_bulk?filter_path=errors,items.*.status,items.*.error"
			start := time.Now()
			for _, body := range bodies {
				resp, err := client.Post(url, "application/x-ndjson", bytes.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				rb, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK || !bytes.HasPrefix(rb, []byte(`{"errors":false`)) {
					b.Fatalf("HTTP %d, %v: %.200s", resp.StatusCode, err, rb)
				}
			}
			d := time.Since(start)
			checkCount(b, srv, index, len(recs))
			dropIndex(b, srv, index)
			return d
		}
		sink := func(b *testing.B) time.Duration {
			index := freshIndex(b, srv)
			s := openTestSink(b, Config{URL: srv.URL, Index: index}, b.TempDir())
			ctx := testCtx(b)
			start := time.Now()
			for lo := 0; lo < len(recs); lo += batch {
				if err := s.Write(ctx, recs[lo:min(lo+batch, len(recs))]); err != nil {
					b.Fatal(err)
				}
			}
			d := time.Since(start)
			checkCount(b, srv, index, len(recs))
			dropIndex(b, srv, index)
			return d
		}
		if !warmed {
			// The server's JIT needs a few hundred thousand documents
			// before its rate settles.
			for i := 0; i < 3; i++ {
				raw(b)
			}
			warmed = true
		}
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			b.StopTimer()
			var sinkTime, rawTime time.Duration
			for i := 0; i < b.N; i++ {
				// Alternate, so that a drift of the server's speed
				// weighs on both alike.
				var ds, dr time.Duration
				if i%2 == 0 {
					ds, dr = sink(b), raw(b)
				} else {
					dr, ds = raw(b), sink(b)
				}
				sinkTime += ds
				rawTime += dr
				b.Logf("run %d: sink %.0f docs/s, raw %.0f docs/s", i, float64(len(recs))/ds.Seconds(), float64(len(recs))/dr.Seconds())
			}
			docs := float64(b.N * len(recs))
			b.ReportMetric(docs/sinkTime.Seconds(), "sink-docs/s")
			b.ReportMetric(docs/rawTime.Seconds(), "raw-docs/s")
			b.ReportMetric(rawTime.Seconds()/sinkTime.Seconds(), "sink/raw")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// freshIndex creates an empty index for one run.
func freshIndex(b *testing.B, srv *testenv.OpenSearch) string {
	index := uniqueIndex(b)
	body := `{"settings": {"number_of_shards": 1, "number_of_replicas": 0}}`
	if status, rb := srv.Do(b, http.MethodPut, "/"+index, body); status != http.StatusOK {
		b.Fatalf("create %s: HTTP %d: %s", index, status, rb)
	}
	return index
}

// dropIndex deletes an index after its run, so that every run meets a
// server in the same state.
func dropIndex(b *testing.B, srv *testenv.OpenSearch, index string) {
	if status, rb := srv.Do(b, http.MethodDelete, "/"+index, nil); status != http.StatusOK {
		b.Fatalf("delete %s: HTTP %d: %s", index, status, rb)
	}
}

func checkCount(b *testing.B, srv *testenv.OpenSearch, index string, want int) {
	if n := srv.Count(b, index); n != want {
		b.Fatalf("%s holds %d documents, want %d", index, n, want)
	}
}

// BenchmarkEncode measures the encoding of a batch alone, without a
// server.
func BenchmarkEncode(b *testing.B) {
	recs := benchDocs(1000)
	enc := &encoder{}
	enc.init()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var rerrs engine.RecordErrors
		enc.encode(recs, &rerrs)
	}
	b.ReportMetric(float64(b.N*len(recs))/b.Elapsed().Seconds(), "docs/s")
}
