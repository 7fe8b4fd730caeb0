package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
)

// fifoPillow is a running `ptop run` whose one pillow reads a named pipe
// the test writes changes into: the pillow keeps running until the pipe is
// closed, and no server is needed.
type fifoPillow struct {
	*proc
	base string // http://ADDR of its listener
	addr string
	feed *os.File
	out  string // the file sink's path
	seq  int
}

const fifoPillowYAML = `name: t
source: {file: {path: "${FEED}"}}
filter: doc.type == "case"
transform: |
  function transform(doc) {
    if (doc.boom) throw new Error("boom");
    return { _id: doc._id, name: doc.name, pad: doc.pad };
  }
batch: {size: 50, wait: 20ms}
sinks:
  - file: {path: "${OUT}"}
`

func startFifoPillow(t *testing.T, args ...string) *fifoPillow {
	t.Helper()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "feed")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Read-write: the open does not wait for ptop, and ptop sees the end
	// of the feed only when the test closes it.
	feed, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { feed.Close() })
	out := filepath.Join(dir, "out.jsonl")
	write(t, filepath.Join(dir, "p", "t.yaml"), fifoPillowYAML)
	t.Setenv("FEED", fifo)
	t.Setenv("OUT", out)
	p := startPtop(t, append([]string{"run", filepath.Join(dir, "p")}, args...)...)
	fp := &fifoPillow{proc: p, feed: feed, out: out}
	fp.addr = listenAddr(t, p)
	fp.base = "http://" + fp.addr
	return fp
}

// listenAddr waits for the log line naming the HTTP listener's address.
func listenAddr(t *testing.T, p *proc) string {
	t.Helper()
	re := regexp.MustCompile(`msg="serving /metrics, /healthz and /status" addr=(\S+)`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := re.FindStringSubmatch(p.stderr.String()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no listener address in the log:\n%s", p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// send writes changes to the feed: each doc is a JSON object with _id;
// a doc with "_deleted": true is a deletion.
func (fp *fifoPillow) send(t *testing.T, docs ...map[string]any) {
	t.Helper()
	var b bytes.Buffer
	for _, d := range docs {
		fp.seq++
		row := map[string]any{"seq": fp.seq, "id": d["_id"], "changes": []any{map[string]any{"rev": "1-x"}}, "doc": d}
		if d["_deleted"] == true {
			row["deleted"] = true
		}
		line, _ := json.Marshal(row)
		b.Write(append(line, '\n'))
	}
	if _, err := fp.feed.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
}

// outLines counts the lines the file sink has written.
func (fp *fifoPillow) outLines(t *testing.T) int {
	b, err := os.ReadFile(fp.out)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// end closes the feed: the pillow reads to its end and ptop exits.
func (fp *fifoPillow) end(t *testing.T) {
	t.Helper()
	fp.feed.Close()
	select {
	case err := <-fp.done:
		if err != nil {
			t.Fatalf("ptop: %v\n%s", err, fp.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("ptop did not end with its feed:\n%s", fp.stderr)
	}
}

// tapRun is `ptop tap` run in this process.
type tapRun struct {
	stdout, stderr *syncBuffer
	code           chan int
}

func startTap(t *testing.T, args ...string) *tapRun {
	t.Helper()
	r := &tapRun{stdout: &syncBuffer{}, stderr: &syncBuffer{}, code: make(chan int, 1)}
	go func() { r.code <- run(append([]string{"tap"}, args...), r.stdout, r.stderr) }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(r.stderr.String(), "ptop tap: tapping") {
		select {
		case c := <-r.code:
			t.Fatalf("ptop tap %v: exit %d: %s", args, c, r.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ptop tap %v did not connect: %s", args, r.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

func (r *tapRun) wait(t *testing.T) []map[string]any {
	t.Helper()
	select {
	case c := <-r.code:
		if c != 0 {
			t.Fatalf("ptop tap: exit %d: %s", c, r.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("ptop tap did not exit; stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(r.stdout.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("ptop tap printed %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func brief(ls []map[string]any) string {
	var parts []string
	for _, l := range ls {
		parts = append(parts, fmt.Sprintf("%v:%v:%v", l["seq"], l["id"], l["outcome"]))
	}
	return strings.Join(parts, " ")
}

// TestTap: three taps on one pillow see its changes as they pass, each with
// its own --limit, --outcome and --records.
func TestTap(t *testing.T) {
	fp := startFifoPillow(t)
	all := startTap(t, "t", "--http", fp.addr, "--limit", "5")
	failed := startTap(t, "t", "--http", fp.addr, "--outcome", "failed", "--limit", "2")
	noBodies := startTap(t, "t", "--http", fp.addr, "--records=false", "--limit", "1")
	fp.send(t,
		map[string]any{"_id": "a", "type": "case", "name": "alice"},
		map[string]any{"_id": "b", "type": "user"},
		map[string]any{"_id": "c", "_deleted": true},
		map[string]any{"_id": "d", "type": "case", "boom": true},
		map[string]any{"_id": "e", "type": "case", "name": "eve"},
		map[string]any{"_id": "f", "type": "case", "boom": true},
		map[string]any{"_id": "g", "type": "case", "name": "gil"},
	)

	got := all.wait(t)
	if s := brief(got); s != "1:a:written 2:b:filtered 3:c:deleted 4:d:failed 5:e:written" {
		t.Fatalf("tap --limit 5: %s\n%s", s, all.stdout)
	}
	a, _ := json.Marshal(got[0])
	if string(a) != `{"deleted":false,"id":"a","outcome":"written","records":[{"doc":{"_id":"a","name":"alice","pad":null},"id":"a"}],"rev":"1-x","seq":"1"}` {
		t.Fatalf("tap line of a: %s", a)
	}
	if got[2]["deleted"] != true || fmt.Sprint(got[2]["records"]) != "[map[delete:true id:c]]" {
		t.Fatalf("tap line of the deletion: %v", got[2])
	}
	if got[3]["stage"] != "transform" || !strings.Contains(got[3]["error"].(string), "Error: boom") {
		t.Fatalf("tap line of the failure: %v", got[3])
	}

	if s := brief(failed.wait(t)); s != "4:d:failed 6:f:failed" {
		t.Fatalf("tap --outcome failed: %s", s)
	}
	noBodies.wait(t) // its output is whole once it exits
	if b := strings.TrimSpace(noBodies.stdout.String()); b != `{"seq":"1","id":"a","rev":"1-x","deleted":false,"outcome":"written","records":[{"id":"a"}]}` {
		t.Fatalf("tap --records=false: %s", b)
	}
	if code, _, errOut := ptop(t, "tap", "nope", "--http", fp.addr); code != 1 || !strings.Contains(errOut, `404 Not Found: no pillow "nope" is running`) {
		t.Fatalf("ptop tap of no such pillow: exit %d: %s", code, errOut)
	}
	if code, _, errOut := ptop(t, "tap", "t", "--http", fp.addr, "--outcome", "lost"); code != 2 || !strings.Contains(errOut, "--outcome must be") {
		t.Fatalf("ptop tap --outcome lost: exit %d: %s", code, errOut)
	}
	fp.end(t)
	if n := fp.outLines(t); n != 4 { // a, c, e, g
		t.Fatalf("the sink has %d lines, want 4", n)
	}
}

// TestTapSlowIsDroppedNotWaitedFor: a tap that reads nothing does not hold
// the pillow back; once it reads, it is told how many changes it missed,
// and what it got plus what it missed is every change.
func TestTapSlowIsDroppedNotWaitedFor(t *testing.T) {
	fp := startFifoPillow(t)
	// A client with a small receive buffer that reads nothing yet.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return serr
	}}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", fp.base+"/tap/t", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/tap: %s", resp.Status)
	}

	// 5000 changes of 4 KB: 20 MB, more than the tap's buffer and the
	// sockets' together.
	const n = 5000
	pad := strings.Repeat("x", 4096)
	for i := 0; i < n; i += 500 {
		var docs []map[string]any
		for j := i; j < i+500; j++ {
			docs = append(docs, map[string]any{"_id": fmt.Sprintf("d%05d", j), "type": "case", "name": "n", "pad": pad})
		}
		fp.send(t, docs...)
	}
	deadline := time.Now().Add(60 * time.Second)
	for fp.outLines(t) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the pillow wrote %d of %d changes while the tap read nothing:\n%s", fp.outLines(t), n, fp.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Now read: events plus reported drops add up to every change.
	var events, dropped int
	last := ""
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for events+dropped < n && sc.Scan() {
		var l struct {
			ID      string `json:"id"`
			Dropped int    `json:"dropped"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		if l.Dropped > 0 {
			dropped += l.Dropped
			continue
		}
		if l.ID <= last {
			t.Fatalf("events out of order: %s after %s", l.ID, last)
		}
		last = l.ID
		events++
	}
	if events+dropped != n || dropped == 0 {
		t.Fatalf("%d events and %d dropped, want %d in all, some dropped (scan: %v)", events, dropped, n, sc.Err())
	}
	t.Logf("%d events shown, %d dropped", events, dropped)
	cancel()
	fp.end(t)
}

// TestTapToken: with --http-token (here PTOP_HTTP_TOKEN) /tap requires it;
// the rest of the listener does not.
func TestTapToken(t *testing.T) {
	t.Setenv("PTOP_HTTP_TOKEN", "s3cret")
	fp := startFifoPillow(t)
	for _, auth := range []string{"", "Bearer wrong", "s3cret"} {
		req, _ := http.NewRequest("GET", fp.base+"/tap/t", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("/tap with Authorization %q: %s, want 401", auth, resp.Status)
		}
	}
	t.Setenv("PTOP_HTTP_TOKEN", "")
	code, _, errOut := ptop(t, "tap", "t", "--http", fp.addr, "--limit", "1")
	if code != 1 || !strings.Contains(errOut, "401 Unauthorized: /tap needs the listener's token") {
		t.Fatalf("ptop tap without the token: exit %d: %s", code, errOut)
	}
	if code, _ := get(t, fp.base+"/status"); code != 200 {
		t.Fatalf("/status with a token set: %d", code)
	}
	tap := startTap(t, "t", "--http", fp.addr, "--http-token", "s3cret", "--limit", "1")
	fp.send(t, map[string]any{"_id": "a", "type": "case", "name": "alice"})
	if s := brief(tap.wait(t)); s != "1:a:written" {
		t.Fatalf("ptop tap with the token: %s", s)
	}
	fp.end(t)
}

// TestTapOffLoopback: without a token, /tap refuses a listener that is not
// on loopback (0.0.0.0 answers other hosts too); with one, it takes it.
func TestTapOffLoopback(t *testing.T) {
	for _, tc := range []struct {
		loopback bool
		token    string
		auth     string
		want     int
	}{
		{loopback: true, want: 0},
		{loopback: false, want: http.StatusForbidden},
		{loopback: false, token: "k", auth: "Bearer k", want: 0},
		{loopback: false, token: "k", auth: "Bearer x", want: http.StatusUnauthorized},
		{loopback: true, token: "k", want: http.StatusUnauthorized},
	} {
		s := &httpServer{loopback: tc.loopback, opts: httpOptions{Token: tc.token}}
		r := httptest.NewRequest("GET", "/tap/t", nil)
		if tc.auth != "" {
			r.Header.Set("Authorization", tc.auth)
		}
		if code, why := s.tapAllowed(r); code != tc.want {
			t.Errorf("%+v: %d %s", tc, code, why)
		}
	}
}

// TestTapFollowsReload: a reload that restarts the pillow leaves the tap
// attached to the new run; a reload that removes it ends the tap.
func TestTapFollowsReload(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "obs")
	dir := t.TempDir()
	pdir := filepath.Join(dir, "p")
	yaml := func(version int) string {
		return fmt.Sprintf(`name: obs
source:
  couchdb: {url: "${COUCH_URL}", db: obs, heartbeat: 1s}
transform: |
  function transform(doc) { return { version: %d }; }
batch: {size: 10, wait: 20ms}
sinks:
  - file: {path: %q}
`, version, filepath.Join(dir, "out.jsonl"))
	}
	write(t, filepath.Join(pdir, "obs.yaml"), yaml(1))
	t.Setenv("COUCH_URL", couch.URL)
	p := startPtop(t, "run", pdir)
	addr := listenAddr(t, p)
	tap := startTap(t, "obs", "--http", addr)

	write(t, filepath.Join(pdir, "obs.yaml"), yaml(2))
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, "restarted=obs", 1)
	// The tap takes up the new run within a beat; until it sees one of
	// them, keep writing.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; !strings.Contains(tap.stdout.String(), `"version":2`); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("the tap saw nothing of the restarted pillow:\n%s\n%s", tap.stdout, tap.stderr)
		}
		couch.Put(t, "obs", fmt.Sprintf("d%03d", i), map[string]any{"v": i})
		time.Sleep(100 * time.Millisecond)
	}

	os.Remove(filepath.Join(pdir, "obs.yaml"))
	write(t, filepath.Join(pdir, "other.yaml"), strings.ReplaceAll(yaml(1), "name: obs", "name: other"))
	p.cmd.Process.Signal(syscall.SIGHUP)
	select {
	case c := <-tap.code:
		if c != 0 || !strings.Contains(tap.stderr.String(), "ptop tap: pillow obs is no longer running") {
			t.Fatalf("ptop tap after its pillow was removed: exit %d: %s", c, tap.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("ptop tap did not end with its pillow: %s", tap.stderr)
	}
	p.stop(t)
}
