package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
)

func reindexPillow(version int) string {
	return fmt.Sprintf(`name: ri
source:
  couchdb: {url: "${COUCH_URL}", db: ri, heartbeat: 1s}
transform: |
  function transform(doc) { return { v: doc.v, ver: %d }; }
batch: {size: 100, wait: 50ms}
workers: 1
sinks:
  - postgres:
      dsn: "${PG_DSN}"
      table: cases
      columns: {v: integer, ver: integer}
      doc: false
      create: true
`, version)
}

// TestReindexInterruptedAndResumed rebuilds a Postgres table while the live
// pillow runs and documents keep arriving; the reindex is interrupted
// halfway, resumed, and flips the tables; afterwards every document is in
// the table, the old ones rebuilt with the new transform.
func TestReindexInterruptedAndResumed(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	pg := testenv.StartPostgres(t)
	couch.CreateDB(t, "ri")
	const n = 6000
	for lo := 0; lo < n; lo += 1000 {
		var docs []map[string]any
		for i := lo; i < lo+1000; i++ {
			docs = append(docs, map[string]any{"_id": fmt.Sprintf("d%05d", i), "v": i})
		}
		couch.BulkDocs(t, "ri", docs)
	}
	dir := t.TempDir()
	pdir := filepath.Join(dir, "pipelines")
	write(t, filepath.Join(pdir, "ri.yaml"), reindexPillow(1))
	t.Setenv("COUCH_URL", couch.URL)
	t.Setenv("PG_DSN", pg.DSN())
	count := func(where string) int64 {
		if pg.Query(t, pg.DSN(), "SELECT to_regclass('cases') IS NULL")[0][0] == true {
			return 0
		}
		rows := pg.Query(t, pg.DSN(), "SELECT count(*) FROM cases WHERE "+where)
		return rows[0][0].(int64)
	}
	live := startPtop(t, "run", pdir)
	deadline := time.Now().Add(30 * time.Second)
	for count("true") < n {
		if time.Now().After(deadline) {
			t.Fatalf("the live pillow did not load the table; log:\n%s", live.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}

	w := startWriter(t, couch.URL, "ri") // documents keep arriving
	write(t, filepath.Join(pdir, "ri.yaml"), reindexPillow(2))

	bin, err := buildPtop()
	if err != nil {
		t.Fatal(err)
	}
	// First attempt: interrupted in the middle of the rebuild.
	first := exec.Command(bin, "reindex", "ri", "--dir", pdir)
	var firstOut syncBuffer
	first.Stdout, first.Stderr = &firstOut, &firstOut
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(firstOut.String(), "reindex: rebuilding") {
		if time.Now().After(deadline) {
			t.Fatalf("the reindex did not start:\n%s", firstOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	first.Process.Signal(syscall.SIGINT)
	if err := first.Wait(); err == nil || !strings.Contains(firstOut.String(), "interrupted; run it again to resume") {
		t.Fatalf("interrupted reindex: %v\n%s", err, firstOut.String())
	}
	partial := pg.Query(t, pg.DSN(), "SELECT count(*) FROM cases__reindex")[0][0].(int64)
	if partial == 0 || partial >= n {
		t.Logf("the interruption came at %d of %d rows", partial, n)
	}

	// Second attempt: resumes, flips, catches up. A SIGHUP does not stop
	// it, and a third reindex started meanwhile refuses to run beside it.
	second := exec.Command(bin, "reindex", "ri", "--dir", pdir)
	var secondOut syncBuffer
	second.Stdout, second.Stderr = &secondOut, &secondOut
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(secondOut.String(), "lease acquired") {
		if time.Now().After(deadline) {
			t.Fatalf("the second reindex did not take its lease:\n%s", secondOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	second.Process.Signal(syscall.SIGHUP)
	third, err := exec.Command(bin, "reindex", "ri", "--dir", pdir).CombinedOutput()
	if err == nil || !regexp.MustCompile(`ptop reindex: pillow ri: another reindex of it is running \(\S+:\d+:\w+\); wait for it to end or stop it`).Match(third) {
		t.Fatalf("a reindex beside a running one: %v\n%s", err, third)
	}
	if err := second.Wait(); err != nil {
		t.Fatalf("resumed reindex: %v\n%s", err, secondOut.String())
	}
	out := []byte(secondOut.String())
	if !strings.Contains(string(out), "SIGHUP ignored") {
		t.Fatalf("the reindex did not say it ignored SIGHUP:\n%s", out)
	}
	if !strings.Contains(string(out), "complete") || !strings.Contains(string(out), "flipped") {
		t.Fatalf("resumed reindex:\n%s", out)
	}
	ids := w.halt()

	// Everything is in the new table: the old documents rebuilt with the
	// new transform, and every document written meanwhile (by the reindex
	// or, after the flip, by the live pillow).
	total := int64(n + len(ids))
	deadline = time.Now().Add(30 * time.Second)
	for count("true") != total {
		if time.Now().After(deadline) {
			t.Fatalf("table has %d rows, want %d; live log:\n%s", count("true"), total, live.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := count("ver = 2 AND _id LIKE 'd%'"); got != n {
		t.Fatalf("%d of the %d old documents were rebuilt with the new transform", got, n)
	}
	if rows := pg.Query(t, pg.DSN(), "SELECT to_regclass('cases__reindex') IS NULL AND to_regclass('cases__old') IS NULL"); rows[0][0] != true {
		t.Fatal("the shadow or the old table is left behind")
	}
	live.stop(t)
}
