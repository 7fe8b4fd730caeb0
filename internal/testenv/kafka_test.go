//go:build unix

package testenv

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// produce writes one record to topic.
func produce(t *testing.T, k *Kafka, topic, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := k.Client(t, kgo.AllowAutoTopicCreation())
	if err := p.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte("k"), Value: []byte(value)}).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// consume reads topic from its start until it finds value.
func consume(t *testing.T, k *Kafka, topic, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := k.Client(t, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	for {
		fs := c.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consume: %v", err)
		}
		for _, r := range fs.Records() {
			if string(r.Value) == value {
				return
			}
		}
	}
}

func TestKafkaShared(t *testing.T) {
	start := time.Now()
	k := StartKafka(t)
	t.Logf("Kafka ready in %v at %s", time.Since(start).Round(time.Millisecond), k.Brokers)
	if again := StartKafka(t); again != k {
		t.Error("a second StartKafka started another broker")
	}
	produce(t, k, "testenv-shared", "v1")
	consume(t, k, "testenv-shared", "v1")
}

func TestKafkaOwnRestart(t *testing.T) {
	Integration(t, "starts a Kafka broker")
	var dir string
	t.Run("broker", func(t *testing.T) {
		k := StartKafka(t, KafkaOptions{Own: true})
		dir = k.Dir
		produce(t, k, "keep", "before")
		pid := k.PID()
		k.Stop(t)
		if k.Running() || k.PID() != 0 {
			t.Fatal("running after Stop")
		}
		port := k.Port
		k.Restart(t)
		if k.Port != port || !k.Running() || k.PID() == pid {
			t.Fatalf("port %d (was %d), running %v, pid %d (was %d)", k.Port, port, k.Running(), k.PID(), pid)
		}
		consume(t, k, "keep", "before") // the record survived the restart
		k.Kill(t)
		if k.Running() {
			t.Fatal("running after Kill")
		}
	})
	if _, err := os.Stat(dir); dir == "" || !os.IsNotExist(err) {
		t.Errorf("scratch dir %q not removed after the test: %v", dir, err)
	}
}

func TestNewKafkaClusterID(t *testing.T) {
	for range 2000 { // a '-' would come first in 1 of 64
		id := NewKafkaClusterID()
		if len(id) != 22 || id[0] == '-' || strings.ContainsAny(id, "+/=") {
			t.Fatalf("cluster id %q", id)
		}
	}
}
