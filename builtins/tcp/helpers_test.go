//go:build unix

package tcp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
)

func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newSink makes a sink from cfg, with the defaults where cfg leaves zero.
func newSink(t testing.TB, cfg Config) *Sink {
	t.Helper()
	var def Config
	def.SetDefaults()
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = def.WriteTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = def.DialTimeout
	}
	s, err := New(&cfg, engine.BuildContext{Pillow: "test", Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.(*Sink)
}

// handler serves connection number i (from 0) of a peer; it calls got for
// each line it reads, and returns when it is done with the connection,
// which is then closed.
type handler func(i int, c net.Conn, got func(line string))

// readAll reads lines until the connection ends.
func readAll(_ int, c net.Conn, got func(string)) {
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 1<<16), 1<<26)
	for sc.Scan() {
		got(sc.Text())
	}
}

// peer is the TCP server of the tests: a loopback listener that keeps the
// lines each connection brought, in order.
type peer struct {
	t      testing.TB
	addr   string
	handle handler
	lc     net.ListenConfig
	tls    *tls.Config

	mu      sync.Mutex
	ln      net.Listener
	open    map[net.Conn]bool
	conns   [][]string // lines, per connection accepted
	changed chan struct{}
	wg      sync.WaitGroup
}

type peerOptions struct {
	handle handler
	// rcvbuf, when set, shrinks the receive buffer of accepted sockets,
	// so that a sender is held back as soon as they stop reading.
	rcvbuf int
	tls    *tls.Config
}

func startPeer(t testing.TB, o peerOptions) *peer {
	t.Helper()
	p := &peer{t: t, handle: o.handle, tls: o.tls, addr: "127.0.0.1:0", open: map[net.Conn]bool{}, changed: make(chan struct{}, 1)}
	if p.handle == nil {
		p.handle = readAll
	}
	if o.rcvbuf > 0 {
		p.lc.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.rcvbuf)
			})
			return errors.Join(err, serr)
		}
	}
	if err := p.listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p
}

func (p *peer) listen() error {
	ln, err := p.lc.Listen(context.Background(), "tcp", p.addr)
	if err != nil {
		return err
	}
	if p.tls != nil {
		ln = tls.NewListener(ln, p.tls)
	}
	p.mu.Lock()
	p.ln = ln
	p.addr = ln.Addr().String()
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			i := len(p.conns)
			p.conns = append(p.conns, nil)
			p.open[c] = true
			p.mu.Unlock()
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.handle(i, c, func(line string) {
					p.mu.Lock()
					p.conns[i] = append(p.conns[i], line)
					p.mu.Unlock()
					select {
					case p.changed <- struct{}{}:
					default:
					}
				})
				c.Close()
				p.mu.Lock()
				delete(p.open, c)
				p.mu.Unlock()
			}()
		}
	}()
	return nil
}

// stop closes the listener and every connection, like a server going down.
func (p *peer) stop() {
	p.mu.Lock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// restart listens again on the same address.
func (p *peer) restart() {
	p.t.Helper()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = p.listen(); err == nil {
			return
		}
	}
	p.t.Fatalf("listening again on %s: %v", p.addr, err)
}

// connLines returns the lines of every connection so far.
func (p *peer) connLines() [][]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([][]string, len(p.conns))
	for i, c := range p.conns {
		out[i] = append([]string(nil), c...)
	}
	return out
}

// lines returns every line received, connection after connection.
func (p *peer) lines() []string {
	var all []string
	for _, c := range p.connLines() {
		all = append(all, c...)
	}
	return all
}

// waitFor waits until ok holds of the lines received.
func (p *peer) waitFor(timeout time.Duration, ok func(lines []string) bool) []string {
	p.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		lines := p.lines()
		if ok(lines) {
			return lines
		}
		select {
		case <-p.changed:
		case <-time.After(20 * time.Millisecond):
		case <-deadline.C:
			p.t.Fatalf("timed out waiting; %d lines received", len(lines))
		}
	}
}
