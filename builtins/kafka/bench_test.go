package kafka

import (
	"context"
	"fmt"
	"testing"
	"time"

	json "github.com/goccy/go-json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/testenv"
)

// benchRecords are what a transform of the sample ~420-byte case documents
// (internal/cmd/gendocs) gives: 8 fields, as goja exports them (the same as
// the tcp sink's benchmark).
func benchRecords(n int) []component.Record {
	villages := []string{"Kisumu", "Nakuru", "Eldoret", "Machakos"}
	rs := make([]component.Record, n)
	for i := range rs {
		id := fmt.Sprintf("case-%08d", i)
		rs[i] = component.Record{ID: id, DocID: id, Rev: "1-abc", Seq: fmt.Sprint(i + 1), Doc: map[string]any{
			"_id":       id,
			"name":      fmt.Sprintf("AMINA %d", i),
			"domain":    []string{"demo", "prod"}[i%2],
			"owner_id":  fmt.Sprintf("owner-%04d", i%500),
			"opened_on": time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute).Format(time.RFC3339),
			"closed":    i%7 == 0,
			"age":       int64(1 + i%90),
			"village":   villages[i%len(villages)],
		}}
	}
	return rs
}

const benchN = 100_000

var benchSizes = []int{500, 1000}

// BenchmarkKafkaSink publishes 100k records per op through the sink, in
// batches, each acknowledged before the next (as the engine writes), into
// a topic of 12 partitions on the test broker.
func BenchmarkKafkaSink(b *testing.B) {
	k := testenv.StartKafka(b)
	recs := benchRecords(benchN)
	for _, format := range []string{FormatRecord, FormatChange} {
		for _, size := range benchSizes {
			b.Run(fmt.Sprintf("format=%s/batch=%d", format, size), func(b *testing.B) {
				s := newSink(b, k.Brokers, Config{Topic: topicName(b), Format: format})
				ctx := context.Background()
				b.ResetTimer()
				for range b.N {
					for lo := 0; lo < len(recs); lo += size {
						if err := s.Write(ctx, recs[lo:min(lo+size, len(recs))]); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(b.N*len(recs))/b.Elapsed().Seconds(), "records/s")
			})
		}
	}
}

// BenchmarkKafkaRaw produces the same messages, encoded beforehand, with
// franz-go alone (the same producer settings), one ProduceSync per batch:
// the rate the sink is measured against.
func BenchmarkKafkaRaw(b *testing.B) {
	k := testenv.StartKafka(b)
	recs := benchRecords(benchN)
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			topic := topicName(b)
			newSink(b, k.Brokers, Config{Topic: topic}) // creates the topic alike
			var batches [][]*kgo.Record
			for lo := 0; lo < len(recs); lo += size {
				var batch []*kgo.Record
				for _, r := range recs[lo:min(lo+size, len(recs))] {
					v, _ := json.Marshal(r.Doc)
					batch = append(batch, &kgo.Record{Key: []byte(r.ID), Value: v})
				}
				batches = append(batches, batch)
			}
			c := k.Client(b, kgo.DefaultProduceTopic(topic), kgo.RequiredAcks(kgo.AllISRAcks()))
			ctx := context.Background()
			b.ResetTimer()
			for range b.N {
				for _, batch := range batches {
					// franz-go keeps a produced record: send copies.
					cp := make([]*kgo.Record, len(batch))
					for i, r := range batch {
						cp[i] = &kgo.Record{Key: r.Key, Value: r.Value}
					}
					if err := c.ProduceSync(ctx, cp...).FirstErr(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N*len(recs))/b.Elapsed().Seconds(), "records/s")
		})
	}
}
