// Package tcp is the `tcp` sink: it sends each record as one line of JSON
// over a TCP connection, optionally in TLS, for logstash's tcp input with
// the json_lines codec or anything else that reads newline-delimited JSON.
//
//	sinks:
//	  - tcp:
//	      address: logstash.internal:5000    # required, host:port (the port may be a service name)
//	      write_timeout: 10s                 # default 10s: a batch not sent within it fails
//	      dial_timeout: 5s                   # default 5s, TLS handshake included
//	      tls:                               # optional; without it, plain TCP
//	        ca_file: certs/ca.pem            # default: the system's roots
//	        cert_file: certs/ptop.pem        # a client certificate, with its key,
//	        key_file: certs/ptop-key.pem     #   for servers that ask for one
//	        server_name: logstash.internal   # default: the host of address
//	        insecure_skip_verify: false      # tests only
//
// Relative file names in tls are taken from the pillow file's directory;
// the files are read when the pillow is loaded, so a missing or unreadable
// one is a load error. On the logstash side:
//
//	input { tcp { port => 5000 codec => json_lines } }
//
// # Lines
//
// A record is written as the transform returned it (the document itself
// without a transform), as one line of JSON ended by "\n"; a deletion as
// {"_id":ID,"_deleted":true}. Object keys come in no particular order, and
// <, > and & are not escaped. A record that cannot be encoded (a NaN, a
// value JSON has no form for) fails alone and goes to the pillow's error
// handling; the rest of the batch is sent. Include _id in what the
// transform returns if the consumer needs to match deletions with records.
//
// # Delivery
//
// A batch is acknowledged once all its lines are written to the socket
// and, on Linux, once the peer's TCP has acknowledged every byte of them
// (the socket's send queue is empty, SIOCOUTQ), all within write_timeout.
// So no batch is acknowledged that is still in this machine's buffers, or
// that was sent after the peer closed the connection:
//
//   - Before each batch the connection is checked without waiting: what
//     the peer has sent is read and dropped, and a peer that closed the
//     connection (FIN) or reset it is noticed; the batch then goes to a new
//     connection. TCP keepalive (15 s idle, then 3 probes 5 s apart) makes
//     the kernel notice a peer that vanished silently.
//   - A connection that breaks while a batch is being sent (reset, broken
//     pipe, or closed before acknowledging the whole batch) is dropped and
//     the whole batch is sent again on a new connection, after a pause of
//     up to 100 ms, then 200 ms; the peer may thus see some lines twice (at least once:
//     consumers should be idempotent, keyed by _id). When it cannot be sent
//     within 3 attempts, Write fails and the engine retries the batch later
//     with backoff, holding the checkpoint.
//   - A batch not sent within write_timeout (a peer that stopped reading)
//     fails at once, without another attempt; the engine retries it later.
//
// What remains is TCP's own limit, without acknowledgements from the
// application: bytes the peer's kernel has acknowledged may still be lost
// if the peer process dies, or closes the connection, before it has read
// and handled them. A reset found before a batch is logged as a warning
// for that reason. Outside Linux the send queue cannot be read, and a batch
// counts as sent once the local kernel has taken it, which widens that
// window to what this machine's socket buffer holds.
//
// Open connects. A refused connection is retried by the engine with
// backoff, like every failure of Write; a server certificate that does not
// verify at Open stops the pillow (a configuration error), while a later
// reconnection that meets one is retried like any other failure.
package tcp

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	json "github.com/goccy/go-json"

	"github.com/dimagi/ptop/component"
)

func init() {
	component.RegisterSink("tcp", New)
}

// attempts is how many times Write tries to send a batch, reconnecting in
// between, before it leaves the retry to the engine.
const attempts = 3

// firstPause is the pause before the second attempt; it doubles.
const firstPause = 100 * time.Millisecond

// maxKeptBuffer is the largest encoding buffer kept between batches.
const maxKeptBuffer = 8 << 20

// Sink writes records as JSON lines to a TCP peer.
type Sink struct {
	cfg Config
	tls *tls.Config
	log *slog.Logger

	mu   sync.Mutex
	conn *conn // nil when not connected
	buf  bytes.Buffer
	enc  *json.Encoder
	del  deletion
}

// deletion is the line of a deleted document.
type deletion struct {
	ID      string `json:"_id"`
	Deleted bool   `json:"_deleted"`
}

// encodeOptions: map keys in no particular order (sorting them costs a
// third of the encoding time, and JSON consumers do not care).
var encodeOptions = []json.EncodeOptionFunc{json.UnorderedMap()}

// New makes a tcp sink; it reads the TLS files but does not connect.
func New(cfg *Config, bc component.BuildContext) (component.Sink, error) {
	log := bc.Log
	if log == nil {
		log = slog.Default().With("pillow", bc.Pillow)
	}
	s := &Sink{cfg: *cfg, log: log.With("sink", "tcp", "address", cfg.Address)}
	if cfg.TLS != nil {
		host, _, err := net.SplitHostPort(cfg.Address)
		if err != nil {
			return nil, err
		}
		t, err := cfg.TLS.Build(bc.Dir, host)
		if err != nil {
			return nil, err
		}
		s.tls = t
	}
	s.enc = json.NewEncoder(&s.buf)
	s.enc.SetEscapeHTML(false)
	return s, nil
}

// Open implements component.Sink: it connects. A server certificate that
// does not verify is a permanent error; anything else is retried.
func (s *Sink) Open(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		return nil
	}
	c, err := dial(ctx, s.cfg.Address, s.cfg.DialTimeout.D(), s.tls)
	if err != nil {
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) {
			return component.Permanent(err)
		}
		return err
	}
	s.conn = c
	return nil
}

// Write implements component.Sink: it encodes the batch, sends it (on a new
// connection if need be, resending it whole after a broken connection) and
// returns once the peer has it, as the package documentation says.
func (s *Sink) Write(ctx context.Context, records []component.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	errs := s.encode(records)
	defer func() {
		if s.buf.Cap() > maxKeptBuffer {
			s.buf = bytes.Buffer{}
		}
	}()
	if s.buf.Len() > 0 {
		if err := s.send(ctx, s.buf.Bytes()); err != nil {
			return err
		}
	}
	if errs != nil {
		return errs
	}
	return nil
}

// encode writes the batch's lines into s.buf and returns the records that
// could not be encoded.
func (s *Sink) encode(records []component.Record) component.RecordErrors {
	s.buf.Reset()
	var errs component.RecordErrors
	for i := range records {
		r := &records[i]
		mark := s.buf.Len()
		var err error
		if r.Delete {
			s.del = deletion{ID: r.ID, Deleted: true}
			err = s.enc.EncodeWithOption(&s.del, encodeOptions...)
		} else {
			err = s.enc.EncodeWithOption(r.Doc, encodeOptions...)
		}
		if err != nil {
			s.buf.Truncate(mark)
			errs = append(errs, component.RecordError{Index: i, Err: fmt.Errorf("encoding the record as JSON: %w", err)})
		}
	}
	return errs
}

// send sends data, reconnecting when the connection is gone or breaks.
func (s *Sink) send(ctx context.Context, data []byte) error {
	var err error
	backoff := component.Backoff{Min: firstPause}
	for attempt := 1; attempt <= attempts; attempt++ {
		if attempt > 1 {
			if werr := component.Sleep(ctx, backoff.Next()); werr != nil {
				return fmt.Errorf("sending a batch to %s: %w (after: %v)", s.cfg.Address, werr, err)
			}
		}
		if s.conn != nil {
			if cerr := s.conn.check(); cerr != nil {
				s.dropBroken(cerr)
			}
		}
		if s.conn == nil {
			c, derr := dial(ctx, s.cfg.Address, s.cfg.DialTimeout.D(), s.tls)
			if derr != nil {
				err = derr
				continue
			}
			s.conn = c
		}
		err = s.conn.send(ctx, data, s.cfg.WriteTimeout.D())
		if err == nil {
			return nil
		}
		s.conn.abort()
		s.conn = nil
		if ctx.Err() != nil {
			return fmt.Errorf("sending a batch to %s: %w", s.cfg.Address, ctx.Err())
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("sending a batch to %s: not sent within write_timeout (%s): %w", s.cfg.Address, s.cfg.WriteTimeout, err)
		}
		if attempt < attempts {
			s.log.Warn("the connection broke while sending a batch; sending it again on a new connection", "error", err, "bytes", len(data))
		}
	}
	return fmt.Errorf("sending a batch to %s: %w (%d attempts)", s.cfg.Address, err, attempts)
}

// dropBroken forgets a connection found closed or broken between batches.
func (s *Sink) dropBroken(err error) {
	if errors.Is(err, io.EOF) {
		s.log.Info("the peer closed the connection; reconnecting")
	} else {
		s.log.Warn("the connection broke between batches; reconnecting (if the peer reset it, what it had received but not read may be lost)", "error", err)
	}
	s.conn.abort()
	s.conn = nil
}

// Close implements component.Sink: it closes the connection.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	err := s.conn.close()
	s.conn = nil
	return err
}

var _ component.Sink = (*Sink)(nil)
