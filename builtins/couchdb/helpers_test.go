package couchdb

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
)

// newTestSource builds a source from cfg, with the defaults for what cfg
// leaves zero.
func newTestSource(t testing.TB, cfg Config) *Source {
	t.Helper()
	var def Config
	def.SetDefaults()
	if cfg.Since == "" {
		cfg.Since = def.Since
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = def.Heartbeat
	}
	if cfg.ErrorsDB == "" {
		cfg.ErrorsDB = def.ErrorsDB
	}
	src, err := New(&cfg, engine.BuildContext{Pillow: "test", Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return src.(*Source)
}

func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// feedRun is a Source.Run going on in the background.
type feedRun struct {
	out    chan engine.Change
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

// startRun runs src from since until the test ends.
func startRun(t testing.TB, src *Source, since string) *feedRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &feedRun{out: make(chan engine.Change, 16), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(r.done)
		r.err = src.Run(ctx, since, r.out)
	}()
	t.Cleanup(func() {
		r.cancel()
		select {
		case <-r.done:
			if r.err != nil && !errors.Is(r.err, context.Canceled) {
				t.Logf("Run returned %v", r.err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return r
}

// next waits for the next change.
func (r *feedRun) next(t testing.TB) engine.Change {
	t.Helper()
	select {
	case c := <-r.out:
		return c
	case <-r.done:
		t.Fatalf("Run returned: %v", r.err)
	case <-time.After(20 * time.Second):
		t.Fatal("no change within 20s")
	}
	panic("unreachable")
}

// none checks that no change arrives for d.
func (r *feedRun) none(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case c := <-r.out:
		t.Fatalf("unexpected change %s %s (seq %s)", c.ID, c.Rev, c.Seq)
	case <-r.done:
		t.Fatalf("Run returned: %v", r.err)
	case <-time.After(d):
	}
}

// wait waits for Run to return by itself.
func (r *feedRun) wait(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case c := <-r.out:
		t.Fatalf("unexpected change %+v", c)
	case <-time.After(d):
		t.Fatalf("Run did not return within %v", d)
	}
	panic("unreachable")
}

// doc decodes a change's document.
func doc(t testing.TB, c engine.Change) map[string]any {
	t.Helper()
	if c.Err != nil {
		t.Fatalf("change %s has error %v", c.ID, c.Err)
	}
	if c.Doc != nil {
		t.Fatalf("change %s: the source decoded the document itself", c.ID)
	}
	var d map[string]any
	if err := json.Unmarshal(c.RawDoc, &d); err != nil {
		t.Fatalf("change %s: document %q: %v", c.ID, c.RawDoc, err)
	}
	return d
}
