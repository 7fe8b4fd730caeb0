package kafka

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	_ "github.com/dimagi/ptop/builtins/file"
	"github.com/dimagi/ptop/engine"
)

// loadSink writes a pillow in dir whose kafka sink block is sink (indented
// under `kafka:`, from line 6, column 7) and loads it.
func loadSink(t testing.TB, dir, sink string) (*Sink, string, error) {
	t.Helper()
	path := filepath.Join(dir, "p.yaml")
	var b strings.Builder
	b.WriteString("name: p\nsource:\n  file: {path: /dev/null}\nsinks:\n  - kafka:\n")
	for _, l := range strings.Split(strings.TrimSpace(sink), "\n") {
		b.WriteString("      " + l + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := engine.LoadFile(path)
	if err != nil {
		return nil, path, err
	}
	return spec.Outputs()[0].Sink.(*Sink), path, nil
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	const b = "brokers: h:9092\n"
	tests := []struct {
		name, sink string
		want       []string // "line:col: message", in order
	}{
		{
			"missing keys", "format: record",
			[]string{`6:7: missing required key "brokers"`, `6:7: missing required key "topic"`},
		},
		{
			"broker without port", "brokers: localhost\ntopic: t",
			[]string{`6:16: invalid broker "localhost": use host:port, such as 127.0.0.1:9092`},
		},
		{
			"bad port in a list", "brokers: [h:9092, \"h:x\"]\ntopic: t",
			[]string{`6:16: invalid broker "h:x": the port must be a number from 1 to 65535`},
		},
		{
			"empty brokers", "brokers: \" , \"\ntopic: t",
			[]string{`6:16: brokers must not be empty`},
		},
		{
			"broker not a string", "brokers: [9092]\ntopic: t",
			[]string{`6:16: brokers: 9092 is not a host:port string`},
		},
		{
			"brokers a mapping", "brokers: {h: 9092}\ntopic: t",
			[]string{`6:16: brokers must be a list of host:port or a string of them separated by commas, got map[h:9092]`},
		},
		{
			"bad topic", b + "topic: \"a/b\"",
			[]string{`7:14: invalid topic "a/b": use letters, digits, '.', '_' and '-'`},
		},
		{
			"dot topic", b + "topic: ..",
			[]string{`7:14: invalid topic ".."`},
		},
		{
			"long topic", b + "topic: " + strings.Repeat("t", 250),
			[]string{`7:14: topic is 250 characters long; Kafka allows 249`},
		},
		{
			"unknown format", b + "topic: t\nformat: avro",
			[]string{`8:15: unknown format "avro": use record or change`},
		},
		{
			"zero partitions", b + "topic: t\npartitions: 0",
			[]string{`8:19: partitions must be between 1 and 1048576, got 0`},
		},
		{
			"zero replication", b + "topic: t\nreplication: 0",
			[]string{`8:20: replication must be between 1 and 32767, got 0`},
		},
		{
			"negative write_timeout", b + "topic: t\nwrite_timeout: -1s",
			[]string{`8:22: write_timeout must be positive, got -1s`},
		},
		{
			"unknown sasl mechanism", b + "topic: t\nsasl: {mechanism: gssapi, username: u}",
			[]string{`8:25: unknown mechanism "gssapi": use plain, scram-sha-256 or scram-sha-512`},
		},
		{
			"sasl without username", b + "topic: t\nsasl: {mechanism: plain}",
			[]string{`8:13: missing required key "username"`},
		},
		{
			"tls file missing", b + "topic: t\ntls: {ca_file: nope.pem}",
			[]string{`8:22: ca_file "nope.pem": no such file or directory`},
		},
		{
			"unknown key", b + "topic: t\npartition: 3",
			[]string{`8:7: unknown key "partition" (did you mean "partitions"?)`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, path, err := loadSink(t, dir, tt.sink)
			if err == nil {
				t.Fatal("loaded without error")
			}
			want := path + ":" + strings.Join(tt.want, "\n"+path+":")
			if err.Error() != want {
				t.Fatalf("errors:\n%s\nwant:\n%s", err, want)
			}
		})
	}
}

func TestConfigValid(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TEST_KAFKA_BROKERS", "k1:9092, k2:9093")
	s, _, err := loadSink(t, dir, "brokers: ${TEST_KAFKA_BROKERS}\ntopic: cases")
	if err != nil {
		t.Fatal(err)
	}
	// Defaults: record format, 12 partitions, the broker's replication.
	if !reflect.DeepEqual(s.brokers, []string{"k1:9092", "k2:9093"}) || s.topic != "cases" || s.change ||
		s.partitions != 12 || s.replication != -1 || s.writeTimeout != 30*time.Second || len(s.opts) != 0 {
		t.Fatalf("defaults: %+v", s)
	}
	s, _, err = loadSink(t, dir, `brokers: ["[::1]:9092", "k:1"]
topic: my.topic_1-x
format: change
partitions: 3
replication: 2
write_timeout: 5s
tls: {}
sasl: {mechanism: scram-sha-512, username: u, password: p}`)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.brokers, []string{"[::1]:9092", "k:1"}) || !s.change || s.partitions != 3 ||
		s.replication != 2 || s.writeTimeout != 5*time.Second || len(s.opts) != 2 {
		t.Fatalf("config: %+v", s)
	}
	for _, m := range []string{"plain", "scram-sha-256"} {
		if _, _, err := loadSink(t, dir, "brokers: h:1\ntopic: t\nsasl: {mechanism: "+m+", username: u}"); err != nil {
			t.Errorf("%s: %v", m, err)
		}
	}
}
