package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
)

// updateDocs makes the status page and ptop top tests write the README's
// pictures: go test ./cmd/ptop -run 'TestStatusPage|TestTop' -docs
var updateDocs = flag.Bool("docs", false, "write docs/status-page.png and docs/top.txt from the status page and ptop top tests")

// liveRun is a ptop run with three pillows on a real pouchdb-server, for
// the status page and ptop top: "backlog" and "stuck" cannot write (their
// tcp sink's peer went away) and so keep 40 and 15 pending changes and a
// reason; "cases" writes everything and is healthy.
type liveRun struct {
	couch *testenv.Couch
	ptop  *proc
	addr  string
}

func startLiveRun(t *testing.T) *liveRun {
	t.Helper()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	dir := t.TempDir()
	t.Setenv("COUCH_URL", couch.URL)
	for name, n := range map[string]int{"backlog": 40, "stuck": 15, "cases": 8} {
		couch.CreateDB(t, name)
		var docs []map[string]any
		for i := 0; i < n; i++ {
			docs = append(docs, map[string]any{"_id": fmt.Sprintf("%s-%03d", name, i), "type": "case", "n": i})
		}
		couch.BulkDocs(t, name, docs)
		// A checkpoint at the start, so that pending changes are known
		// before the pillow saves one.
		if code, body := couch.Do(t, "PUT", "/"+name+"/_local/ptop-"+name, map[string]any{"seq": "0", "pillow": name}); code != 201 {
			t.Fatalf("checkpoint of %s: %d %s", name, code, body)
		}
		sink := fmt.Sprintf("file: {path: %q}", filepath.Join(dir, name+".jsonl"))
		if name != "cases" {
			sink = "tcp: {address: " + goneAway(t) + ", write_timeout: 1s}"
		}
		write(t, filepath.Join(dir, "p", name+".yaml"), fmt.Sprintf(`name: %s
source:
  couchdb: {url: "${COUCH_URL}", db: %s, heartbeat: 1s}
filter: doc.type == "case"
batch: {size: 10, wait: 50ms}
sinks:
  - %s
`, name, name, sink))
	}
	p := startPtop(t, "run", filepath.Join(dir, "p"), "--history-every", "200ms")
	lr := &liveRun{couch: couch, ptop: p, addr: listenAddr(t, p)}
	lr.waitStatus(t, func(ps map[string]pillowJSON) bool {
		b, s, c := ps["backlog"], ps["stuck"], ps["cases"]
		return b.Pending == 40 && !b.Healthy && s.Pending == 15 && !s.Healthy && c.Pending == 0 && c.Healthy && c.Written == 8
	})
	return lr
}

// goneAway is the address of a listener that takes one connection (the
// sink's open) and then closes it and itself: every write after fails.
func goneAway(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		ln.Close()
		if err == nil {
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// waitStatus polls /status until ok holds of its pillows.
func (lr *liveRun) waitStatus(t *testing.T, ok func(map[string]pillowJSON) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var body string
	for {
		_, body = get(t, "http://"+lr.addr+"/status")
		var st statusJSON
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("/status: %v: %s", err, body)
		}
		ps := map[string]pillowJSON{}
		for _, p := range st.Pillows {
			ps[p.Pillow] = p
		}
		if ok(ps) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/status never showed what was expected:\n%s\nlog:\n%s", body, lr.ptop.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
