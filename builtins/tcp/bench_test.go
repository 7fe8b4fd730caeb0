//go:build unix

package tcp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	json "github.com/goccy/go-json"

	"github.com/dimagi/ptop/engine"
)

// benchRecords are what a transform of the sample ~420-byte case documents
// (internal/cmd/gendocs) gives: 8 fields, as goja exports them.
func benchRecords(n int) []engine.Record {
	villages := []string{"Kisumu", "Nakuru", "Eldoret", "Machakos"}
	rs := make([]engine.Record, n)
	for i := range rs {
		id := fmt.Sprintf("case-%08d", i)
		rs[i] = engine.Record{ID: id, DocID: id, Rev: "1-abc", Seq: fmt.Sprint(i + 1), Doc: map[string]any{
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

// discardPeer accepts connections and reads everything, counting bytes.
func discardPeer(b *testing.B) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				m, _ := io.Copy(io.Discard, c)
				n.Add(m)
				c.Close()
			}()
		}
	}()
	b.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), &n
}

const benchN = 100_000

var benchSizes = []int{500, 1000}

// BenchmarkSink sends 100k records per op through the sink, in batches.
func BenchmarkSink(b *testing.B) {
	recs := benchRecords(benchN)
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			addr, _ := discardPeer(b)
			s := newSink(b, Config{Address: addr})
			ctx := context.Background()
			if err := s.Open(ctx); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				for lo := 0; lo < len(recs); lo += size {
					if err := s.Write(ctx, recs[lo:min(lo+size, len(recs))]); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N*len(recs))/b.Elapsed().Seconds(), "lines/s")
		})
	}
}

// BenchmarkRaw writes the same lines, encoded beforehand, to a socket: one
// write per batch, the least any sink could do.
func BenchmarkRaw(b *testing.B) {
	recs := benchRecords(benchN)
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			var batches [][]byte
			for lo := 0; lo < len(recs); lo += size {
				var buf bytes.Buffer
				for _, r := range recs[lo:min(lo+size, len(recs))] {
					line, _ := json.Marshal(r.Doc)
					buf.Write(line)
					buf.WriteByte('\n')
				}
				batches = append(batches, buf.Bytes())
			}
			addr, _ := discardPeer(b)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.ResetTimer()
			for range b.N {
				for _, batch := range batches {
					if _, err := c.Write(batch); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N*len(recs))/b.Elapsed().Seconds(), "lines/s")
		})
	}
}

// BenchmarkEncodeRaw encodes the records (goccy, reused buffer, keys
// unsorted) and writes each batch to a socket: the same work as the sink
// without its checks and acknowledgement wait.
func BenchmarkEncodeRaw(b *testing.B) {
	recs := benchRecords(benchN)
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			addr, _ := discardPeer(b)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			b.ResetTimer()
			for range b.N {
				for lo := 0; lo < len(recs); lo += size {
					buf.Reset()
					for _, r := range recs[lo:min(lo+size, len(recs))] {
						enc.EncodeWithOption(r.Doc, json.UnorderedMap())
					}
					if _, err := c.Write(buf.Bytes()); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N*len(recs))/b.Elapsed().Seconds(), "lines/s")
		})
	}
}
