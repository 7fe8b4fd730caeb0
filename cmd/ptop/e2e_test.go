package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
)

// buildPtop compiles the command once per test binary.
var buildPtop = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "ptop-e2e")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "ptop")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// proc is a running `ptop run`.
type proc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startPtop(t *testing.T, args ...string) *proc {
	t.Helper()
	bin, err := buildPtop()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: exec.Command(bin, testArgs(args)...), stderr: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// stop sends SIGTERM and requires a clean exit within a few seconds.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("ptop exited with %v after SIGTERM; log:\n%s", err, p.stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("ptop did not exit within 10s of SIGTERM; log:\n%s", p.stderr)
	}
}

type line struct {
	Action string         `json:"action"`
	ID     string         `json:"id"`
	Doc    map[string]any `json:"doc"`
}

func readLines(t *testing.T, path string) []line {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ls []line
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%s: %v: %s", path, err, sc.Text())
		}
		ls = append(ls, l)
	}
	return ls
}

// waitLines waits until path holds n lines and returns them.
func waitLines(t *testing.T, p *proc, path string, n int) []line {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ls := readLines(t, path)
		if len(ls) >= n {
			return ls
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d lines, want %d; ptop log:\n%s", path, len(ls), n, p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func summary(ls []line) string {
	var parts []string
	for _, l := range ls {
		s := l.Action + ":" + l.ID
		if v, ok := l.Doc["v"]; ok {
			s += fmt.Sprintf(":%v", v)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// TestRunAgainstCouch runs the command against a real pouchdb-server:
// documents in, records out; updates and deletions arrive; a stop and a
// start resume from the checkpoint without replaying; a server restart is
// survived.
func TestRunAgainstCouch(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{DataDir: t.TempDir()})
	couch.CreateDB(t, "cases")
	revA := couch.Put(t, "cases", "a", map[string]any{"type": "case", "v": 1})
	revB := couch.Put(t, "cases", "b", map[string]any{"type": "case", "v": 1})
	couch.Put(t, "cases", "c", map[string]any{"type": "other", "v": 1})
	couch.Put(t, "cases", "_design/app", map[string]any{"type": "case"})

	dir := t.TempDir()
	out := filepath.Join(dir, "out.jsonl")
	write(t, filepath.Join(dir, "pipelines", "cases.yaml"), `name: cases
source:
  couchdb: {url: "${COUCH_URL}", db: cases, heartbeat: 1s}
filter: doc.type == "case"
transform: |
  function transform(doc, change) { return { v: doc.v, rev: change.rev }; }
batch: {size: 100, wait: 50ms}
sinks:
  - file: {path: "${OUT}"}
`)
	t.Setenv("COUCH_URL", couch.URL)
	t.Setenv("OUT", out)
	pdir := filepath.Join(dir, "pipelines")

	p := startPtop(t, "run", pdir)
	waitLines(t, p, out, 2)
	couch.Put(t, "cases", "a", map[string]any{"type": "case", "v": 2, "_rev": revA})
	couch.Delete(t, "cases", "b", revB)
	ls := waitLines(t, p, out, 4)
	if got, want := summary(ls), "index:a:1 index:b:1 index:a:2 delete:b"; got != want {
		t.Fatalf("records: %s, want %s", got, want)
	}
	p.stop(t)

	cp, ok := couch.Get(t, "cases", "_local/ptop-cases")
	if !ok || cp["seq"] == nil || cp["seq"] == "" {
		t.Fatalf("no checkpoint after stop: %v", cp)
	}

	// A new start resumes after the checkpoint: nothing is replayed.
	couch.Put(t, "cases", "d", map[string]any{"type": "case", "v": 1})
	p = startPtop(t, "run", pdir)
	waitLines(t, p, out, 5)

	// The server goes away and comes back: ptop reconnects by itself.
	couch.Kill(t)
	time.Sleep(500 * time.Millisecond)
	couch.Restart(t)
	couch.Put(t, "cases", "e", map[string]any{"type": "case", "v": 1})
	waitLines(t, p, out, 6)
	time.Sleep(300 * time.Millisecond) // a replay would show up here
	ls = readLines(t, out)
	if got, want := summary(ls), "index:a:1 index:b:1 index:a:2 delete:b index:d:1 index:e:1"; got != want {
		t.Fatalf("records after restarts: %s, want %s", got, want)
	}
	p.stop(t)
}
