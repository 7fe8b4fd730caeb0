//go:build unix

package couchdb

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/dimagi/ptop/builtins/file"
	"github.com/dimagi/ptop/engine"
)

// BenchmarkPillow runs a whole pillow over the bench database into the
// file sink (/dev/null), checkpoints (and record sets) in CouchDB:
//   - single: one record per document, every document passes the filter;
//   - filter90: the filter passes one document in ten.
//
// "first" is a pillow's first run (no checkpoint, no record sets yet);
// "again" reads the feed again from the start, after a run has left its
// record sets (its checkpoint removed before each run), as a pillow does
// when the documents are updated.
func BenchmarkPillow(b *testing.B) {
	couch := loadBench(b)
	for _, bc := range []struct{ name, filter string }{
		{"single", `doc.doc_type == "CommCareCase"`},
		{"filter90", `doc.age < 9`},
	} {
		for _, again := range []bool{false, true} {
			b.Run(bc.name+"/"+map[bool]string{false: "first", true: "again"}[again], func(b *testing.B) {
				run := func(name string) time.Duration {
					b.Helper()
					file := filepath.Join(b.TempDir(), name+".yaml")
					err := os.WriteFile(file, []byte(fmt.Sprintf(`name: %s
source:
  couchdb: {url: %q, db: bench}
filter: %s
transform: |
  function transform(doc) {
    return { _id: doc._id, name: doc.name.toUpperCase(), domain: doc.domain, opened_on: doc.opened_on, age: doc.age };
  }
sinks:
  - file: {path: /dev/null}
`, name, couch.URL, bc.filter)), 0o644)
					if err != nil {
						b.Fatal(err)
					}
					spec, err := engine.LoadFile(file)
					if err != nil {
						b.Fatal(err)
					}
					p := engine.NewPillow(spec, engine.RunOptions{Log: slog.New(slog.DiscardHandler)})
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					start := time.Now()
					done := make(chan error, 1)
					go func() { done <- p.Run(ctx) }()
					tick := time.NewTicker(time.Millisecond)
					defer tick.Stop()
					for p.Stats.Seen.Load() < benchDocs {
						select {
						case err := <-done:
							b.Fatalf("pillow stopped: %v", err)
						case <-tick.C:
						}
					}
					cancel() // everything is read: flush, checkpoint, return
					if err := <-done; err != nil {
						b.Fatal(err)
					}
					return time.Since(start)
				}
				name := func(i int) string { return fmt.Sprintf("bench-%s-%d-%d", bc.name, i, time.Now().UnixNano()) }
				steady := name(0)
				if again {
					run(steady)
				}
				var elapsed time.Duration
				i := 0
				for b.Loop() {
					i++
					if again {
						couch.Do(b, http.MethodDelete, "/bench/_local/ptop-"+steady+"?rev=0-1", nil)
						elapsed += run(steady)
					} else {
						elapsed += run(name(i))
					}
				}
				b.ReportMetric(float64(i*benchDocs)/elapsed.Seconds(), "docs/s")
			})
		}
	}
}
