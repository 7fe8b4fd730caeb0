package kafka

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/tlsconf"
)

// Config is the YAML under `- kafka: …` in a pillow's sinks.
type Config struct {
	// Brokers are the bootstrap brokers, host:port each: a list, or one
	// string of them separated by commas (what ${KAFKA_BROKERS} holds).
	Brokers any `yaml:"brokers" ptop:"required" doc:"The bootstrap brokers, host:port each: a list, or one string separated by commas such as ${KAFKA_BROKERS}."`
	// Topic is where records go; the sink creates it when it is missing.
	Topic string `yaml:"topic" ptop:"required" doc:"The topic records go to; the sink creates it (with partitions and replication) when it is missing."`
	// Format is what a message holds: "record" (default) or "change".
	Format string `yaml:"format" doc:"record (default): each record as a JSON value keyed by its id, a delete as a tombstone (null value). change: the change envelope {seq, id, rev, deleted, doc} keyed by the document id (see the package doc)."`
	// Partitions and Replication are used only when the sink creates the
	// topic.
	Partitions  int `yaml:"partitions" doc:"Partitions of the topic when the sink creates it (default 12); an existing topic is used as it is."`
	Replication int `yaml:"replication" doc:"Replication factor of the topic when the sink creates it (default: the broker's default.replication.factor)."`
	// TLS, when set (even as `tls: {}`), connects with TLS.
	TLS *tlsconf.Config `yaml:"tls" doc:"Connect with TLS (even tls: {} does, with the system's roots): the same tls block as every network source and sink."`
	// SASL authenticates the connections.
	SASL *SASL `yaml:"sasl" doc:"SASL authentication: mechanism (plain, scram-sha-256 or scram-sha-512), username and password."`
	// WriteTimeout bounds one Write: every record of the batch acknowledged
	// by the broker. Default 30s.
	WriteTimeout component.Duration `yaml:"write_timeout" doc:"Longest time for a batch to be acknowledged by the broker; then the batch is retried with backoff (default 30s)."`
}

// SASL is the `sasl` block.
type SASL struct {
	Mechanism string `yaml:"mechanism" ptop:"required" doc:"plain, scram-sha-256 or scram-sha-512."`
	Username  string `yaml:"username" ptop:"required" doc:"The SASL user."`
	Password  string `yaml:"password" doc:"The user's password; use ${VAR} to keep it out of the file."`
}

// The formats.
const (
	FormatRecord = "record"
	FormatChange = "change"
)

// Defaults of Config.
const (
	DefaultPartitions   = 12
	DefaultWriteTimeout = 30 * time.Second
)

// SetDefaults implements component.Defaulter.
func (c *Config) SetDefaults() {
	c.Format = FormatRecord
	c.Partitions = DefaultPartitions
	c.WriteTimeout = component.Duration(DefaultWriteTimeout)
}

// Validate implements component.Validator.
func (c *Config) Validate(ch component.Check) {
	if ch.Has("brokers") {
		if _, msg := parseBrokers(c.Brokers); msg != "" {
			ch.Errorf("brokers", "%s", msg)
		}
	}
	if ch.Has("topic") {
		if msg := checkTopic(c.Topic); msg != "" {
			ch.Errorf("topic", "%s", msg)
		}
	}
	if c.Format != FormatRecord && c.Format != FormatChange {
		ch.Errorf("format", "unknown format %q: use record or change", c.Format)
	}
	if c.Partitions < 1 || c.Partitions > 1<<20 {
		ch.Errorf("partitions", "partitions must be between 1 and %d, got %d", 1<<20, c.Partitions)
	}
	if ch.Has("replication") && (c.Replication < 1 || c.Replication > 32767) {
		ch.Errorf("replication", "replication must be between 1 and 32767, got %d", c.Replication)
	}
	if c.WriteTimeout <= 0 {
		ch.Errorf("write_timeout", "write_timeout must be positive, got %s", c.WriteTimeout)
	}
}

// Validate implements component.Validator.
func (s *SASL) Validate(ch component.Check) {
	switch s.Mechanism {
	case "plain", "scram-sha-256", "scram-sha-512":
	default:
		if ch.Has("mechanism") {
			ch.Errorf("mechanism", "unknown mechanism %q: use plain, scram-sha-256 or scram-sha-512", s.Mechanism)
		}
	}
	if ch.Has("username") && s.Username == "" {
		ch.Errorf("username", "username must not be empty")
	}
}

// parseBrokers reads the brokers key: a list of host:port, or a string of
// them separated by commas. It returns what is wrong, or "".
func parseBrokers(v any) ([]string, string) {
	var items []string
	switch x := v.(type) {
	case string:
		items = strings.Split(x, ",")
	case []any:
		for _, it := range x {
			s, ok := it.(string)
			if !ok {
				return nil, fmt.Sprintf("brokers: %v is not a host:port string", it)
			}
			items = append(items, s)
		}
	case nil:
		return nil, "brokers must not be empty"
	default:
		return nil, fmt.Sprintf("brokers must be a list of host:port or a string of them separated by commas, got %v", x)
	}
	var bs []string
	for _, it := range items {
		it = strings.TrimSpace(it)
		if it == "" {
			continue
		}
		if msg := checkAddress(it); msg != "" {
			return nil, msg
		}
		bs = append(bs, it)
	}
	if len(bs) == 0 {
		return nil, "brokers must not be empty"
	}
	return bs, ""
}

// checkAddress returns what is wrong with a broker's host:port, or "".
func checkAddress(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" {
		return fmt.Sprintf("invalid broker %q: use host:port, such as 127.0.0.1:9092", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Sprintf("invalid broker %q: the port must be a number from 1 to 65535", addr)
	}
	return ""
}

// checkTopic returns what Kafka would refuse in a topic name, or "".
func checkTopic(t string) string {
	switch {
	case t == "":
		return "topic must not be empty"
	case t == "." || t == "..":
		return fmt.Sprintf("invalid topic %q", t)
	case len(t) > 249:
		return fmt.Sprintf("topic is %d characters long; Kafka allows 249", len(t))
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Sprintf("invalid topic %q: use letters, digits, '.', '_' and '-'", t)
		}
	}
	return ""
}
