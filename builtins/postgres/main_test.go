package postgres

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/dimagi/ptop/builtins/couchdb"
	_ "github.com/dimagi/ptop/builtins/file"
	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// childEnv, when set, makes the test binary run the pillow file it names
// instead of the tests, as `ptop run` would, until SIGTERM: the crash
// tests kill it with SIGKILL.
const childEnv = "PTOP_PG_TEST_CHILD"

func TestMain(m *testing.M) {
	if file := os.Getenv(childEnv); file != "" {
		os.Exit(runChild(file))
	}
	code := m.Run()
	testenv.StopSharedPostgres()
	os.Exit(code)
}

func runChild(file string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	spec, err := engine.LoadFile(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := engine.NewPillow(spec, engine.RunOptions{Log: log}).Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// loadSink builds a sink from the YAML of its mapping, through the engine's
// loader as a pillow file would.
func loadSink(t testing.TB, sinkYAML string) *Sink {
	t.Helper()
	spec := loadPillow(t, "name: p\nsource: {file: {path: /dev/null}}\nsinks:\n  - postgres:\n"+indent(sinkYAML, "      "))
	return spec.Outputs()[0].Sink.(*Sink)
}

func loadPillow(t testing.TB, content string) *engine.Spec {
	t.Helper()
	path := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := engine.LoadFile(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, content)
	}
	return spec
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n") + "\n"
}

// open opens s and closes it when the test ends.
func open(t testing.TB, s *Sink) {
	t.Helper()
	if err := s.Open(context.Background()); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
}

func write(t testing.TB, s *Sink, recs ...engine.Record) {
	t.Helper()
	if err := s.Write(context.Background(), recs); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

// rec is a record of revision rev, as if from the change at the feed
// position of rev's generation ("3-abc" from the change at 3), so that the
// order of revisions is the order of positions; rev "" has no position.
func rec(id, rev string, doc map[string]any) engine.Record {
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

// waitFor polls cond for up to 30 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second) // beyond the engine's 30 s cap on backoff
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
