package testenv

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fault is what a FaultProxy does to the responses of _changes requests.
type Fault int

const (
	// Pass forwards everything.
	Pass Fault = iota
	// Refuse closes the listening socket: connections are refused.
	Refuse
	// StallAfterHeaders forwards a _changes response's headers and then
	// nothing more, holding the connection open.
	StallAfterHeaders
	// Trickle forwards a _changes response a few bytes at a time (see
	// SetTrickle).
	Trickle
	// CutMidRow forwards a _changes response until the middle of its first
	// row (in its "changes" key), then closes the connection.
	CutMidRow
)

// FaultProxy is a TCP proxy on 127.0.0.1 in front of an HTTP server (a
// CouchDB), which injects faults into the responses of connections that
// carried a _changes request; other requests pass untouched.
type FaultProxy struct {
	// Addr is host:port of the proxy; URL is http://Addr.
	Addr, URL string
	target    string

	mu       sync.Mutex
	fault    Fault
	ln       net.Listener
	conns    map[net.Conn]bool
	closed   bool
	chunk    int
	interval time.Duration

	cuts, changes atomic.Int64
}

// StartFaultProxy starts a proxy to target (host:port), passing
// everything, and closes it when the test ends.
func StartFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &FaultProxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}, chunk: 16, interval: 100 * time.Millisecond}
	p.URL = "http://" + p.Addr
	go p.accept(ln)
	t.Cleanup(p.Close)
	return p
}

// Set changes the fault for data forwarded from now on; Refuse and the
// way back from it close and reopen the listening socket on the same
// port. Connections open when a fault is set are cut, so that the next
// ones see it.
func (p *FaultProxy) Set(t testing.TB, f Fault) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = f
	for c := range p.conns {
		c.Close()
	}
	switch {
	case f == Refuse && p.ln != nil:
		p.ln.Close()
		p.ln = nil
	case f != Refuse && p.ln == nil:
		var err error
		for i := 0; i < 50; i++ {
			var ln net.Listener
			if ln, err = net.Listen("tcp", p.Addr); err == nil {
				p.ln = ln
				go p.accept(ln)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("fault proxy: listening again on %s: %v", p.Addr, err)
	}
}

// SetTrickle makes Trickle forward n bytes every interval.
func (p *FaultProxy) SetTrickle(n int, interval time.Duration) {
	p.mu.Lock()
	p.chunk, p.interval = n, interval
	p.mu.Unlock()
}

// Cuts is how many responses CutMidRow has cut.
func (p *FaultProxy) Cuts() int64 { return p.cuts.Load() }

// Changes is how many _changes requests went through.
func (p *FaultProxy) Changes() int64 { return p.changes.Load() }

// Close stops the proxy and cuts every connection.
func (p *FaultProxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
}

func (p *FaultProxy) current() (Fault, int, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fault, p.chunk, p.interval
}

func (p *FaultProxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		if p.closed {
			return false
		}
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
	return true
}

func (p *FaultProxy) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.serve(c)
	}
}

func (p *FaultProxy) serve(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	if !p.track(client, true) || !p.track(server, true) {
		client.Close()
		server.Close()
		return
	}
	defer func() {
		client.Close()
		server.Close()
		p.track(client, false)
		p.track(server, false)
	}()
	var isChanges atomic.Bool
	go func() {
		// Requests pass; one for _changes marks the connection.
		buf := make([]byte, 32<<10)
		for {
			n, err := client.Read(buf)
			if n > 0 {
				if bytes.Contains(buf[:n], []byte("/_changes")) {
					isChanges.Store(true)
					p.changes.Add(1)
				}
				if _, werr := server.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		server.Close()
	}()
	buf := make([]byte, 32<<10)
	inHeaders := true // of a _changes response
	var seen []byte   // its bytes so far, while looking for the end of headers
	for {
		n, err := server.Read(buf)
		data := buf[:n]
		fault, chunk, interval := p.current()
		if n > 0 && isChanges.Load() && fault != Pass && fault != Refuse {
			if inHeaders {
				seen = append(seen, data...)
				i := bytes.Index(seen, []byte("\r\n\r\n"))
				if i < 0 {
					if _, werr := client.Write(data); werr != nil {
						return
					}
					data = nil
				} else {
					inHeaders = false
					body := seen[i+4:]
					head := data[:len(data)-len(body)]
					if _, werr := client.Write(head); werr != nil {
						return
					}
					data = body
				}
			}
			if !inHeaders && len(data) > 0 {
				switch fault {
				case StallAfterHeaders:
					data = nil // dropped: the client waits for ever
				case CutMidRow:
					if i := bytes.Index(data, []byte(`"changes"`)); i >= 0 {
						client.Write(data[:i+5])
						p.cuts.Add(1)
						return
					}
				case Trickle:
					for len(data) > 0 {
						k := min(chunk, len(data))
						if _, werr := client.Write(data[:k]); werr != nil {
							return
						}
						data = data[k:]
						time.Sleep(interval)
					}
				}
			}
		}
		if len(data) > 0 {
			if _, werr := client.Write(data); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
