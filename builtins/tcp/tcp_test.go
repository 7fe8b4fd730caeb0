//go:build unix

package tcp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
)

func rec(id string, doc map[string]any) engine.Record {
	return engine.Record{ID: id, DocID: id, Rev: "1-a", Seq: "1", Doc: doc}
}

func del(id string) engine.Record {
	return engine.Record{ID: id, DocID: id, Rev: "2-b", Seq: "2", Delete: true}
}

// records makes n records of one field, numbered from first.
func records(first, n int) []engine.Record {
	rs := make([]engine.Record, n)
	for i := range rs {
		id := fmt.Sprintf("r%06d", first+i)
		rs[i] = rec(id, map[string]any{"_id": id})
	}
	return rs
}

// lineIDs turns lines {"_id":…} into their ids.
func lineIDs(t testing.TB, lines []string) []string {
	t.Helper()
	ids := make([]string, len(lines))
	for i, l := range lines {
		var v struct {
			ID string `json:"_id"`
		}
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
		ids[i] = v.ID
	}
	return ids
}

func recordIDs(rs []engine.Record) []string {
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	return ids
}

func TestLines(t *testing.T) {
	p := startPeer(t, peerOptions{})
	s := newSink(t, Config{Address: p.addr})
	ctx := context.Background()
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	batch := []engine.Record{
		rec("a", map[string]any{
			"_id": "a", "name": "<Ann & co>", "n": 1.5, "age": int64(42), "closed": false,
			"note": "two\nlines \"quoted\" é ☃", "tags": []any{"x", nil, true}, "props": map[string]any{"village": "Kisumu"},
		}),
		del("b"),
		rec("c", map[string]any{"_id": "c"}),
	}
	if err := s.Write(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, []engine.Record{del(`d"1`), rec("e", map[string]any{"_id": "e"})}); err != nil {
		t.Fatal(err)
	}
	lines := p.waitFor(5*time.Second, func(l []string) bool { return len(l) >= 5 })
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"_id": "a", "name": "<Ann & co>", "n": 1.5, "age": 42.0, "closed": false,
		"note": "two\nlines \"quoted\" é ☃", "tags": []any{"x", nil, true}, "props": map[string]any{"village": "Kisumu"},
	}
	if !reflect.DeepEqual(first, want) {
		t.Errorf("line 0 = %s\ndecoded %v\nwant %v", lines[0], first, want)
	}
	if !strings.Contains(lines[0], `"<Ann & co>"`) {
		t.Errorf("HTML characters escaped: %s", lines[0])
	}
	wantRest := []string{`{"_id":"b","_deleted":true}`, `{"_id":"c"}`, `{"_id":"d\"1","_deleted":true}`, `{"_id":"e"}`}
	if !reflect.DeepEqual(lines[1:], wantRest) || len(p.connLines()) != 1 {
		t.Errorf("lines %q on %d connections, want %q on one", lines[1:], len(p.connLines()), wantRest)
	}
}

func TestRawBytes(t *testing.T) {
	// Exactly what goes over the wire: one object per line, "\n" after each.
	got := make(chan string, 1)
	p := startPeer(t, peerOptions{handle: func(_ int, c net.Conn, _ func(string)) {
		b := make([]byte, 0, 256)
		buf := make([]byte, 256)
		for strings.Count(string(b), "\n") < 3 {
			n, err := c.Read(buf)
			b = append(b, buf[:n]...)
			if err != nil {
				break
			}
		}
		got <- string(b)
	}})
	s := newSink(t, Config{Address: p.addr})
	if err := s.Write(context.Background(), []engine.Record{rec("a", map[string]any{"_id": "a"}), del("b"), rec("c", map[string]any{"k": "v"})}); err != nil {
		t.Fatal(err)
	}
	if b := <-got; b != "{\"_id\":\"a\"}\n{\"_id\":\"b\",\"_deleted\":true}\n{\"k\":\"v\"}\n" {
		t.Fatalf("bytes %q", b)
	}
}

func TestRecordErrors(t *testing.T) {
	p := startPeer(t, peerOptions{})
	s := newSink(t, Config{Address: p.addr})
	batch := []engine.Record{
		rec("a", map[string]any{"_id": "a"}),
		rec("nan", map[string]any{"_id": "nan", "x": math.NaN()}),
		rec("b", map[string]any{"_id": "b"}),
		rec("fn", map[string]any{"_id": "fn", "f": func() {}}),
		rec("c", map[string]any{"_id": "c"}),
	}
	err := s.Write(context.Background(), batch)
	var re engine.RecordErrors
	if !errors.As(err, &re) || len(re) != 2 || re[0].Index != 1 || re[1].Index != 3 {
		t.Fatalf("Write = %v, want records 1 and 3 rejected", err)
	}
	if !strings.HasPrefix(re[0].Err.Error(), "encoding the record as JSON: ") {
		t.Errorf("error: %v", re[0].Err)
	}
	lines := p.waitFor(5*time.Second, func(l []string) bool { return len(l) >= 3 })
	if want := []string{`{"_id":"a"}`, `{"_id":"b"}`, `{"_id":"c"}`}; !reflect.DeepEqual(lines, want) {
		t.Fatalf("lines %q, want %q", lines, want)
	}
	// A batch of nothing but bad records sends nothing and needs no peer.
	p.stop()
	err = s.Write(context.Background(), batch[1:2])
	if !errors.As(err, &re) || len(re) != 1 {
		t.Fatalf("Write = %v", err)
	}
}

func TestOpenRefused(t *testing.T) {
	p := startPeer(t, peerOptions{})
	p.stop()
	s := newSink(t, Config{Address: p.addr})
	err := s.Open(context.Background())
	if err == nil || engine.IsPermanent(err) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Open = %v, want a plain connection refused", err)
	}
	// The engine retries: once the peer is there, Open works.
	p.restart()
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestNewMakesNoConnection(t *testing.T) {
	// New touches no network: an address nothing listens on is fine.
	p := startPeer(t, peerOptions{})
	p.stop()
	newSink(t, Config{Address: p.addr})
	newSink(t, Config{Address: "unresolvable.invalid:5000"})
}

func TestPeerClosedBetweenBatches(t *testing.T) {
	for _, reset := range []bool{false, true} {
		t.Run(map[bool]string{false: "FIN", true: "RST"}[reset], func(t *testing.T) {
			// The first connection reads one batch of 3 lines, then the
			// peer closes it (cleanly, or with a reset). A write into it
			// could still succeed: the sink must notice and reconnect.
			closed := make(chan struct{})
			p := startPeer(t, peerOptions{handle: func(i int, c net.Conn, got func(string)) {
				if i > 0 {
					readAll(i, c, got)
					return
				}
				sc := bufio.NewScanner(c)
				for n := 0; n < 3 && sc.Scan(); n++ {
					got(sc.Text())
				}
				if reset {
					c.(*net.TCPConn).SetLinger(0)
				}
				c.Close()
				close(closed)
			}})
			s := newSink(t, Config{Address: p.addr})
			ctx := context.Background()
			if err := s.Write(ctx, records(0, 3)); err != nil {
				t.Fatal(err)
			}
			<-closed
			time.Sleep(50 * time.Millisecond) // for the FIN or RST to arrive
			if err := s.Write(ctx, records(3, 3)); err != nil {
				t.Fatal(err)
			}
			p.waitFor(5*time.Second, func(l []string) bool { return len(l) >= 6 })
			conns := p.connLines()
			if len(conns) != 2 || !reflect.DeepEqual(lineIDs(t, conns[1]), recordIDs(records(3, 3))) {
				t.Fatalf("lines per connection: %q", conns)
			}
		})
	}
}

func TestPeerClosesMidBatch(t *testing.T) {
	// The first connection reads 10 lines of a large batch and closes:
	// the sink reconnects and sends the whole batch again.
	p := startPeer(t, peerOptions{rcvbuf: 4096, handle: func(i int, c net.Conn, got func(string)) {
		if i > 0 {
			readAll(i, c, got)
			return
		}
		sc := bufio.NewScanner(c)
		for n := 0; n < 10 && sc.Scan(); n++ {
			got(sc.Text())
		}
	}})
	s := newSink(t, Config{Address: p.addr})
	batch := records(0, 50000) // 1 MB
	if err := s.Write(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	conns := p.connLines()
	if len(conns) != 2 {
		t.Fatalf("%d connections, want 2", len(conns))
	}
	want := recordIDs(batch)
	if got := lineIDs(t, conns[0]); !reflect.DeepEqual(got, want[:10]) {
		t.Errorf("first connection: %q", got)
	}
	// Write returned once the peer's TCP had everything; its reader may
	// still be at it.
	p.waitFor(5*time.Second, func(l []string) bool { return len(l) >= 10+len(batch) })
	if got := lineIDs(t, p.connLines()[1]); !reflect.DeepEqual(got, want) {
		t.Errorf("second connection: %d lines, want the whole batch of %d", len(got), len(want))
	}
}

func TestPeerDown(t *testing.T) {
	p := startPeer(t, peerOptions{})
	s := newSink(t, Config{Address: p.addr})
	ctx := context.Background()
	if err := s.Write(ctx, records(0, 2)); err != nil {
		t.Fatal(err)
	}
	p.waitFor(5*time.Second, func(l []string) bool { return len(l) == 2 })
	p.stop()
	start := time.Now()
	err := s.Write(ctx, records(2, 2))
	if err == nil || engine.IsPermanent(err) || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "(3 attempts)") {
		t.Fatalf("Write with the peer down = %v, want connection refused after 3 attempts", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Write took %v", d)
	}
	p.restart()
	if err := s.Write(ctx, records(2, 2)); err != nil {
		t.Fatal(err)
	}
	lines := p.waitFor(5*time.Second, func(l []string) bool { return len(l) == 4 })
	if got := lineIDs(t, lines); !reflect.DeepEqual(got, recordIDs(records(0, 4))) {
		t.Fatalf("lines: %q", got)
	}
}

// bigBatch is about 16 MB of records, more than the socket buffers hold.
func bigBatch() []engine.Record {
	pad := strings.Repeat("x", 1000)
	rs := make([]engine.Record, 16000)
	for i := range rs {
		id := fmt.Sprint(i)
		rs[i] = rec(id, map[string]any{"_id": id, "pad": pad})
	}
	return rs
}

func TestWriteTimeout(t *testing.T) {
	hold := make(chan struct{})
	p := startPeer(t, peerOptions{rcvbuf: 4096, handle: func(int, net.Conn, func(string)) { <-hold }})
	t.Cleanup(func() { close(hold) }) // before the peer stops
	s := newSink(t, Config{Address: p.addr, WriteTimeout: engine.Duration(500 * time.Millisecond)})
	check := func(batch []engine.Record) error {
		t.Helper()
		start := time.Now()
		err := s.Write(context.Background(), batch)
		d := time.Since(start)
		if !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "not sent within write_timeout (500ms)") {
			t.Fatalf("Write = %v, want a timeout", err)
		}
		if d < 400*time.Millisecond || d > 2*time.Second {
			t.Errorf("Write returned after %v, want about 500ms", d)
		}
		return err
	}
	// A big batch fills the socket buffers and blocks in the write.
	check(bigBatch())
	if n := len(p.connLines()); n != 1 {
		t.Errorf("%d connections, want 1: a timeout is not retried within Write", n)
	}
	if !runtimeLinux {
		return
	}
	// A batch that fits in a large send buffer is written at once, but the
	// peer's TCP never acknowledges it all.
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.conn.raw.SetWriteBuffer(4 << 20); err != nil {
		t.Fatal(err)
	}
	if err := check(records(0, 10000)); !strings.Contains(err.Error(), "did not acknowledge") { // 200 kB
		t.Errorf("Write = %v, want a timeout waiting for acknowledgements", err)
	}
}

func TestWriteCancelled(t *testing.T) {
	hold := make(chan struct{})
	p := startPeer(t, peerOptions{rcvbuf: 4096, handle: func(int, net.Conn, func(string)) { <-hold }})
	t.Cleanup(func() { close(hold) })
	s := newSink(t, Config{Address: p.addr, WriteTimeout: engine.Duration(time.Minute)})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Write(ctx, bigBatch())
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("Write = %v after %v, want the context's error soon after 300ms", err, time.Since(start))
	}
}

func TestClose(t *testing.T) {
	p := startPeer(t, peerOptions{})
	s := newSink(t, Config{Address: p.addr})
	if err := s.Write(context.Background(), records(0, 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The peer sees the end of the stream.
	p.waitFor(5*time.Second, func(l []string) bool { return len(l) == 1 })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		p.mu.Lock()
		n := len(p.open)
		p.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("connection still open at the peer")
		}
	}
}
