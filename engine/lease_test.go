package engine

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memLeases is an in-memory LeaseStore beside memCheckpoints; down makes
// every call fail.
type memLeases struct {
	memCheckpoints
	lmu     sync.Mutex
	leases  map[string]Lease
	down    bool
	renewed time.Time // when the last write by anyone succeeded
}

func (m *memLeases) ReadLease(_ context.Context, name string) (Lease, error) {
	m.lmu.Lock()
	defer m.lmu.Unlock()
	if m.down {
		return Lease{}, errors.New("store down")
	}
	return m.leases[name], nil
}

func (m *memLeases) WriteLease(_ context.Context, name, prev string, l Lease) (string, error) {
	m.lmu.Lock()
	defer m.lmu.Unlock()
	if m.down {
		return "", errors.New("store down")
	}
	if m.leases == nil {
		m.leases = map[string]Lease{}
	}
	cur := m.leases[name]
	if cur.Version != prev {
		return "", fmt.Errorf("lease %s: %w", name, ErrLeaseConflict)
	}
	n, _ := strconv.Atoi(cur.Version)
	l.Version = strconv.Itoa(n + 1)
	m.leases[name] = l
	m.renewed = time.Now()
	return l.Version, nil
}

func (m *memLeases) setDown(down bool) {
	m.lmu.Lock()
	m.down = down
	m.lmu.Unlock()
}

// logSource is a feed the test appends to; Run reads it from since, as a
// changes feed does.
type logSource struct {
	mu      sync.Mutex
	changes []Change
	more    chan struct{}
}

func newLogSource() *logSource { return &logSource{more: make(chan struct{}, 1)} }

// add appends a change with the next seq.
func (s *logSource) add() int {
	s.mu.Lock()
	n := len(s.changes) + 1
	s.changes = append(s.changes, Change{Seq: strconv.Itoa(n), ID: fmt.Sprint("d", n), Rev: "1-a", Doc: map[string]any{}})
	s.mu.Unlock()
	select {
	case s.more <- struct{}{}:
	default:
	}
	return n
}

func (s *logSource) Run(ctx context.Context, since string, out chan<- Change) error {
	next, _ := strconv.Atoi(since)
	for {
		s.mu.Lock()
		cs := s.changes[next:]
		s.mu.Unlock()
		for _, c := range cs {
			select {
			case out <- c:
				next++
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		select {
		case <-s.more:
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitStatus polls the runner's only pillow until ok accepts its status.
func waitStatus(t *testing.T, r *Runner, what string, ok func(PillowStatus) bool) PillowStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := r.Status(time.Second)
		if len(st) == 1 && ok(st[0]) {
			return st[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("never %s: %+v", what, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestLeaseStandbyWhileHeld: a pillow whose lease another process keeps
// renewing waits, writing nothing, and says whom it waits for; once that
// process stops renewing, it takes over after the ttl and writes
// everything.
func TestLeaseStandbyWhileHeld(t *testing.T) {
	store := &memLeases{}
	const ttl = 400 * time.Millisecond
	other := Lease{Holder: "elsewhere:1:ab", TTL: ttl, Space: "another host/"}
	v, _ := store.WriteLease(context.Background(), "test", "", other)
	stopOther := make(chan struct{})
	otherDone := make(chan int)
	go func() { // the other process renews every ttl/3
		n := 0
		defer func() { otherDone <- n }()
		for {
			select {
			case <-stopOther:
				return
			case <-time.After(ttl / 3):
			}
			var err error
			if v, err = store.WriteLease(context.Background(), "test", v, other); err != nil {
				t.Errorf("the holder lost its lease: %v", err)
				return
			}
			n++
		}
	}()
	sink := &memSink{}
	src := newLogSource()
	r := NewRunner(RunOptions{Checkpoints: store, Log: quietLog(), LeaseTTL: ttl, Holder: "me:2:cd"})
	defer r.Stop()
	r.Apply([]*Spec{testSpec(t, "", "", src, sink)})
	for range 3 {
		src.add()
	}
	st := waitStatus(t, r, "standby", func(st PillowStatus) bool { return st.Role == "standby" && st.LeaseHolder != "" })
	if st.LeaseHolder != other.Holder || !st.Healthy {
		t.Fatalf("standby status %+v", st)
	}
	// Five ttls of renewals by the other process: nothing is written.
	for range 5 {
		time.Sleep(ttl)
		if n := len(sink.records()); n != 0 {
			t.Fatalf("the standby wrote %d records while the lease was held", n)
		}
	}
	close(stopOther)
	renewals := <-otherDone
	waitStatus(t, r, "active", func(st PillowStatus) bool { return st.Role == "active" && st.LeaseHolder == "me:2:cd" })
	deadline := time.Now().Add(10 * time.Second)
	for len(sink.records()) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("records after the takeover: %v", sink.records())
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("the other process renewed %d times meanwhile", renewals)
}

// TestLeaseFenceWhenStoreDown: a holder that cannot renew stops writing
// before a standby elsewhere could take over (a ttl after the last
// renewal), says why, and resumes once the store is back, losing nothing.
func TestLeaseFenceWhenStoreDown(t *testing.T) {
	store := &memLeases{}
	const ttl = 2 * time.Second
	var late []string
	var mu sync.Mutex
	sink := &memSink{}
	sink.reject = func(r Record) error {
		store.lmu.Lock()
		since := time.Since(store.renewed)
		store.lmu.Unlock()
		if since >= ttl {
			mu.Lock()
			late = append(late, fmt.Sprintf("%s written %s after the last renewal", r.DocID, since))
			mu.Unlock()
		}
		return nil
	}
	src := newLogSource()
	r := NewRunner(RunOptions{Checkpoints: store, Log: quietLog(), LeaseTTL: ttl})
	defer r.Stop()
	r.Apply([]*Spec{testSpec(t, "", "", src, sink)})
	waitStatus(t, r, "active", func(st PillowStatus) bool { return st.Role == "active" })
	seq := 0
	send := func() { seq = src.add() }
	send()
	store.setDown(true)
	// Keep the feed flowing while the lease runs out.
	st := func() PillowStatus {
		deadline := time.Now().Add(10 * time.Second)
		for {
			send()
			time.Sleep(20 * time.Millisecond)
			s := r.Status(time.Second)
			if len(s) == 1 && s[0].Role == "standby" {
				return s[0]
			}
			if time.Now().After(deadline) {
				t.Fatalf("still writing with the lease store down: %+v", s)
			}
		}
	}()
	if st.Healthy || len(st.Reasons) != 1 || st.Reasons[0] != "cannot read the lease: store down" {
		t.Fatalf("status while the store is down: %+v", st)
	}
	store.setDown(false)
	waitStatus(t, r, "active again", func(st PillowStatus) bool { return st.Role == "active" })
	got := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < seq {
		for _, rec := range sink.records() {
			got[rec.DocID] = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d documents written after the store came back", len(got), seq)
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(late) > 0 {
		t.Fatalf("writes after the lease could have passed to another process: %v", late)
	}
}

// slowSink takes delay per write once slow is set.
type slowSink struct {
	memSink
	slow  atomic.Bool
	delay time.Duration
}

func (s *slowSink) Write(ctx context.Context, rs []Record) error {
	if s.slow.Load() {
		time.Sleep(s.delay)
	}
	return s.memSink.Write(ctx, rs)
}

// TestLeaseRenewedWhileDraining: a stop drains for longer than the lease's
// ttl; the lease is renewed meanwhile, so the drain writes and
// checkpoints everything read.
func TestLeaseRenewedWhileDraining(t *testing.T) {
	store := &memLeases{}
	const ttl = 300 * time.Millisecond
	sink := &slowSink{delay: ttl}
	src := newLogSource()
	r := NewRunner(RunOptions{Checkpoints: store, Log: quietLog(), LeaseTTL: ttl, DrainTimeout: time.Minute})
	r.Apply([]*Spec{testSpec(t, "", "", src, sink)})
	waitStatus(t, r, "active", func(st PillowStatus) bool { return st.Role == "active" })
	sink.slow.Store(true)
	var last int
	for range 9 { // three batches of three, ttl each
		last = src.add()
	}
	for r.Pillows()["test"].Stats.Seen.Load() < int64(last) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := store.get(); got != strconv.Itoa(last) {
		t.Fatalf("checkpoint %q after the drain, want %d", got, last)
	}
	if l, _ := store.ReadLease(context.Background(), "test"); l.Holder != "" {
		t.Fatalf("lease still held by %q after the stop", l.Holder)
	}
}
