package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
)

// writer puts documents into a database until stopped, and remembers the
// ids it put.
type writer struct {
	url, db string
	mu      sync.Mutex
	ids     []string
	stop    chan struct{}
	done    chan struct{}
}

func startWriter(t *testing.T, url, db string) *writer {
	w := &writer{url: url, db: db, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			id := fmt.Sprintf("%s-%05d", db, i)
			body, _ := json.Marshal(map[string]any{"v": i})
			put := func() (*http.Response, error) {
				req, _ := http.NewRequest(http.MethodPut, url+"/"+db+"/"+id, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				return http.DefaultClient.Do(req)
			}
			resp, err := put()
			retried := false
			if err != nil {
				// A kept-alive connection the server closed meanwhile
				// (EOF): once more; a 409 then says the first one landed.
				resp, err = put()
				retried = true
			}
			if err != nil {
				t.Errorf("put %s: %v", id, err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated && !(retried && resp.StatusCode == http.StatusConflict) {
				t.Errorf("put %s: %s", id, resp.Status)
				return
			}
			w.mu.Lock()
			w.ids = append(w.ids, id)
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *writer) halt() []string {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.ids...)
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ids)
}

func pillowYAML(name, db, out, transform string) string {
	return fmt.Sprintf(`name: %s
source:
  couchdb: {url: "${COUCH_URL}", db: %s, heartbeat: 1s}
transform: |
  %s
batch: {size: 50, wait: 50ms}
sinks:
  - file: {path: %s}
`, name, db, transform, out)
}

// waitLog waits until the ptop log contains s n times.
func waitLog(t *testing.T, p *proc, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(p.stderr.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("log does not show %q %d times:\n%s", s, n, p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReloadUnderLoad edits, adds, removes and breaks pillows while
// documents flow, with a SIGHUP after each change.
func TestReloadUnderLoad(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "alpha")
	couch.CreateDB(t, "beta")
	couch.CreateDB(t, "gamma")
	dir := t.TempDir()
	pdir := filepath.Join(dir, "pipelines")
	outA, outB, outC := filepath.Join(dir, "a.jsonl"), filepath.Join(dir, "b.jsonl"), filepath.Join(dir, "c.jsonl")
	fileA, fileB, fileC := filepath.Join(pdir, "a.yaml"), filepath.Join(pdir, "b.yaml"), filepath.Join(pdir, "c.yaml")
	v1 := `function transform(doc) { return { v: doc.v, version: 1 }; }`
	write(t, fileA, pillowYAML("a", "alpha", outA, v1))
	write(t, fileB, pillowYAML("b", "beta", outB, v1))
	t.Setenv("COUCH_URL", couch.URL)

	wa := startWriter(t, couch.URL, "alpha")
	wb := startWriter(t, couch.URL, "beta")
	wc := startWriter(t, couch.URL, "gamma")
	p := startPtop(t, "run", pdir)
	waitLines(t, p, outB, 20)
	hup := func(n int) {
		t.Helper()
		p.cmd.Process.Signal(syscall.SIGHUP)
		waitLog(t, p, "msg=\"reload ", n)
	}

	// 1. A new transform for b: its later records use it.
	write(t, fileB, pillowYAML("b", "beta", outB, `function transform(doc) { return { v: doc.v, version: 2 }; }`))
	hup(1)
	if !strings.Contains(p.stderr.String(), `restarted=b unchanged=a`) {
		t.Fatalf("reload 1 outcome:\n%s", p.stderr)
	}
	n := wb.count()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ls := readLines(t, outB)
		last := ls[len(ls)-1]
		if last.Doc["version"] == 2.0 && len(ls) > n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b's records do not use the new transform: last %v", last)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// 2. A new pillow.
	write(t, fileC, pillowYAML("c", "gamma", outC, v1))
	hup(2)
	if !strings.Contains(p.stderr.String(), `started=c stopped="" restarted="" unchanged=a,b`) {
		t.Fatalf("reload 2 outcome:\n%s", p.stderr)
	}
	waitLines(t, p, outC, 5)

	// 3. A pillow removed.
	os.Remove(fileC)
	hup(3)
	if !strings.Contains(p.stderr.String(), `started="" stopped=c restarted="" unchanged=a,b`) {
		t.Fatalf("reload 3 outcome:\n%s", p.stderr)
	}
	idsC := wc.halt()
	time.Sleep(300 * time.Millisecond)
	stoppedAt := len(readLines(t, outC))
	if stoppedAt >= len(idsC) && len(idsC) > 0 {
		t.Logf("c had caught up before it stopped (%d of %d)", stoppedAt, len(idsC))
	}

	// 4. An invalid edit changes nothing.
	write(t, fileA, "name: a\nsource: {couchdb: {url: x, db: alpha}}\nsinks: []\n")
	hup(4)
	if !strings.Contains(p.stderr.String(), "reload refused: nothing changed") || !strings.Contains(p.stderr.String(), "a.yaml:3:8: a pillow needs at least one sink") {
		t.Fatalf("reload 4 outcome:\n%s", p.stderr)
	}
	time.Sleep(200 * time.Millisecond)
	if got := len(readLines(t, outC)); got != stoppedAt {
		t.Fatalf("the removed pillow c wrote %d more records", got-stoppedAt)
	}

	// 5. A YAML alias bomb (nine-way aliases nested nine deep, ~43
	// million values expanded) is refused quickly, like any invalid file:
	// the running pillows go on.
	bomb := "name: d\nsource:\n  couchdb:\n    url: x\n    db: delta\n    selector:\n      a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
	for i := 1; i <= 8; i++ {
		bomb += fmt.Sprintf("      a%d: &a%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*a%d, ", i-1), 9), ", "))
	}
	write(t, filepath.Join(pdir, "d.yaml"), bomb+"sinks: [{file: {path: d.jsonl}}]\n")
	hup(5)
	if strings.Count(p.stderr.String(), "reload refused: nothing changed") != 2 || !strings.Contains(p.stderr.String(), "d.yaml:11:16: more than 1000 YAML aliases, expanded") {
		t.Fatalf("reload 5 outcome:\n%s", p.stderr)
	}

	// Nothing lost: every document put reaches its pillow's output.
	idsA, idsB := wa.halt(), wb.halt()
	for _, c := range []struct {
		out string
		ids []string
	}{{outA, idsA}, {outB, idsB}} {
		lines := waitLines(t, p, c.out, len(c.ids))
		seen := map[string]bool{}
		for _, l := range lines {
			seen[l.ID] = true
		}
		for _, id := range c.ids {
			if !seen[id] {
				t.Fatalf("%s lost %s", c.out, id)
			}
		}
	}
	p.stop(t)
	// a's feed was never reconnected: one connection in the whole run.
	if n := strings.Count(p.stderr.String(), `msg="couchdb changes feed connected" pillow=a `); n != 1 {
		t.Fatalf("pillow a connected %d times; log:\n%s", n, p.stderr)
	}
}
