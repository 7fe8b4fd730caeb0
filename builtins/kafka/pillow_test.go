//go:build unix

package kafka

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// A pillow from a file source into the kafka sink while the broker is
// stopped for ~20 s: the pillow retries meanwhile, and once the broker is
// back every record is in the topic, no restart of the pillow needed.
// The source reads a named pipe, so that the test decides which changes
// come before the outage and which during it.
func TestPillowSurvivesBrokerStop(t *testing.T) {
	k := testenv.StartKafka(t, testenv.KafkaOptions{Own: true})
	dir := t.TempDir()
	fifo := filepath.Join(dir, "changes.jsonl")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	pillow := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(pillow, []byte(fmt.Sprintf(`name: to-kafka
source: {file: {path: %q}}
transform: |
  function transform(doc) { return {_id: doc._id, n: doc.n}; }
batch: {size: 100, wait: 50ms}
sinks:
  - kafka: {brokers: %q, topic: cases, partitions: 4, write_timeout: 2s}
`, fifo, k.Brokers)), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := engine.LoadFile(pillow)
	if err != nil {
		t.Fatal(err)
	}
	p := engine.NewPillow(spec, engine.RunOptions{Log: testLogger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()

	w, err := os.OpenFile(fifo, os.O_WRONLY, 0) // waits for the source to open it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	want := map[string]int{}
	seq := 0
	send := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			seq++
			id := fmt.Sprintf("case-%05d", i%1500) // later rounds update earlier documents
			want[id] = seq
			if _, err := fmt.Fprintf(w, `{"seq":%d,"id":%q,"changes":[{"rev":"1-a"}],"doc":{"_id":%q,"n":%d}}`+"\n", seq, id, id, seq); err != nil {
				t.Error(err)
				return
			}
		}
	}
	send(0, 1000)
	consume(t, k, "cases", 1000)

	k.Stop(t)
	// The source blocks while the sink retries: write from a goroutine.
	restarted, sent := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sent)
		send(1000, 3000)
		select {
		case <-restarted:
		case <-ctx.Done(): // the test failed
			return
		}
		send(3000, 3500)
		w.Close() // the end of the feed: the pillow flushes and returns
	}()
	// The pillow notices: its kafka sink fails whole batches.
	for deadline := time.Now().Add(time.Minute); ; {
		if ok, _ := p.Health(); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pillow stayed healthy with the broker down")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(20 * time.Second) // an outage of ~20 s; the pillow keeps retrying meanwhile
	k.Restart(t)
	close(restarted)
	<-sent

	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pillow: %v", err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("the pillow did not finish after the broker came back")
	}
	if ok, reasons := p.Health(); !ok {
		t.Errorf("unhealthy after recovery: %v", reasons)
	}
	// Every change is in the topic (a retried batch may add duplicates), and
	// each document's last message is its last change.
	last := map[string]int{}
	all := consumeAll(t, k, "cases")
	if len(all) < 3500 {
		t.Errorf("%d messages in the topic, want 3500 or more (duplicates of retried batches)", len(all))
	}
	for _, r := range all {
		var v struct{ N int }
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Fatalf("%s: %v", r.Value, err)
		}
		last[string(r.Key)] = v.N
	}
	for id, n := range want {
		if last[id] != n {
			t.Errorf("%s: last message n=%d, want %d", id, last[id], n)
		}
	}
	if t.Failed() {
		t.Logf("%d documents in the topic, want %d", len(last), len(want))
	}
}
