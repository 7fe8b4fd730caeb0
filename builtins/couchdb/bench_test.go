//go:build unix

package couchdb

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

const benchDocs = 20000

// loadBench starts pouchdb-server with benchDocs documents of about 420
// bytes (as the feed shows them, with _id and _rev) in database "bench".
func loadBench(b *testing.B) *testenv.Couch {
	b.Helper()
	couch := testenv.StartCouch(b, testenv.CouchOptions{})
	couch.CreateDB(b, "bench")
	batch := make([]map[string]any, 0, 1000)
	for i := range benchDocs {
		batch = append(batch, map[string]any{
			"_id":       fmt.Sprintf("case-%08d", i),
			"doc_type":  "CommCareCase",
			"domain":    []string{"demo", "prod", "test"}[i%3],
			"name":      fmt.Sprintf("Case number %d", i),
			"opened_on": time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute).Format(time.RFC3339),
			"owner_id":  "f3a1c7e2b9d84c6fa0e1d2c3b4a59687",
			"closed":    i%7 == 0,
			"age":       i % 90,
			"notes":     strings.Repeat("lorem ipsum ", 12),
			"tags":      []string{"alpha", "beta"},
		})
		if len(batch) == cap(batch) {
			couch.BulkDocs(b, "bench", batch)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		couch.BulkDocs(b, "bench", batch)
	}
	return couch
}

// BenchmarkFeed reads the whole database through Source.Run, as a pillow
// does: each change with its raw document.
func BenchmarkFeed(b *testing.B) {
	couch := loadBench(b)
	src := newTestSource(b, Config{URL: couch.URL, DB: "bench"})
	var total, bytes int
	var elapsed time.Duration
	for b.Loop() {
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		out := make(chan engine.Change, 1000)
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx, "", out) }()
		for n := 0; n < benchDocs; n++ {
			select {
			case c := <-out:
				if c.Err != nil || c.RawDoc == nil {
					b.Fatalf("change %+v", c)
				}
				bytes += len(c.RawDoc)
			case err := <-done:
				b.Fatalf("Run returned %v after %d changes", err, n)
			}
		}
		elapsed += time.Since(start)
		total += benchDocs
		cancel()
		<-done
	}
	b.ReportMetric(float64(total)/elapsed.Seconds(), "docs/s")
	b.ReportMetric(float64(bytes)/float64(total), "B/doc")
}

// BenchmarkFeedBaseline reads the same continuous feed with plain net/http,
// counting lines without decoding them: the rate BenchmarkFeed compares to.
func BenchmarkFeedBaseline(b *testing.B) {
	couch := loadBench(b)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	var total int
	var elapsed time.Duration
	for b.Loop() {
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet,
			couch.URL+"/bench/_changes?feed=continuous&include_docs=true&heartbeat=10000&style=main_only&since=0", nil)
		res, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		n := 0
		for n < benchDocs && sc.Scan() {
			if len(sc.Bytes()) > 0 {
				n++
			}
		}
		if n < benchDocs {
			b.Fatalf("%d rows: %v", n, sc.Err())
		}
		elapsed += time.Since(start)
		total += n
		cancel()
		res.Body.Close()
	}
	b.ReportMetric(float64(total)/elapsed.Seconds(), "docs/s")
}

// BenchmarkFeedCurl reads the same continuous feed with curl, counting its
// lines here and stopping it after benchDocs rows.
func BenchmarkFeedCurl(b *testing.B) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Skip("no curl")
	}
	couch := loadBench(b)
	var total int
	var elapsed time.Duration
	for b.Loop() {
		start := time.Now()
		cmd := exec.Command(curl, "-sN", couch.URL+"/bench/_changes?feed=continuous&include_docs=true&heartbeat=10000&style=main_only&since=0")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		r := bufio.NewReaderSize(stdout, 64<<10)
		n := 0
		for n < benchDocs {
			line, err := r.ReadSlice('\n')
			if err != nil && err != bufio.ErrBufferFull {
				b.Fatalf("after %d rows: %v", n, err)
			}
			if len(line) > 1 && err == nil {
				n++
			}
		}
		elapsed += time.Since(start)
		total += n
		cmd.Process.Kill()
		cmd.Wait()
	}
	b.ReportMetric(float64(total)/elapsed.Seconds(), "docs/s")
}
