// Package kafka is the kafka sink: it publishes a pillow's records to a
// Kafka topic.
//
//	sinks:
//	  - kafka:
//	      brokers: ${KAFKA_BROKERS}   # host:port, a list or comma-separated
//	      topic: cases
//	      format: record              # or change
//	      partitions: 12              # only when the sink creates the topic
//	      tls: {ca_file: ca.pem}      # optional, the shared tls block
//	      sasl: {mechanism: scram-sha-512, username: ptop, password: ${KAFKA_PASSWORD}}
//
// format: record (the default) publishes each record as a message keyed
// by the record's id whose value is the record as JSON; a delete is a
// tombstone (the document's id as key, a null value), which a compacted
// topic keeps as the key's removal.
//
// format: change publishes a change envelope keyed by the source
// document's id, so that every change of a document lands in one
// partition, in feed order:
//
//	{"seq":"42","id":"case-1","rev":"3-abc","deleted":false,"doc":{…}}
//
// seq is the change's sequence id as a string, kept verbatim; id and rev
// are the source document's; deleted is true for a deletion, whose doc is
// null. doc is the record the pillow made of the change: the document
// itself in a pillow without transform (a feeder, whose envelopes another
// pillow can read as its changes), else what the transform returned. A
// transform returning several records publishes one envelope for each.
//
// Delivery: the producer is idempotent and waits for every in-sync replica
// (acks=all); Write returns nil only when the broker acknowledged every
// record. A record larger than the topic's max.message.bytes is rejected
// on its own (a component.RecordError, to the error store); anything else
// (the broker down, a timeout) fails the whole batch, which the engine
// retries, so a message may be published twice but never lost. Records of
// one key stay in order.
//
// Open creates a missing topic with partitions and replication (default:
// 12 and the broker's default replication factor) and no other settings;
// create it yourself beforehand for a compacted topic.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	json "github.com/goccy/go-json"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/jsonx"
)

func init() {
	component.RegisterSink("kafka", New)
}

// Sink publishes records to a topic.
type Sink struct {
	brokers      []string
	topic        string
	change       bool
	partitions   int32
	replication  int16
	writeTimeout time.Duration
	opts         []kgo.Opt // connection options: TLS, SASL
	log          *slog.Logger

	client *kgo.Client
	// maxBytes is the topic's max.message.bytes, read by Open: the client
	// rejects a larger record by itself, alone, instead of sending a batch
	// that the broker would reject whole.
	maxBytes atomic.Int32
}

// New makes a kafka sink from its configuration; it connects in Open.
func New(cfg *Config, bc component.BuildContext) (component.Sink, error) {
	brokers, msg := parseBrokers(cfg.Brokers)
	if msg != "" {
		return nil, errors.New(msg)
	}
	log := bc.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sink{
		brokers:      brokers,
		topic:        cfg.Topic,
		change:       cfg.Format == FormatChange,
		partitions:   int32(cfg.Partitions),
		replication:  -1, // the broker's default
		writeTimeout: cfg.WriteTimeout.D(),
		log:          log,
	}
	if s.partitions <= 0 {
		s.partitions = DefaultPartitions
	}
	if cfg.Replication > 0 {
		s.replication = int16(cfg.Replication)
	}
	if s.writeTimeout <= 0 {
		s.writeTimeout = DefaultWriteTimeout
	}
	if cfg.TLS != nil {
		// No host: franz-go checks each broker's certificate against the
		// host it dials, unless server_name says otherwise.
		tc, err := cfg.TLS.Build(filepath.Dir(bc.File), "")
		if err != nil {
			return nil, err
		}
		s.opts = append(s.opts, kgo.DialTLSConfig(tc))
	}
	if cfg.SASL != nil {
		m, err := mechanism(cfg.SASL)
		if err != nil {
			return nil, err
		}
		s.opts = append(s.opts, kgo.SASL(m))
	}
	return s, nil
}

func mechanism(c *SASL) (sasl.Mechanism, error) {
	switch c.Mechanism {
	case "plain":
		return plain.Auth{User: c.Username, Pass: c.Password}.AsMechanism(), nil
	case "scram-sha-256":
		return scram.Auth{User: c.Username, Pass: c.Password}.AsSha256Mechanism(), nil
	case "scram-sha-512":
		return scram.Auth{User: c.Username, Pass: c.Password}.AsSha512Mechanism(), nil
	}
	return nil, fmt.Errorf("unknown SASL mechanism %q", c.Mechanism)
}

// defaultMaxBytes is franz-go's batch limit, used until Open has read the
// topic's max.message.bytes.
const defaultMaxBytes = 1000012

// Open implements component.Sink: it connects, creates the topic if it is
// missing, and reads the topic's max.message.bytes.
func (s *Sink) Open(ctx context.Context) error {
	if s.client == nil {
		s.maxBytes.Store(defaultMaxBytes)
		// franz-go's producer is idempotent unless told otherwise, which
		// needs acks=all: a retried request is not written twice, and
		// records of a partition stay in order.
		opts := append([]kgo.Opt{
			kgo.SeedBrokers(s.brokers...),
			kgo.DefaultProduceTopic(s.topic),
			kgo.RequiredAcks(kgo.AllISRAcks()),
			kgo.RecordDeliveryTimeout(s.writeTimeout),
			kgo.ProducerBatchMaxBytesFn(func(string) int32 { return s.maxBytes.Load() }),
		}, s.opts...)
		c, err := kgo.NewClient(opts...)
		if err != nil {
			return component.Permanent(fmt.Errorf("kafka: %w", err))
		}
		s.client = c
	}
	ctx, cancel := context.WithTimeout(ctx, s.writeTimeout)
	defer cancel()
	adm := kadm.NewClient(s.client)
	if err := s.ensureTopic(ctx, adm); err != nil {
		return err
	}
	rcs, err := adm.DescribeTopicConfigs(ctx, s.topic)
	if err == nil {
		var rc kadm.ResourceConfig
		if rc, err = rcs.On(s.topic, nil); err == nil && rc.Err != nil {
			err = rc.Err
		}
		for _, c := range rc.Configs {
			if c.Key == "max.message.bytes" && c.Value != nil {
				if n, perr := strconv.ParseInt(*c.Value, 10, 32); perr == nil {
					s.maxBytes.Store(int32(min(max(n, 512), 1<<30))) // what franz-go takes
				}
			}
		}
	}
	if err != nil {
		return classify(fmt.Errorf("kafka: reading the config of topic %s: %w", s.topic, err))
	}
	return nil
}

// ensureTopic creates the topic if it is missing, and waits until its
// partitions have leaders.
func (s *Sink) ensureTopic(ctx context.Context, adm *kadm.Client) error {
	created := false
	for {
		err := s.topicReady(ctx)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, kerr.UnknownTopicOrPartition) && !created:
			r, err := adm.CreateTopic(ctx, s.partitions, s.replication, nil, s.topic)
			switch {
			case err == nil:
				s.log.Info("created topic", "topic", s.topic, "partitions", r.NumPartitions, "replication", r.ReplicationFactor)
			case errors.Is(err, kerr.TopicAlreadyExists): // another process was first
			default:
				if r.ErrMessage != "" {
					err = fmt.Errorf("%w: %s", err, r.ErrMessage)
				}
				return classify(fmt.Errorf("kafka: creating topic %s: %w", s.topic, err))
			}
			created = true
			continue
		case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.LeaderNotAvailable):
			// Created a moment ago: its metadata is on its way.
		default:
			return classify(fmt.Errorf("kafka: looking up topic %s: %w", s.topic, err))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafka: topic %s has no leader for every partition yet: %w", s.topic, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// topicReady asks the cluster (kadm's ListTopics would answer from the
// client's cache, for 5 s) whether the topic exists and each of its
// partitions has a leader: nil, or the error saying why not.
func (s *Sink) topicReady(ctx context.Context) error {
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(s.topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, s.client)
	if err != nil {
		return err
	}
	if len(resp.Topics) != 1 {
		return fmt.Errorf("metadata for %d topics, want 1", len(resp.Topics))
	}
	t := resp.Topics[0]
	if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
		return err
	}
	if len(t.Partitions) == 0 {
		return kerr.LeaderNotAvailable
	}
	for _, p := range t.Partitions {
		if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
			return err
		}
		if p.Leader < 0 {
			return kerr.LeaderNotAvailable
		}
	}
	return nil
}

// classify marks the errors that retrying cannot fix: refused credentials
// or permissions, a topic the cluster cannot create as asked.
func classify(err error) error {
	for _, e := range []error{
		kerr.SaslAuthenticationFailed, kerr.TopicAuthorizationFailed, kerr.ClusterAuthorizationFailed,
		kerr.InvalidReplicationFactor, kerr.InvalidPartitions, kerr.InvalidTopicException, kerr.PolicyViolation,
	} {
		if errors.Is(err, e) {
			return component.Permanent(err)
		}
	}
	var ae *kadm.AuthError
	if errors.As(err, &ae) {
		return component.Permanent(err)
	}
	return err
}

// result is the outcome of one record's produce.
type result struct {
	i   int
	err error
}

// Write implements component.Sink: it publishes records in order and
// returns once the broker acknowledged all of them (nil), rejected some of
// them for themselves (component.RecordErrors), or failed (any other
// error: nothing is acknowledged).
func (s *Sink) Write(ctx context.Context, records []component.Record) error {
	if len(records) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.writeTimeout)
	defer cancel()
	var rejected component.RecordErrors
	results := make(chan result, len(records))
	sent := 0
	for i := range records {
		kr, err := s.message(&records[i])
		if err != nil {
			rejected = append(rejected, component.RecordError{Index: i, Err: err})
			continue
		}
		sent++
		s.client.Produce(ctx, kr, func(_ *kgo.Record, err error) { results <- result{i, err} })
	}
	// Send what lingers at once: the batch is complete.
	if err := s.client.Flush(ctx); err != nil {
		return fmt.Errorf("kafka: %d records not acknowledged within %s: %w", sent, s.writeTimeout, err)
	}
	var failed error
	for ; sent > 0; sent-- {
		var r result
		select {
		case r = <-results:
		case <-ctx.Done():
			return fmt.Errorf("kafka: %d records not acknowledged within %s: %w", sent, s.writeTimeout, ctx.Err())
		}
		switch {
		case r.err == nil:
		case recordOnly(r.err):
			rejected = append(rejected, component.RecordError{Index: r.i, Err: fmt.Errorf("kafka: %w", r.err)})
		case failed == nil:
			failed = r.err
		}
	}
	if failed != nil {
		return classify(fmt.Errorf("kafka: publishing to %s: %w", s.topic, failed))
	}
	if len(rejected) > 0 {
		return rejected
	}
	return nil
}

// recordOnly reports whether err rejects a record for itself, so that
// retrying the batch would not help it.
func recordOnly(err error) bool {
	return errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.InvalidRecord) ||
		errors.Is(err, kerr.RecordListTooLarge)
}

// message encodes a record as the configured format.
func (s *Sink) message(r *component.Record) (*kgo.Record, error) {
	if !s.change {
		kr := &kgo.Record{Key: []byte(r.ID)}
		if !r.Delete {
			v, err := json.Marshal(r.Doc)
			if err != nil {
				return nil, fmt.Errorf("kafka: encoding the record: %w", err)
			}
			kr.Value = v
		}
		return kr, nil
	}
	b := make([]byte, 0, 128)
	b = append(b, `{"seq":`...)
	b = jsonx.AppendString(b, r.Seq)
	b = append(b, `,"id":`...)
	b = jsonx.AppendString(b, r.DocID)
	b = append(b, `,"rev":`...)
	b = jsonx.AppendString(b, r.Rev)
	if r.Delete {
		b = append(b, `,"deleted":true,"doc":null}`...)
	} else {
		doc, err := json.Marshal(r.Doc)
		if err != nil {
			return nil, fmt.Errorf("kafka: encoding the record: %w", err)
		}
		b = append(b, `,"deleted":false,"doc":`...)
		b = append(b, doc...)
		b = append(b, '}')
	}
	return &kgo.Record{Key: []byte(r.DocID), Value: b}, nil
}

// Close implements component.Sink. Every record Write acknowledged is
// already in the broker.
func (s *Sink) Close() error {
	if s.client != nil {
		s.client.Close()
		s.client = nil
	}
	return nil
}

var _ component.Sink = (*Sink)(nil)
