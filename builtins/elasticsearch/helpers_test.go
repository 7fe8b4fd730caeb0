package elasticsearch

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
)

// newTestSink builds a sink from cfg, with the defaults for what cfg
// leaves zero; relative files are taken from dir.
func newTestSink(t testing.TB, cfg Config, dir string) *Sink {
	t.Helper()
	var def Config
	def.SetDefaults()
	if cfg.Timeout == 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = def.MaxRetries
	}
	s, err := New(&cfg, engine.BuildContext{Pillow: "test", Dir: dir, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.(*Sink)
}

// openTestSink is newTestSink followed by a successful Open.
func openTestSink(t testing.TB, cfg Config, dir string) *Sink {
	t.Helper()
	s := newTestSink(t, cfg, dir)
	if err := s.Open(testCtx(t)); err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

var indexSeq atomic.Int64

var notIndexChar = regexp.MustCompile(`[^a-z0-9]+`)

// uniqueIndex is an index name of the test's own on a shared server.
func uniqueIndex(t testing.TB) string {
	name := notIndexChar.ReplaceAllString(strings.ToLower(t.Name()), "-")
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	return strings.Trim(fmt.Sprintf("t%d-%s", indexSeq.Add(1), name), "-")
}

// idx is a record of revision rev, as if from the change at the feed
// position of rev's generation ("3-abc" from the change at 3), so that the
// order of revisions is the order of positions; rev "" has no position.
func idx(id, rev string, doc map[string]any) engine.Record {
	return engine.Record{ID: id, DocID: id, Rev: rev, Seq: genSeq(rev), Doc: doc}
}

func del(id, rev string) engine.Record {
	return engine.Record{ID: id, DocID: id, Rev: rev, Seq: genSeq(rev), Delete: true}
}

func genSeq(rev string) string {
	if i := strings.IndexByte(rev, '-'); i > 0 {
		return rev[:i]
	}
	return ""
}

// writeFile writes a file into dir and returns its name.
func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}
