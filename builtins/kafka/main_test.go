package kafka

import (
	"context"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopSharedKafka()
	os.Exit(code)
}

func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

var nonTopic = regexp.MustCompile(`[^a-zA-Z0-9._-]+`)

// topicName is a topic of the test's own on a shared broker.
func topicName(t testing.TB) string {
	return strings.ToLower(nonTopic.ReplaceAllString(t.Name(), "-"))
}

// newSink makes a sink of cfg for brokers, with the defaults where cfg
// leaves zero, opened; it is closed when the test ends.
func newSink(t testing.TB, brokers string, cfg Config) *Sink {
	t.Helper()
	var def Config
	def.SetDefaults()
	cfg.Brokers = brokers
	if cfg.Format == "" {
		cfg.Format = def.Format
	}
	if cfg.Partitions == 0 {
		cfg.Partitions = def.Partitions
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = def.WriteTimeout
	}
	s, err := New(&cfg, component.BuildContext{Pillow: "test", Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Open(ctx); err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s.(*Sink)
}

// consume reads topic from its start until it has at least n records, and
// fails the test if it has more.
func consume(t testing.TB, k *testenv.Kafka, topic string, n int) []*kgo.Record {
	t.Helper()
	c := k.Client(t, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var got []*kgo.Record
	for len(got) < n {
		fs := c.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("topic %s: %d records, want %d", topic, len(got), n)
		}
		fs.EachError(func(_ string, _ int32, err error) { t.Logf("fetch: %v", err) })
		got = append(got, fs.Records()...)
	}
	if len(got) > n {
		t.Fatalf("topic %s: %d records, want %d", topic, len(got), n)
	}
	return got
}

// consumeAll reads topic from its start to its end offsets, as they are
// when it is called.
func consumeAll(t testing.TB, k *testenv.Kafka, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ends, err := kadm.NewClient(k.Client(t)).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	ends.Each(func(o kadm.ListedOffset) { want += int(o.Offset) })
	return consume(t, k, topic, want)
}

func rec(id string, doc map[string]any) component.Record {
	return component.Record{ID: id, DocID: id, Rev: "1-a", Seq: "1", Doc: doc}
}

func del(id string) component.Record {
	return component.Record{ID: id, DocID: id, Rev: "2-b", Seq: "2", Delete: true}
}
