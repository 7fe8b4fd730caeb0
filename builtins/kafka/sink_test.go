package kafka

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/testenv"
	"github.com/dimagi/ptop/internal/tlsconf"
)

func write(t testing.TB, s *Sink, recs ...component.Record) {
	t.Helper()
	if err := s.Write(context.Background(), recs); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

// format: record publishes each record keyed by its id, a delete as a
// tombstone: the key with a null value.
func TestRecordFormat(t *testing.T) {
	k := testenv.StartKafka(t)
	topic := topicName(t)
	s := newSink(t, k.Brokers, Config{Topic: topic, Partitions: 1})
	write(t, s,
		rec("a", map[string]any{"n": 1, "name": "é\"\n"}),
		component.Record{ID: "a-part", DocID: "a", Rev: "1-a", Seq: "1", Doc: map[string]any{"part": true}},
		rec("b", map[string]any{"n": 2}),
	)
	write(t, s, del("a"), rec("c", map[string]any{"list": []any{1, "x"}}))
	got := consume(t, k, topic, 5)
	want := []struct{ key, value string }{
		{"a", `{"n":1,"name":"é\"\n"}`},
		{"a-part", `{"part":true}`},
		{"b", `{"n":2}`},
		{"a", ""},
		{"c", `{"list":[1,"x"]}`},
	}
	for i, w := range want {
		r := got[i]
		if string(r.Key) != w.key || string(r.Value) != w.value {
			t.Errorf("record %d: key %q value %q, want %q %q", i, r.Key, r.Value, w.key, w.value)
		}
	}
	if got[3].Value != nil {
		t.Errorf("the delete's value is %q, want null (a tombstone)", got[3].Value)
	}
}

// format: change publishes the change envelope keyed by the document id.
func TestChangeFormat(t *testing.T) {
	k := testenv.StartKafka(t)
	topic := topicName(t)
	s := newSink(t, k.Brokers, Config{Topic: topic, Format: FormatChange, Partitions: 1})
	write(t, s,
		component.Record{ID: "case-1", DocID: "case-1", Rev: "1-a", Seq: "7-g1AAAA\"x", Doc: map[string]any{"_id": "case-1", "n": 1}},
		// A transform's record with an id of its own: keyed by its document.
		component.Record{ID: "case-1-summary", DocID: "case-1", Rev: "1-a", Seq: "7-g1AAAA\"x", Doc: map[string]any{"total": 3}},
		component.Record{ID: "case-2", DocID: "case-2", Rev: "3-c", Seq: "8", Delete: true},
	)
	got := consume(t, k, topic, 3)
	want := []struct{ key, value string }{
		{"case-1", `{"seq":"7-g1AAAA\"x","id":"case-1","rev":"1-a","deleted":false,"doc":{"_id":"case-1","n":1}}`},
		{"case-1", `{"seq":"7-g1AAAA\"x","id":"case-1","rev":"1-a","deleted":false,"doc":{"total":3}}`},
		{"case-2", `{"seq":"8","id":"case-2","rev":"3-c","deleted":true,"doc":null}`},
	}
	for i, w := range want {
		if r := got[i]; string(r.Key) != w.key || string(r.Value) != w.value {
			t.Errorf("record %d: key %q value %s, want %q %s", i, r.Key, r.Value, w.key, w.value)
		}
	}
}

// Open creates a missing topic with the configured partitions, and uses an
// existing one as it is.
func TestCreatesTopic(t *testing.T) {
	k := testenv.StartKafka(t)
	adm := kadm.NewClient(k.Client(t))
	ctx := context.Background()
	details := func(topic string) kadm.TopicDetail {
		t.Helper()
		// A new client each time: a client answers from its metadata
		// cache for 5 s.
		tds, err := kadm.NewClient(k.Client(t)).ListTopics(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		return tds[topic]
	}

	missing := topicName(t) + "-missing"
	if td := details(missing); !errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		t.Fatalf("topic %s before Open: %v", missing, td.Err)
	}
	s := newSink(t, k.Brokers, Config{Topic: missing, Partitions: 3})
	td := details(missing)
	if td.Err != nil || len(td.Partitions) != 3 || td.Partitions.NumReplicas() != 1 {
		t.Fatalf("created topic: %v, %d partitions, %d replicas; want 3 partitions of 1 replica", td.Err, len(td.Partitions), td.Partitions.NumReplicas())
	}
	write(t, s, rec("x", map[string]any{"n": 1}))
	consume(t, k, missing, 1)

	// The default: 12 partitions.
	newSink(t, k.Brokers, Config{Topic: topicName(t) + "-default"})
	if td := details(topicName(t) + "-default"); len(td.Partitions) != DefaultPartitions {
		t.Errorf("default: %d partitions, want %d", len(td.Partitions), DefaultPartitions)
	}

	existing := topicName(t) + "-existing"
	if _, err := adm.CreateTopic(ctx, 2, 1, nil, existing); err != nil {
		t.Fatal(err)
	}
	newSink(t, k.Brokers, Config{Topic: existing, Partitions: 5})
	if td := details(existing); len(td.Partitions) != 2 {
		t.Errorf("existing topic: %d partitions, want its own 2", len(td.Partitions))
	}

	// A replication factor the cluster cannot give is a permanent error.
	cfg := Config{Brokers: k.Brokers, Topic: topicName(t) + "-rf3", Format: FormatRecord, Partitions: 1, Replication: 3, WriteTimeout: component.Duration(time.Minute)}
	bad, err := New(&cfg, component.BuildContext{Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if err := bad.Open(ctx); !component.IsPermanent(err) || !errors.Is(err, kerr.InvalidReplicationFactor) {
		t.Errorf("replication 3 on one broker: %v, want a permanent INVALID_REPLICATION_FACTOR", err)
	}
}

// A record larger than the topic takes is rejected alone; the rest of the
// batch lands.
func TestTooLargeRecord(t *testing.T) {
	k := testenv.StartKafka(t)
	big := strings.Repeat("x", 20_000)
	for _, tc := range []struct {
		name    string
		maxSize string // the topic's max.message.bytes; "" for the broker's default (~1 MB)
		big     string
	}{
		{"small topic limit", "10000", big},
		{"broker default", "", strings.Repeat(big, 60)}, // 1.2 MB
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := topicName(t)
			if tc.maxSize != "" {
				adm := kadm.NewClient(k.Client(t))
				if _, err := adm.CreateTopic(context.Background(), 3, 1, map[string]*string{"max.message.bytes": &tc.maxSize}, topic); err != nil {
					t.Fatal(err)
				}
			}
			s := newSink(t, k.Brokers, Config{Topic: topic, Partitions: 3})
			err := s.Write(context.Background(), []component.Record{
				rec("a", map[string]any{"n": 1}),
				rec("big", map[string]any{"s": tc.big}),
				rec("c", map[string]any{"n": 3}),
				rec("big2", map[string]any{"s": tc.big}),
				rec("e", map[string]any{"n": 5}),
			})
			var re component.RecordErrors
			if !errors.As(err, &re) || len(re) != 2 || re[0].Index != 1 || re[1].Index != 3 || !errors.Is(re[0].Err, kerr.MessageTooLarge) {
				t.Fatalf("Write: %v, want record errors for records 1 and 3 (MESSAGE_TOO_LARGE)", err)
			}
			keys := map[string]bool{}
			for _, r := range consume(t, k, topic, 3) {
				keys[string(r.Key)] = true
			}
			if !keys["a"] || !keys["c"] || !keys["e"] {
				t.Errorf("landed: %v, want a, c and e", keys)
			}
		})
	}
}

// Records of one key keep their order, across batches and partitions.
func TestPerKeyOrder(t *testing.T) {
	k := testenv.StartKafka(t)
	topic := topicName(t)
	s := newSink(t, k.Brokers, Config{Topic: topic, Partitions: 4, Format: FormatChange})
	const keys, updates, batch = 20, 100, 250
	var recs []component.Record
	for u := 0; u < updates; u++ {
		for i := 0; i < keys; i++ {
			id := fmt.Sprintf("doc-%02d", (i*7+u)%keys) // a different interleaving each round
			recs = append(recs, component.Record{ID: id, DocID: id, Rev: fmt.Sprintf("%d-x", u+1), Seq: fmt.Sprint(len(recs)), Doc: map[string]any{"u": u}})
		}
	}
	for i := 0; i < len(recs); i += batch {
		write(t, s, recs[i:min(i+batch, len(recs))]...)
	}
	last := map[string]int{}
	partition := map[string]int32{}
	for _, r := range consume(t, k, topic, len(recs)) {
		var env struct {
			ID  string `json:"id"`
			Doc struct {
				U int `json:"u"`
			} `json:"doc"`
		}
		if err := json.Unmarshal(r.Value, &env); err != nil {
			t.Fatal(err)
		}
		if env.ID != string(r.Key) {
			t.Fatalf("key %q, envelope id %q", r.Key, env.ID)
		}
		if p, ok := partition[env.ID]; ok && p != r.Partition {
			t.Fatalf("%s in partitions %d and %d", env.ID, p, r.Partition)
		}
		partition[env.ID] = r.Partition
		if prev, ok := last[env.ID]; (ok && env.Doc.U != prev+1) || (!ok && env.Doc.U != 0) {
			t.Fatalf("%s: update %d after %d", env.ID, env.Doc.U, prev)
		}
		last[env.ID] = env.Doc.U
	}
	used := map[int32]bool{}
	for _, p := range partition {
		used[p] = true
	}
	if len(last) != keys || len(used) < 2 {
		t.Fatalf("%d keys over %d partitions", len(last), len(used))
	}
}

// The sasl block logs in with each mechanism; a wrong password is a
// permanent error.
func TestSASL(t *testing.T) {
	k := testenv.StartKafka(t)
	for _, m := range []string{"plain", "scram-sha-256", "scram-sha-512"} {
		t.Run(m, func(t *testing.T) {
			topic := topicName(t)
			s := newSink(t, k.SASLBrokers, Config{
				Topic: topic, Partitions: 1,
				SASL: &SASL{Mechanism: m, Username: testenv.KafkaUser, Password: testenv.KafkaPassword},
			})
			write(t, s, rec("a", map[string]any{"m": m}))
			if got := consume(t, k, topic, 1); string(got[0].Value) != `{"m":"`+m+`"}` {
				t.Errorf("got %s", got[0].Value)
			}

			cfg := Config{
				Brokers: k.SASLBrokers, Topic: topic, Format: FormatRecord, Partitions: 1, WriteTimeout: component.Duration(time.Minute),
				SASL: &SASL{Mechanism: m, Username: testenv.KafkaUser, Password: "wrong"},
			}
			bad, err := New(&cfg, component.BuildContext{Log: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer bad.Close()
			if err := bad.Open(context.Background()); !component.IsPermanent(err) || !errors.Is(err, kerr.SaslAuthenticationFailed) {
				t.Errorf("a wrong password: %v, want a permanent SASL_AUTHENTICATION_FAILED", err)
			}
		})
	}
}

// The tls block connects to an SSL listener whose certificate chains to
// ca_file; with the system's roots the connection is refused.
func TestTLS(t *testing.T) {
	k := testenv.StartKafka(t)
	topic := topicName(t)
	s := newSink(t, k.TLSBrokers, Config{Topic: topic, Partitions: 1, TLS: &tlsconf.Config{CAFile: k.CAFile}})
	write(t, s, rec("a", map[string]any{"tls": true}))
	if got := consume(t, k, topic, 1); string(got[0].Value) != `{"tls":true}` {
		t.Errorf("got %s", got[0].Value)
	}

	cfg := Config{
		Brokers: k.TLSBrokers, Topic: topic, Format: FormatRecord, Partitions: 1,
		WriteTimeout: component.Duration(5 * time.Second), TLS: &tlsconf.Config{},
	}
	bad, err := New(&cfg, component.BuildContext{Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	var unknown x509.UnknownAuthorityError
	if err := bad.Open(context.Background()); !errors.As(err, &unknown) {
		t.Errorf("the system's roots: %v, want a certificate signed by an unknown authority", err)
	}
}
