package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// count returns a query's single integer, or -1 when it fails (the table
// is not there yet, the server is down).
func count(dsn, sql string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return -1
	}
	defer conn.Close(ctx)
	var n *int64
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil || n == nil {
		return -1
	}
	return *n
}

func bulk(t *testing.T, couch *testenv.Couch, db string, from, to int, extra map[string]any) {
	t.Helper()
	for lo := from; lo < to; lo += 5000 {
		var docs []map[string]any
		for i := lo; i < min(lo+5000, to); i++ {
			d := map[string]any{"_id": fmt.Sprintf("d%06d", i), "i": i, "name": fmt.Sprintf("doc %d", i)}
			for k, v := range extra {
				d[k] = v
			}
			docs = append(docs, d)
		}
		couch.BulkDocs(t, db, docs)
	}
}

// runPillow runs a pillow until the returned stop is called, which
// waits for Run to return and fails the test on an error.
func runPillow(t *testing.T, spec *engine.Spec) (p *engine.Pillow, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p = engine.NewPillow(spec, engine.RunOptions{Log: quietLog(), DrainTimeout: 20 * time.Second})
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("pillow: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("pillow did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return p, stop
}

// TestPillowThroughServerRestarts runs a pillow from a real CouchDB-protocol
// server into Postgres while Postgres is stopped and killed: the batches
// wait, nothing is lost; a restart of the pillow resumes from its
// checkpoint.
func TestPillowThroughServerRestarts(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	pg := testenv.StartPostgres(t)
	couch.CreateDB(t, "cases")
	bulk(t, couch, "cases", 0, 300, nil)

	pillow := fmt.Sprintf(`name: restarts
source:
  couchdb: {url: %q, db: cases, heartbeat: 1s}
transform: |
  function transform(doc, change) {
    return { _id: doc._id, name: doc.name, i: doc.i, seq: change.seq, extra: doc.extra };
  }
batch: {size: 50, wait: 50ms}
sinks:
  - postgres:
      dsn: %q
      table: cases
      columns: {name: text, i: integer, seq: bigint}
      create: true
      timeout: 5s
`, couch.URL, pg.DSN())
	rows := func() int64 { return count(pg.DSN(), "SELECT count(*) FROM cases") }
	_, stop := runPillow(t, loadPillow(t, pillow))
	waitFor(t, "300 rows", func() bool { return rows() == 300 })

	// Stopped (clients see 57P01 admin shutdown, then connection refused).
	pg.Stop(t)
	bulk(t, couch, "cases", 300, 500, nil)
	time.Sleep(20 * time.Second) // an outage of ~20 s: the pillow keeps retrying
	pg.Restart(t)
	waitFor(t, "500 rows after a stop", func() bool { return rows() == 500 })

	// Killed: connections reset, the server recovers from its log.
	pg.Kill(t)
	bulk(t, couch, "cases", 500, 600, nil)
	time.Sleep(time.Second)
	pg.Restart(t)
	waitFor(t, "600 rows after a kill", func() bool { return rows() == 600 })
	stop()

	cp, ok := couch.Get(t, "cases", "_local/ptop-restarts")
	if !ok {
		t.Fatal("no checkpoint")
	}
	// While the pillow is away: new documents, an update, a deletion.
	bulk(t, couch, "cases", 600, 700, nil)
	d1, _ := couch.Get(t, "cases", "d000001")
	d1["extra"] = "updated"
	couch.Put(t, "cases", "d000001", d1)
	d2, _ := couch.Get(t, "cases", "d000002")
	couch.Delete(t, "cases", "d000002", d2["_rev"].(string))

	p, stop := runPillow(t, loadPillow(t, pillow))
	waitFor(t, "699 rows after the pillow's restart", func() bool {
		return rows() == 699 && count(pg.DSN(), "SELECT count(*) FROM cases WHERE doc->>'extra' = 'updated' AND _rev LIKE '2-%'") == 1
	})
	stop()
	// The second run started from the checkpoint: it saw only the 102
	// changes made since.
	if seen := p.Stats.Seen.Load(); seen != 102 {
		t.Fatalf("the second run saw %d changes, want 102 (checkpoint %v)", seen, cp["seq"])
	}
}

// TestExactlyOnceAfterKill9 kills a process running a pillow whose
// checkpoint is kept in the sink's database, at random points, and checks
// each time that the table holds exactly the documents up to the
// checkpoint: the checkpoint is saved in each batch's transaction.
func TestExactlyOnceAfterKill9(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	couch.CreateDB(t, "docs")
	const n = 30000
	bulk(t, couch, "docs", 0, n, nil)
	seqOf := changesSeqs(t, couch, "docs")
	if len(seqOf) != n {
		t.Fatalf("%d changes, want %d", len(seqOf), n)
	}

	dir := t.TempDir()
	file := filepath.Join(dir, "eo.yaml")
	err := os.WriteFile(file, []byte(fmt.Sprintf(`name: eo
source:
  couchdb: {url: %q, db: docs, heartbeat: 1s}
transform: |
  function transform(doc, change) { return { _id: doc._id, seq: change.seq }; }
batch: {size: 100, wait: 20ms}
checkpoint:
  postgres: {dsn: %q, table: ptop_checkpoints}
sinks:
  - postgres: {dsn: %q, table: docs, columns: {seq: bigint}, create: true}
`, couch.URL, dsn, dsn)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	checkpoint := func() int64 { return count(dsn, "SELECT seq::int8 FROM ptop_checkpoints WHERE pillow = 'eo'") }

	// check compares the table with the documents the checkpoint covers.
	check := func(round string) int64 {
		t.Helper()
		cp := checkpoint()
		var want []string
		for id, seq := range seqOf {
			if seq <= cp {
				want = append(want, id)
			}
		}
		sort.Strings(want)
		var got []string
		for _, r := range pg.Query(t, dsn, "SELECT _id FROM docs ORDER BY _id") {
			got = append(got, r[0].(string))
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("%s: checkpoint %d covers %d documents, the table has %d rows (max seq %d)",
				round, cp, len(want), len(got), count(dsn, "SELECT max(seq) FROM docs"))
		}
		return cp
	}

	var last int64
	for round := 1; round <= 3; round++ {
		child := startChild(t, file)
		from := last
		waitFor(t, "progress", func() bool { return checkpoint() >= from+2000 || child.exited() })
		child.kill9(t)
		cp := check(fmt.Sprintf("round %d", round))
		t.Logf("round %d: killed at checkpoint %d", round, cp)
		if cp >= n {
			t.Fatalf("round %d: the pillow finished before it was killed; the test needs more documents", round)
		}
		last = cp
	}
	// The last run goes to the end.
	child := startChild(t, file)
	waitFor(t, "the end", func() bool { return checkpoint() == n })
	child.term(t)
	check("end")
}

// changesSeqs reads a database's changes feed: document id → seq.
func changesSeqs(t *testing.T, couch *testenv.Couch, db string) map[string]int64 {
	t.Helper()
	status, body := couch.Do(t, http.MethodGet, "/"+db+"/_changes", nil)
	if status != http.StatusOK {
		t.Fatalf("_changes: %d %s", status, body)
	}
	var feed struct {
		Results []struct {
			Seq json.Number `json:"seq"`
			ID  string      `json:"id"`
		} `json:"results"`
	}
	if err := json.Unmarshal(body, &feed); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, r := range feed.Results {
		n, err := strconv.ParseInt(r.Seq.String(), 10, 64)
		if err != nil {
			t.Fatalf("seq %q is not an integer", r.Seq)
		}
		out[r.ID] = n
	}
	return out
}

// child is the test binary running a pillow file (see TestMain).
type child struct {
	cmd    *exec.Cmd
	stderr *strings.Builder
	mu     *sync.Mutex
	done   chan struct{}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func startChild(t *testing.T, file string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(os.Args[0]), stderr: &strings.Builder{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	c.cmd.Env = append(os.Environ(), childEnv+"="+file)
	c.cmd.Stderr = lockedWriter{c.mu, c.stderr}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.done
	})
	return c
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *child) log() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stderr.String()
}

func (c *child) kill9(t *testing.T) {
	t.Helper()
	if c.exited() {
		t.Fatalf("the pillow process exited by itself:\n%s", c.log())
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

func (c *child) term(t *testing.T) {
	t.Helper()
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the pillow process did not stop on SIGTERM:\n%s", c.log())
	}
	if !c.cmd.ProcessState.Success() {
		t.Fatalf("the pillow process: %v\n%s", c.cmd.ProcessState, c.log())
	}
}

// A pillow whose table is missing (without create) stops at start with an
// error naming the table, instead of retrying for ever.
func TestPillowStopsOnMissingTable(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	spec := loadPillow(t, fmt.Sprintf(`name: missing
source: {file: {path: /dev/null}}
sinks:
  - postgres: {dsn: %q, table: nowhere, columns: {a: text}}
`, dsn))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := engine.NewPillow(spec, engine.RunOptions{Log: quietLog()}).Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "table nowhere does not exist: create it, or set create: true") {
		t.Fatalf("Run: %v", err)
	}
}

// A file source with its checkpoint in Postgres resumes after the saved
// seq: a second run of the same file writes nothing again, and rows
// appended to the file since are the only ones written.
func TestFileSourceResumesFromPostgresCheckpoint(t *testing.T) {
	t.Parallel()
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	rows := func(from, to int) string {
		var b strings.Builder
		for i := from; i <= to; i++ {
			fmt.Fprintf(&b, `{"seq":%d,"id":"d%d","changes":[{"rev":"1-a"}],"doc":{"_id":"d%d"}}`+"\n", i, i, i)
		}
		return b.String()
	}
	if err := os.WriteFile(in, []byte(rows(1, 5)), 0o644); err != nil {
		t.Fatal(err)
	}
	pillow := fmt.Sprintf(`name: resume
source: {file: {path: %q}}
checkpoint: {postgres: {dsn: %q}}
sinks: [{file: {path: %q}}]
`, in, dsn, out)
	run := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := engine.NewPillow(loadPillow(t, pillow), engine.RunOptions{Log: quietLog()}).Run(ctx); err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	lines := func() []string {
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	run()
	if got := count(dsn, "SELECT count(*) FROM ptop_checkpoints WHERE seq = '5'"); got != 1 {
		t.Fatalf("checkpoint rows at seq 5: %d", got)
	}
	run()
	if got := lines(); len(got) != 5 {
		t.Fatalf("after a second run of the same file, %d lines, want 5:\n%s", len(got), strings.Join(got, "\n"))
	}
	f, err := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(rows(6, 7))
	f.Close()
	run()
	got := lines()
	if len(got) != 7 || !strings.Contains(got[5], `"id":"d6"`) || !strings.Contains(got[6], `"id":"d7"`) {
		t.Fatalf("after appending two rows, lines:\n%s", strings.Join(got, "\n"))
	}
}

func (s *flakyErrors) setDown(v bool) { s.mu.Lock(); s.down = v; s.mu.Unlock() }

func (s *flakyErrors) callCount() int { s.mu.Lock(); defer s.mu.Unlock(); return s.calls }

func (s *flakyErrors) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id := range s.entries {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (s *flakyErrors) Record(_ context.Context, f engine.Failure, _ func(int) time.Duration) (engine.ErrorEntry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.down {
		return engine.ErrorEntry{}, fmt.Errorf("error store unavailable")
	}
	e := s.entries[f.Change.ID]
	e.Pillow, e.DocID, e.Error = f.Pillow, f.Change.ID, f.Err.Error()
	e.Attempts++
	s.entries[f.Change.ID] = e
	return e, nil
}

func (s *flakyErrors) List(context.Context, string) ([]engine.ErrorEntry, error) { return nil, nil }

func (s *flakyErrors) Clear(context.Context, string, string) error { return nil }

func (s *flakyErrors) Retry(context.Context, string, []string) (int, error) { return 0, nil }

func (s *flakyErrors) Purge(context.Context, string, []string) (int, error) { return 0, nil }

// TestExactlyOnceRecordsRejectedBeforeCheckpoint: with the checkpoint in
// the sink's transaction, the records Postgres rejects are recorded
// before that transaction commits. While the error store is unavailable,
// neither the rows nor the checkpoint pass the rejected changes; once it
// is back, it holds exactly the rejected records.
func TestExactlyOnceRecordsRejectedBeforeCheckpoint(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	couch.CreateDB(t, "docs")
	var docs []map[string]any
	for i := range 10 {
		d := map[string]any{"_id": fmt.Sprintf("d%d", i), "n": i}
		if i == 0 || i == 4 {
			d["n"] = "not a number"
		}
		docs = append(docs, d)
	}
	couch.BulkDocs(t, "docs", docs)
	spec := loadPillow(t, fmt.Sprintf(`name: eo
source:
  couchdb: {url: %q, db: docs, heartbeat: 1s}
batch: {size: 100, wait: 20ms}
checkpoint:
  postgres: {dsn: %q, table: ptop_checkpoints}
sinks:
  - postgres: {dsn: %q, table: docs, columns: {n: integer}, create: true}
`, couch.URL, dsn, dsn))
	store := &flakyErrors{entries: map[string]engine.ErrorEntry{}}
	store.setDown(true)
	ctx, cancel := context.WithCancel(context.Background())
	p := engine.NewPillow(spec, engine.RunOptions{Log: quietLog(), Errors: store})
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("pillow: %v", err)
		}
	}()
	checkpoint := func() int64 { return count(dsn, "SELECT seq::int8 FROM ptop_checkpoints WHERE pillow = 'eo'") }
	rows := func() int64 { return count(dsn, "SELECT count(*) FROM docs") }
	waitFor(t, "two attempts to record", func() bool { return store.callCount() >= 2 })
	if cp, n := checkpoint(), rows(); cp > 0 || n > 0 {
		t.Fatalf("with the error store down: checkpoint %d, %d rows; want neither past the rejected change d0", cp, n)
	}
	store.setDown(false)
	waitFor(t, "checkpoint 10", func() bool { return checkpoint() == 10 })
	if n := rows(); n != 8 {
		t.Fatalf("%d rows, want 8", n)
	}
	if ids := store.ids(); fmt.Sprint(ids) != "[d0 d4]" {
		t.Fatalf("error store holds %v, want [d0 d4]", ids)
	}
}

// startPillow runs spec until stopped, or until the test ends.
func startPillow(t *testing.T, spec *engine.Spec) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	p := engine.NewPillow(spec, engine.RunOptions{Log: quietLog()})
	go func() {
		defer close(r.done)
		r.err = p.Run(ctx)
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// ended reports whether Run has returned.
func (r *running) ended() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// stop cancels the pillow and returns what Run returned.
func (r *running) stop(t *testing.T) error {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Errorf("pillow did not stop")
	}
	return r.err
}

// TestConflictWinnerWithLowerGeneration: CouchDB's current revision of a
// conflicted document can have a lower generation than the one the sink
// holds (3-… deleted, the branch 2-ffff… wins): the feed's last change of
// the document is the truth, and the table ends with it.
func TestConflictWinnerWithLowerGeneration(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	couch.CreateDB(t, "docs")
	spec := loadPillow(t, fmt.Sprintf(`name: conflicts
source:
  couchdb: {url: %q, db: docs, heartbeat: 1s}
batch: {size: 10, wait: 20ms}
sinks:
  - postgres: {dsn: %q, table: docs, columns: {v: text}, create: true}
`, couch.URL, dsn))
	startPillow(t, spec)
	waitFor(t, "the table", func() bool { return count(dsn, "SELECT count(*) FROM docs") >= 0 })
	row := func() string {
		return table(t, pg, dsn, "SELECT _id, v, _rev FROM docs WHERE _id = 'c1'")
	}
	rev1 := couch.Put(t, "docs", "c1", map[string]any{"v": "one"})
	rev2 := couch.Put(t, "docs", "c1", map[string]any{"_rev": rev1, "v": "two"})
	rev3 := couch.Put(t, "docs", "c1", map[string]any{"_rev": rev2, "v": "three"})
	waitFor(t, "c1 at "+rev3, func() bool { return row() == "c1|three|"+rev3 })

	// A branch 2-ffff… from 1-…, then the deletion of 3-…: 2-ffff… wins.
	hash1 := strings.SplitN(rev1, "-", 2)[1]
	branch := map[string]any{
		"_id": "c1", "_rev": "2-ffffffffffffffffffffffffffffffff", "v": "branch",
		"_revisions": map[string]any{"start": 2, "ids": []string{"ffffffffffffffffffffffffffffffff", hash1}},
	}
	status, body := couch.Do(t, http.MethodPost, "/docs/_bulk_docs", map[string]any{"docs": []any{branch}, "new_edits": false})
	if status != http.StatusCreated {
		t.Fatalf("_bulk_docs new_edits:false: HTTP %d: %s", status, body)
	}
	couch.Delete(t, "docs", "c1", rev3)
	cur, ok := couch.Get(t, "docs", "c1")
	if !ok || cur["_rev"] != "2-ffffffffffffffffffffffffffffffff" {
		t.Fatalf("the server's current c1: %v", cur)
	}
	waitFor(t, "c1 at the winner 2-ffff…", func() bool { return row() == "c1|branch|2-ffffffffffffffffffffffffffffffff" })
}

// TestRecreatedDatabase: when the source database is deleted and created
// again, its feed goes back from the pillow's checkpoint (kept here in
// Postgres, so that it outlives the database); the sink, which keeps rows
// by feed position, would refuse the new database's changes, so the
// pillow stops with a message that says to run ptop reindex, and stops
// again on each start until then. After the reindex the table equals the
// new database, and the pillow goes on from there. (pouchdb-server keeps
// the feed of a deleted database open and silent, where CouchDB ends it:
// the pillow is restarted here to see the new database.)
func TestRecreatedDatabase(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	couch.CreateDB(t, "docs")
	spec := loadPillow(t, fmt.Sprintf(`name: recreated
source:
  couchdb: {url: %q, db: docs, heartbeat: 1s}
batch: {size: 10, wait: 20ms}
checkpoint:
  postgres: {dsn: %q}
sinks:
  - postgres: {dsn: %q, table: docs, columns: {v: text}, create: true}
`, couch.URL, dsn, dsn))
	rows := func() string { return table(t, pg, dsn, "SELECT _id, v, _rev FROM docs ORDER BY _id") }
	r1 := couch.Put(t, "docs", "r1", map[string]any{"v": "old 1"})
	r1 = couch.Put(t, "docs", "r1", map[string]any{"_rev": r1, "v": "old 1b"})
	r1 = couch.Put(t, "docs", "r1", map[string]any{"_rev": r1, "v": "old 1c"})
	r2 := couch.Put(t, "docs", "r2", map[string]any{"v": "old 2"})
	old := "r1|old 1c|" + r1 + "\nr2|old 2|" + r2
	live := startPillow(t, spec)
	waitFor(t, "the table", func() bool { return count(dsn, "SELECT count(*) FROM docs") >= 0 })
	waitFor(t, "the old rows", func() bool { return rows() == old })
	if err := live.stop(t); err != nil {
		t.Fatal(err)
	}

	if status, body := couch.Do(t, http.MethodDelete, "/docs", nil); status != http.StatusOK {
		t.Fatalf("delete database: HTTP %d: %s", status, body)
	}
	couch.CreateDB(t, "docs")
	n1 := couch.Put(t, "docs", "r1", map[string]any{"v": "new 1"})
	n3 := couch.Put(t, "docs", "r3", map[string]any{"v": "new 3"})
	want := "r1|new 1|" + n1 + "\nr3|new 3|" + n3

	stopped := func(r *running) {
		t.Helper()
		waitFor(t, "the pillow to stop by itself", r.ended)
		err := r.err
		if err == nil || !strings.Contains(err.Error(), "run ptop reindex recreated") {
			t.Fatalf("pillow ended with %v, want the message to run ptop reindex", err)
		}
		if got := rows(); got != old {
			t.Fatalf("the stopped pillow changed the table:\n%s", got)
		}
	}
	stopped(startPillow(t, spec))
	stopped(startPillow(t, spec)) // and again

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := engine.Reindex(ctx, spec, engine.ReindexOptions{Log: quietLog(), Every: 20 * time.Millisecond}); err != nil {
		t.Fatalf("reindex: %v", err)
	}
	if got := rows(); got != want {
		t.Fatalf("after the reindex:\n%s\nwant\n%s", got, want)
	}
	live = startPillow(t, spec)
	n4 := couch.Put(t, "docs", "r4", map[string]any{"v": "new 4"})
	want += "\nr4|new 4|" + n4
	waitFor(t, "r4", func() bool { return rows() == want })
	if err := live.stop(t); err != nil {
		t.Fatalf("pillow after the reindex: %v", err)
	}
}

// TestReindexCheckpointBelongsToItsTable: an interrupted reindex resumes
// from its checkpoint only into the shadow table it was saved for, under
// the same definition; when the shadow table was dropped, or the pillow's
// definition changed, it rebuilds from the beginning. Each time the final
// table holds every document.
func TestReindexCheckpointBelongsToItsTable(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	couch.CreateDB(t, "docs")
	const n = 3000
	bulk(t, couch, "docs", 0, n, nil)
	pillow := func(ver int) *engine.Spec {
		return loadPillow(t, fmt.Sprintf(`name: ri
source:
  couchdb: {url: %q, db: docs, heartbeat: 1s}
transform: |
  function transform(doc) { return { _id: doc._id, i: doc.i, ver: %d }; }
batch: {size: 10, wait: 20ms}
workers: 1
sinks:
  - postgres: {dsn: %q, table: docs, columns: {i: integer, ver: integer}, doc: false, create: true}
`, couch.URL, ver, dsn))
	}
	// reindex runs a reindex, interrupted once its rebuild has saved a
	// checkpoint when interrupt is set, and returns how many changes its
	// rebuild read.
	reindex := func(spec *engine.Spec, interrupt bool) int64 {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var seen int64
		err := engine.Reindex(ctx, spec, engine.ReindexOptions{
			Log: quietLog(), Every: 10 * time.Millisecond,
			Progress: func(p engine.ReindexProgress) {
				if p.Phase != "rebuild" {
					return
				}
				seen = p.Seen
				if interrupt && p.Done > 0 {
					cancel()
				}
			},
		})
		if interrupt {
			partial := count(dsn, "SELECT count(*) FROM docs__reindex")
			if err == nil || partial <= 0 || partial >= n {
				t.Fatalf("interrupted reindex: %v, with %d rows in the shadow table", err, partial)
			}
		} else if err != nil {
			t.Fatalf("reindex: %v", err)
		}
		return seen
	}
	check := func(round string, ver int) {
		t.Helper()
		if got := count(dsn, fmt.Sprintf("SELECT count(*) FROM docs WHERE ver = %d", ver)); got != n {
			t.Fatalf("%s: %d rows of version %d, want %d", round, got, ver, n)
		}
	}

	// Interrupted, then run again as it was: it resumes.
	reindex(pillow(1), true)
	if seen := reindex(pillow(1), false); seen >= n {
		t.Errorf("resumed: the rebuild read %d changes, want fewer than %d", seen, n)
	}
	check("resumed", 1)

	// Interrupted, the shadow table dropped: from the beginning.
	reindex(pillow(1), true)
	pg.ExecIn(t, dsn, "DROP TABLE docs__reindex")
	if seen := reindex(pillow(1), false); seen != n {
		t.Errorf("after the shadow table was dropped: the rebuild read %d changes, want %d", seen, n)
	}
	check("shadow table dropped", 1)

	// Interrupted, the definition changed: from the beginning, into a
	// table made anew.
	reindex(pillow(1), true)
	if seen := reindex(pillow(2), false); seen != n {
		t.Errorf("after the definition changed: the rebuild read %d changes, want %d", seen, n)
	}
	check("definition changed", 2)

	// Stopped while flipping (its mark left behind): refused without
	// --resume; with --resume restart, rebuilt from the beginning.
	mark, _ := couch.Get(t, "docs", "_local/ptop-ri.reindex-flipping")
	couch.Put(t, "docs", "_local/ptop-ri.reindex-flipping", map[string]any{"_rev": mark["_rev"], "seq": "1500"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := engine.Reindex(ctx, pillow(3), engine.ReindexOptions{Log: quietLog()})
	if err == nil || !strings.Contains(err.Error(), "stopped while flipping") {
		t.Fatalf("reindex after a stop while flipping: %v", err)
	}
	if err := engine.Reindex(ctx, pillow(3), engine.ReindexOptions{Log: quietLog(), Every: 10 * time.Millisecond, Resume: "restart"}); err != nil {
		t.Fatalf("reindex --resume restart: %v", err)
	}
	check("resume restart", 3)
	if err := engine.Reindex(ctx, pillow(3), engine.ReindexOptions{Log: quietLog(), Every: 10 * time.Millisecond}); err != nil {
		t.Fatalf("the next reindex: %v", err)
	}
}

// TestRecreatedDatabaseWhileRunning: the database created again behind a
// running pillow whose checkpoints live in that database (the default):
// the pillow stops with the message to run ptop reindex and saves its
// checkpoint again into the new database, so that the next start stops
// too rather than reading the new database into rows it would refuse.
// (The in-memory server restarted empty stands for the recreated
// database: pouchdb-server keeps the feed of a deleted one open.)
func TestRecreatedDatabaseWhileRunning(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	pg := testenv.SharedPostgres(t)
	dsn := pg.NewDatabase(t)
	couch.CreateDB(t, "docs")
	spec := loadPillow(t, fmt.Sprintf(`name: running
source:
  couchdb: {url: %q, db: docs, heartbeat: 200ms}
batch: {size: 10, wait: 20ms}
sinks:
  - postgres: {dsn: %q, table: docs, columns: {v: text}, create: true}
`, couch.URL, dsn))
	rows := func() string { return table(t, pg, dsn, "SELECT _id, v FROM docs ORDER BY _id") }
	for i := range 5 {
		couch.Put(t, "docs", fmt.Sprintf("old%d", i), map[string]any{"v": "old"})
	}
	live := startPillow(t, spec)
	waitFor(t, "the table", func() bool { return count(dsn, "SELECT count(*) FROM docs") == 5 })
	old := rows()

	couch.Kill(t)
	couch.Restart(t)
	couch.CreateDB(t, "docs")
	couch.Put(t, "docs", "new1", map[string]any{"v": "new"})
	couch.Put(t, "docs", "new2", map[string]any{"v": "new"})
	for round, r := range []*running{live, nil} {
		if r == nil {
			r = startPillow(t, spec)
		}
		waitFor(t, "the pillow to stop by itself", r.ended)
		if r.err == nil || !strings.Contains(r.err.Error(), "run ptop reindex running") {
			t.Fatalf("round %d: pillow ended with %v, want the message to run ptop reindex", round, r.err)
		}
		if got := rows(); got != old {
			t.Fatalf("round %d: the stopped pillow changed the table:\n%s", round, got)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := engine.Reindex(ctx, spec, engine.ReindexOptions{Log: quietLog(), Every: 20 * time.Millisecond}); err != nil {
		t.Fatalf("reindex: %v", err)
	}
	if got, want := rows(), "new1|new\nnew2|new"; got != want {
		t.Fatalf("after the reindex:\n%s\nwant\n%s", got, want)
	}
	live = startPillow(t, spec)
	couch.Put(t, "docs", "new3", map[string]any{"v": "new"})
	waitFor(t, "new3", func() bool { return rows() == "new1|new\nnew2|new\nnew3|new" })
	if err := live.stop(t); err != nil {
		t.Fatalf("pillow after the reindex: %v", err)
	}
}

// flakyErrors is an error store that refuses to record while down is set.
type flakyErrors struct {
	mu      sync.Mutex
	down    bool
	calls   int
	entries map[string]engine.ErrorEntry
}

// running is a pillow running in the background.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set when done is closed
}
