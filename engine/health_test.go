package engine

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// stuckSink's Open never returns before ctx is done, or fails with err.
type stuckSink struct {
	memSink
	err    error
	opened atomic.Bool
	allow  chan struct{}
}

func (s *stuckSink) Open(ctx context.Context) error {
	select {
	case <-s.allow:
		s.opened.Store(true)
		return nil
	default:
	}
	if s.err != nil {
		return s.err
	}
	select {
	case <-s.allow:
		s.opened.Store(true)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestHealthSinkNotOpen: a pillow whose sink never opens, because Open
// hangs or keeps failing, is unhealthy with the sink named, and healthy
// once it opens.
func TestHealthSinkNotOpen(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"hangs", nil, "test: sink mem#0: not open yet"},
		{"fails", errors.New("connection refused"), "test: sink mem#0: not open: connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink := &stuckSink{err: tc.err, allow: make(chan struct{})}
			src := newLogSource()
			src.add()
			r := NewRunner(RunOptions{Checkpoints: &memCheckpoints{}, Log: quietLog()})
			defer r.Stop()
			r.Apply([]*Spec{testSpec(t, "", "", src, sink)})
			deadline := time.Now().Add(10 * time.Second)
			for {
				ok, why := r.Healthy()
				if !ok && strings.Join(why, "|") == tc.want {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("health %v %q, want %q", ok, why, tc.want)
				}
				time.Sleep(10 * time.Millisecond)
			}
			close(sink.allow)
			for len(sink.records()) == 0 {
				time.Sleep(10 * time.Millisecond)
			}
			if ok, why := r.Healthy(); !ok {
				t.Fatalf("unhealthy once open: %v", why)
			}
		})
	}
}

// flakyErrors is an error store that is down while down is set.
type flakyErrors struct {
	memErrors
	down atomic.Bool
}

func (f *flakyErrors) Record(ctx context.Context, fl Failure, next func(int) time.Duration) (ErrorEntry, error) {
	if f.down.Load() {
		return ErrorEntry{}, errors.New("error store unreachable")
	}
	return f.memErrors.Record(ctx, fl, next)
}

// TestHealthErrorStoreDown: a batch held because its failure cannot be
// recorded makes the pillow unhealthy, and holds the checkpoint.
func TestHealthErrorStoreDown(t *testing.T) {
	es := &flakyErrors{}
	es.down.Store(true)
	cps := &memCheckpoints{}
	sink := &memSink{}
	src := newLogSource()
	src.add()
	s := testSpec(t, "", `function transform(doc) { throw new Error("bad"); }`, src, sink)
	r := NewRunner(RunOptions{Checkpoints: cps, Errors: es, Log: quietLog()})
	defer r.Stop()
	r.Apply([]*Spec{s})
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, why := r.Healthy()
		if !ok && strings.Join(why, "|") == "test: error store: error store unreachable" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health %v %q", ok, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if cp := cps.get(); cp != "" {
		t.Fatalf("checkpoint %q moved past a failure not recorded", cp)
	}
	es.down.Store(false)
	for cps.get() != "1" {
		if time.Now().After(deadline) {
			t.Fatalf("checkpoint %q after the store came back", cps.get())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ok, why := r.Healthy(); !ok {
		t.Fatalf("unhealthy after the store came back: %v", why)
	}
}

// TestLagWatch: pending changes that grow over a whole window, never
// reaching zero, are "falling behind"; a catch-up or a short rise is not.
func TestLagWatch(t *testing.T) {
	t0 := time.Unix(1000, 0)
	const window = time.Minute
	run := func(pending ...int64) string {
		var w lagWatch
		for i, n := range pending {
			w.add(t0.Add(time.Duration(i)*10*time.Second), n, window)
		}
		return w.behind(t0.Add(time.Duration(len(pending)-1)*10*time.Second), window)
	}
	if got := run(10, 20, 30, 40, 50, 60, 70, 80); got != "falling behind: 80 changes pending, up from 20 1m0s ago" {
		t.Errorf("growing: %q", got)
	}
	for name, p := range map[string][]int64{
		"catching up":       {80, 70, 60, 50, 40, 30, 20, 10},
		"caught up once":    {10, 20, 30, 0, 50, 60, 70, 80},
		"shorter than wind": {10, 20, 30},
		"back down":         {10, 20, 30, 40, 50, 60, 70, 5},
	} {
		if got := run(p...); got != "" {
			t.Errorf("%s: %q", name, got)
		}
	}
}

// fakeFeed is a FeedStatus and FeedErrorer with fixed answers.
type fakeFeed struct {
	last         time.Time
	err          error
	failingSince time.Time
}

func (f fakeFeed) LastActivity() time.Time                          { return f.last }
func (f fakeFeed) StallAfter() time.Duration                        { return time.Minute }
func (f fakeFeed) FeedError() (time.Time, error)                    { return f.failingSince, f.err }
func (f fakeFeed) Run(context.Context, string, chan<- Change) error { return nil }

// TestFeedProblem: an unreachable server is named at once rather than as
// a silent feed; a reconnecting feed that delivers nothing is not alive.
func TestFeedProblem(t *testing.T) {
	now := time.Now()
	down := errors.New("couchdb http://h:5984/db: cannot reach h:5984: connection refused")
	cases := []struct {
		name string
		f    fakeFeed
		want string
	}{
		{"alive", fakeFeed{last: now}, ""},
		{"unreachable", fakeFeed{last: now.Add(-10 * time.Second), err: down, failingSince: now.Add(-5 * time.Second)}, down.Error()},
		{"unreachable for a moment", fakeFeed{last: now.Add(-time.Second), err: down, failingSince: now.Add(-time.Second)}, ""},
		{"silent", fakeFeed{last: now.Add(-2 * time.Minute)}, "feed silent for 2m0s (heartbeats stopped)"},
		{"never delivered", fakeFeed{}, "feed not connected after 2m0s"},
	}
	for _, tc := range cases {
		if got := feedProblem(tc.f, now.Add(-2*time.Minute)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
