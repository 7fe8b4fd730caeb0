package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"
)

// benchDoc is a case document of about 420 bytes, like the sample data.
func benchDoc(i int) []byte {
	b, _ := json.Marshal(map[string]any{
		"_id": fmt.Sprintf("case-%08d", i), "_rev": "1-9f3c2a7d4e5b6a1c8d9e0f1a2b3c4d5e",
		"doc_type": "CommCareCase", "domain": []string{"demo", "prod", "test"}[i%3],
		"type": "patient", "name": fmt.Sprintf("patient number %d", i), "owner_id": "a3f1c9e2b7d84f60",
		"opened_on": "2026-01-15T09:30:00Z", "modified_on": "2026-02-01T12:00:00Z", "closed": i%7 == 0,
		"properties": map[string]any{"age": i % 90, "village": "Kisumu", "phone": "+254700000000", "risk": "low"},
		"indices":    []any{map[string]any{"identifier": "parent", "referenced_id": "hh-0001"}},
	})
	return b
}

const benchFilter = `doc.doc_type == "CommCareCase" && doc.domain in ["demo", "prod"]`

const benchTransform = `function transform(doc, change) {
  return {
    _id: doc._id, name: doc.name.toUpperCase(), domain: doc.domain,
    opened_on: doc.opened_on, closed: doc.closed, age: doc.properties.age,
    village: doc.properties.village,
  };
}`

// BenchmarkProcess measures filter + transform per change on one worker,
// with the document decoded (Doc) or left raw for the worker (RawDoc).
func BenchmarkProcess(b *testing.B) {
	for _, raw := range []bool{false, true} {
		b.Run(map[bool]string{false: "decoded", true: "raw"}[raw], func(b *testing.B) {
			f, err := compileFilter(benchFilter, 256<<20)
			if err != nil {
				b.Fatal(err)
			}
			tr, err := compileTransform("bench.js", scriptLoc{}, benchTransform, jsLimits{Timeout: time.Second, Memory: 256 << 20, Stack: 1000}, false)
			if err != nil {
				b.Fatal(err)
			}
			p := &Pillow{Spec: &Spec{filter: f, transform: tr}}
			p.Spec.Name = "bench"
			ws, err := p.newWorkers()
			if err != nil {
				b.Fatal(err)
			}
			const n = 500
			raws := make([][]byte, n)
			for i := range raws {
				raws[i] = benchDoc(i)
			}
			cs := make([]Change, n)
			docs := make([]map[string]any, n)
			for j := range docs {
				json.Unmarshal(raws[j], &docs[j])
			}
			b.ResetTimer()
			for i := 0; i < b.N; i += n {
				for j := range cs {
					cs[j] = Change{ID: "x", Seq: "1", Rev: "1-a"}
					if raw {
						cs[j].RawDoc = raws[j]
					} else {
						cs[j].Doc = docs[j]
					}
				}
				recs, _, fails, _ := p.processChunk(ws[0], cs[:min(n, b.N-i)])
				if len(fails) > 0 || len(recs) == 0 {
					b.Fatalf("%d records, failures %v", len(recs), fails)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
		})
	}
}

// sliceSource sends its changes and ends.
type sliceSource struct{ cs []Change }

func (s *sliceSource) Run(ctx context.Context, _ string, out chan<- Change) error {
	for _, c := range s.cs {
		select {
		case out <- c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

type discardSink struct{}

func (discardSink) Open(context.Context) error            { return nil }
func (discardSink) Close() error                          { return nil }
func (discardSink) Write(context.Context, []Record) error { return nil }

// BenchmarkRun measures a pillow's whole path per change (batching,
// decoding, filter, transform, the write stage) into a sink that keeps
// nothing, with no tap (the usual case: one atomic load per batch) and with
// one tap that takes every event. cpu-ns/op is the process's CPU time per
// change.
func BenchmarkRun(b *testing.B) {
	for _, tapped := range []bool{false, true} {
		b.Run(map[bool]string{false: "no-tap", true: "tap"}[tapped], func(b *testing.B) {
			s := &Spec{File: "bench.yaml"}
			s.SetDefaults()
			s.Name = "bench"
			s.Batch = Batch{Size: 500, Wait: Duration(100 * time.Millisecond)}
			var err error
			if s.filter, err = compileFilter(benchFilter, s.TransformMemory); err != nil {
				b.Fatal(err)
			}
			if s.transform, err = compileTransform("bench.js", scriptLoc{}, benchTransform, s.jsLimits(), false); err != nil {
				b.Fatal(err)
			}
			raws := make([][]byte, 500)
			for i := range raws {
				raws[i] = benchDoc(i)
			}
			cs := make([]Change, b.N)
			for i := range cs {
				cs[i] = Change{ID: fmt.Sprintf("case-%08d", i%500), Seq: fmt.Sprint(i + 1), Rev: "1-a", RawDoc: raws[i%500]}
			}
			s.source = &sliceSource{cs: cs}
			s.outputs = []NamedSink{{Name: "discard", Sink: discardSink{}}}
			p := NewPillow(s, RunOptions{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Errors: LogErrorStore{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}})
			if tapped {
				t := p.Tap(1024)
				defer t.Close()
				go func() {
					for range t.Events() {
					}
				}()
			}
			b.ResetTimer()
			cpu := cpuTime()
			if err := p.Run(context.Background()); err != nil {
				b.Fatal(err)
			}
			// CPU time per change is steadier than wall time on a
			// shared machine.
			b.ReportMetric(float64((cpuTime()-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
		})
	}
}
