//go:build unix

package couchdb

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/dimagi/ptop/builtins/file"
	"github.com/dimagi/ptop/engine"
)

// BenchmarkPillow runs a whole pillow over the bench database (new
// documents, at their first revision) into the file sink (/dev/null),
// checkpoints and record sets in CouchDB:
//   - single: one record per document, with its id; every document passes;
//   - filter90: the same, but the filter passes one document in ten;
//   - multi2: two records per document, with ids of their own: every
//     document has an entry in the record sets.
func BenchmarkPillow(b *testing.B) {
	couch := loadBench(b)
	const one = `{ _id: doc._id, name: doc.name.toUpperCase(), domain: doc.domain, opened_on: doc.opened_on, age: doc.age }`
	for _, bc := range []struct{ name, filter, records string }{
		{"single", `doc.doc_type == "CommCareCase"`, one},
		{"filter90", `doc.age < 9`, one},
		{"multi2", `doc.doc_type == "CommCareCase"`, `[{ _id: doc._id + ":a", name: doc.name }, { _id: doc._id + ":b", age: doc.age }]`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var elapsed time.Duration
			i := 0
			for b.Loop() {
				i++
				name := fmt.Sprintf("bench-%s-%d-%d", bc.name, i, time.Now().UnixNano())
				file := filepath.Join(b.TempDir(), "p.yaml")
				err := os.WriteFile(file, []byte(fmt.Sprintf(`name: %s
source:
  couchdb: {url: %q, db: bench}
filter: %s
transform: |
  function transform(doc) { return %s; }
sinks:
  - file: {path: /dev/null}
`, name, couch.URL, bc.filter, bc.records)), 0o644)
				if err != nil {
					b.Fatal(err)
				}
				spec, err := engine.LoadFile(file)
				if err != nil {
					b.Fatal(err)
				}
				p := engine.NewPillow(spec, engine.RunOptions{Log: slog.New(slog.DiscardHandler)})
				ctx, cancel := context.WithCancel(context.Background())
				start := time.Now()
				done := make(chan error, 1)
				go func() { done <- p.Run(ctx) }()
				tick := time.NewTicker(time.Millisecond)
				for p.Stats.Seen.Load() < benchDocs {
					select {
					case err := <-done:
						b.Fatalf("pillow stopped: %v", err)
					case <-tick.C:
					}
				}
				tick.Stop()
				cancel() // everything is read: flush, checkpoint, return
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				elapsed += time.Since(start)
				if f := p.Stats.Failed.Load(); f != 0 {
					b.Fatalf("%d changes failed", f)
				}
			}
			b.ReportMetric(float64(i*benchDocs)/elapsed.Seconds(), "docs/s")
		})
	}
}
