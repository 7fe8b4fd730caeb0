package engine

import (
	"encoding/json"
	"fmt"
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
			f, err := compileFilter(benchFilter)
			if err != nil {
				b.Fatal(err)
			}
			tr, err := compileTransform("bench.js", scriptLoc{}, benchTransform, time.Second)
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
