//go:build unix

package testenv

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestCouchDocs(t *testing.T) {
	t.Parallel()
	c := StartCouch(t, CouchOptions{})
	if !strings.HasPrefix(c.URL, "http://127.0.0.1:") || c.Port == 0 {
		t.Fatalf("URL %q, Port %d", c.URL, c.Port)
	}
	c.CreateDB(t, "db")

	rev1 := c.Put(t, "db", "doc1", map[string]any{"a": 1, "s": "x"})
	if !strings.HasPrefix(rev1, "1-") {
		t.Fatalf("rev %q", rev1)
	}
	doc, ok := c.Get(t, "db", "doc1")
	if !ok || doc["a"] != float64(1) || doc["s"] != "x" || doc["_rev"] != rev1 {
		t.Fatalf("got %v, %v", doc, ok)
	}
	rev2 := c.Put(t, "db", "doc1", map[string]any{"a": 2, "_rev": rev1})
	if !strings.HasPrefix(rev2, "2-") {
		t.Fatalf("rev %q", rev2)
	}
	rev3 := c.Delete(t, "db", "doc1", rev2)
	if !strings.HasPrefix(rev3, "3-") {
		t.Fatalf("rev %q", rev3)
	}
	if doc, ok := c.Get(t, "db", "doc1"); ok {
		t.Fatalf("deleted doc still there: %v", doc)
	}
	if _, ok := c.Get(t, "db", "never"); ok {
		t.Fatal("Get of a missing doc returned true")
	}

	// Ids that need escaping, and a design document.
	for _, id := range []string{"a b/c?d#e&f", "_design/ddoc", "ünï"} {
		c.Put(t, "db", id, map[string]any{"id": id})
		doc, ok := c.Get(t, "db", id)
		if !ok || doc["_id"] != id || doc["id"] != id {
			t.Fatalf("id %q: got %v, %v", id, doc, ok)
		}
	}

	docs := make([]map[string]any, 100)
	for i := range docs {
		docs[i] = map[string]any{"_id": fmt.Sprintf("bulk%03d", i), "n": i}
	}
	c.BulkDocs(t, "db", docs)
	if doc, ok := c.Get(t, "db", "bulk042"); !ok || doc["n"] != float64(42) {
		t.Fatalf("bulk042: %v, %v", doc, ok)
	}

	status, body := c.Do(t, http.MethodGet, "/db/_changes", nil)
	if status != http.StatusOK || !strings.Contains(string(body), `"bulk099"`) {
		t.Fatalf("_changes: HTTP %d: %.300s", status, body)
	}
}

// fakeTB records Fatalf and ends the goroutine like testing.T does.
type fakeTB struct {
	testing.TB
	fatal string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// fatalOf runs fn with a fakeTB and returns its Fatalf message ("" if none).
func fatalOf(t *testing.T, fn func(tb testing.TB)) string {
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f.fatal
}

func TestCouchHelpersFail(t *testing.T) {
	t.Parallel()
	c := StartCouch(t, CouchOptions{})
	c.CreateDB(t, "db")
	rev := c.Put(t, "db", "x", map[string]any{})

	if msg := fatalOf(t, func(tb testing.TB) { c.CreateDB(tb, "db") }); !strings.Contains(msg, "412") {
		t.Errorf("CreateDB of an existing db: %q", msg)
	}
	if msg := fatalOf(t, func(tb testing.TB) { c.Put(tb, "db", "x", map[string]any{}) }); !strings.Contains(msg, "409") {
		t.Errorf("Put conflict: %q", msg)
	}
	if msg := fatalOf(t, func(tb testing.TB) { c.Delete(tb, "db", "x", "1-bad") }); msg == "" {
		t.Errorf("Delete with a wrong rev did not fail")
	}
	msg := fatalOf(t, func(tb testing.TB) {
		c.BulkDocs(tb, "db", []map[string]any{{"_id": "ok1"}, {"_id": "x"}, {"_id": "ok2"}})
	})
	if !strings.Contains(msg, "1 of 3 docs failed") || !strings.Contains(msg, `"x"`) || !strings.Contains(msg, "conflict") {
		t.Errorf("BulkDocs with a conflict: %q", msg)
	}
	if doc, ok := c.Get(t, "db", "x"); !ok || doc["_rev"] != rev {
		t.Errorf("doc x changed: %v", doc)
	}
}

func TestCouchRestartInMemory(t *testing.T) {
	t.Parallel()
	c := StartCouch(t, CouchOptions{})
	url := c.URL
	c.CreateDB(t, "db")
	c.Put(t, "db", "doc1", map[string]any{"a": 1})

	c.Restart(t)
	if c.URL != url || !c.Running() {
		t.Fatalf("after Restart: URL %q (was %q), running %v", c.URL, url, c.Running())
	}
	if status, body := c.Do(t, http.MethodGet, "/db", nil); status != http.StatusNotFound {
		t.Fatalf("in-memory db survived a restart: HTTP %d %s", status, body)
	}
	c.CreateDB(t, "db")

	c.Stop(t)
	if c.Running() {
		t.Fatal("running after Stop")
	}
	if _, err := http.Get(c.URL + "/"); err == nil {
		t.Fatal("server still answers after Stop")
	}
	c.Stop(t) // no-op
	c.Kill(t) // no-op
	c.Restart(t)
	c.CreateDB(t, "db")
}

func TestCouchDataDirSurvivesKill(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	c := StartCouch(t, CouchOptions{DataDir: data})
	c.CreateDB(t, "db")
	rev := c.Put(t, "db", "doc1", map[string]any{"a": 1})
	uuid := serverUUID(t, c)

	c.Kill(t)
	if c.Running() {
		t.Fatal("running after Kill")
	}
	c.Restart(t)
	doc, ok := c.Get(t, "db", "doc1")
	if !ok || doc["_rev"] != rev {
		t.Fatalf("after Kill+Restart: %v, %v", doc, ok)
	}
	if got := serverUUID(t, c); got != uuid {
		t.Errorf("server uuid changed across restart: %q -> %q", uuid, got)
	}
	if _, err := os.Stat(filepath.Join(data, "db")); err != nil {
		t.Errorf("database not in DataDir: %v", err)
	}
}

func serverUUID(t *testing.T, c *Couch) string {
	t.Helper()
	status, body := c.Do(t, http.MethodGet, "/", nil)
	if status != http.StatusOK {
		t.Fatalf("GET /: HTTP %d %s", status, body)
	}
	i := strings.Index(string(body), `"uuid":"`)
	if i < 0 {
		t.Fatalf("no uuid in %s", body)
	}
	return string(body[i+8 : i+8+36])
}

// The server writes log.txt and config.json into its working directory: that
// must be the scratch dir, not the package directory or the repo root.
func TestCouchDoesNotLitter(t *testing.T) {
	t.Parallel()
	c := StartCouch(t, CouchOptions{})
	c.CreateDB(t, "db")
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"log.txt", "config.json"} {
		if _, err := os.Stat(filepath.Join(wd, name)); err == nil {
			t.Errorf("%s written into %s", name, wd)
		}
	}
	if root, err := RepoRoot(); err != nil || !fileExists(filepath.Join(root, "tools", "pouchdb", "package-lock.json")) {
		t.Errorf("RepoRoot() = %q, %v: no tools/pouchdb/package-lock.json there", root, err)
	}
	for _, name := range []string{"log.txt", "config.json", "server.log"} {
		if _, err := os.Stat(filepath.Join(c.workDir, name)); err != nil {
			t.Errorf("expected %s in the scratch dir: %v", name, err)
		}
	}
	// The request is logged once the response is finished: allow a moment.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		tail := c.LogTail()
		if strings.Contains(tail, "PUT /db 201") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("log tail lacks the request:\n%s", tail)
			break
		}
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestStartFailureReportsLog(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-pouchdb-server")
	script := "#!/bin/sh\necho 'fake server: cannot start' >&2\nexit 3\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	c := &Couch{
		Port: port, URL: fmt.Sprintf("http://127.0.0.1:%d", port),
		bin: bin, workDir: dir, logPath: filepath.Join(dir, "server.log"),
		transport: &http.Transport{},
	}
	start := time.Now()
	err = c.start()
	if err == nil || !strings.Contains(err.Error(), "exited during startup") {
		t.Fatalf("start: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("an exiting server took %v to be noticed", time.Since(start))
	}
	if tail := c.logTail(); !strings.Contains(tail, "fake server: cannot start") {
		t.Errorf("log tail:\n%s", tail)
	}
	if c.Running() {
		t.Error("running after a failed start")
	}
}

func TestFreePort(t *testing.T) {
	p, err := FreePort()
	if err != nil || p <= 0 || p > 65535 {
		t.Fatalf("FreePort() = %d, %v", p, err)
	}
}

func TestDocPath(t *testing.T) {
	for _, tc := range []struct{ db, id, want string }{
		{"db", "a", "/db/a"},
		{"a/b", "c d", "/a%2Fb/c%20d"},
		{"db", "_design/x y", "/db/_design/x%20y"},
		{"db", "_local/cp", "/db/_local/cp"},
		{"db", "a/b?c", "/db/a%2Fb%3Fc"},
	} {
		if got := docPath(tc.db, tc.id); got != tc.want {
			t.Errorf("docPath(%q, %q) = %q, want %q", tc.db, tc.id, got, tc.want)
		}
	}
}
