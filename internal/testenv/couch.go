//go:build unix

// Package testenv starts the real servers that ptop's integration tests talk
// to: pouchdb-server 4.2.0 (the CouchDB-protocol server pinned in
// tools/pouchdb), OpenSearch and Elasticsearch, PostgreSQL.
//
//	couch := testenv.StartCouch(t, testenv.CouchOptions{})
//	couch.CreateDB(t, "db")
//	rev := couch.Put(t, "db", "doc1", map[string]any{"a": 1})
//	// ... point the code under test at couch.URL ...
//
// Each StartCouch starts a fresh server process on a free loopback port; it is
// killed when the test ends. Tests never install anything: scripts/test.sh
// prepare runs npm ci in tools/pouchdb (and fetches the other servers); a
// missing or stale install fails the test with that hint.
//
// Every Start function skips its test under go test -short: -short is the
// unit tier, with no server.
package testenv

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StartTimeout is how long StartCouch and Restart wait for the server to answer.
const StartTimeout = 30 * time.Second

// Couch is a pouchdb-server process started for tests.
type Couch struct {
	// URL is the server's base URL, http://127.0.0.1:PORT, without a trailing slash.
	URL string
	// Port is the TCP port on 127.0.0.1.
	Port int

	opts    CouchOptions
	bin     string
	workDir string // cwd of the server: it writes log.txt and config.json there
	logPath string // the server's stdout and stderr

	client    *http.Client
	transport *http.Transport

	mu   sync.Mutex
	proc *couchProc // nil when not running
}

// CouchOptions configures StartCouch.
type CouchOptions struct {
	// DataDir keeps the databases in this directory (pouchdb-server --dir,
	// LevelDB), so they survive Restart. "" runs the server --in-memory:
	// every start, including Restart, begins with no databases.
	DataDir string
}

type couchProc struct {
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // set before done is closed
}

// StartCouch starts a fresh pouchdb-server on a free loopback port, registers
// t.Cleanup to kill it, and fails the test (t.Fatal) with the server log if it
// does not answer within 30 s.
//
// The binary is tools/pouchdb/node_modules/.bin/pouchdb-server under the repo
// root (found by walking up from the working directory to go.mod), or
// $PTOP_POUCHDB_BIN if set (best absolute: a
// relative path is taken from the test's working directory, its package dir).
func StartCouch(t testing.TB, opts CouchOptions) *Couch {
	t.Helper()
	Integration(t, "starts pouchdb-server")
	bin, err := PouchDBBin()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if opts.DataDir != "" {
		dir, err := filepath.Abs(opts.DataDir)
		if err != nil {
			t.Fatalf("testenv: data dir: %v", err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatalf("testenv: data dir: %v", err)
		}
		opts.DataDir = dir
	}
	// TempDir first: cleanups run last-in first-out, so the server is killed
	// before its directory is removed.
	workDir := t.TempDir()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	c := &Couch{
		opts:      opts,
		bin:       bin,
		workDir:   workDir,
		logPath:   filepath.Join(workDir, "server.log"),
		transport: tr,
		client:    &http.Client{Transport: tr, Timeout: 60 * time.Second},
	}
	t.Cleanup(func() {
		c.kill(syscall.SIGKILL, 0)
		tr.CloseIdleConnections()
	})

	// The port from FreePort can be taken by someone else before the server
	// binds it: try again with another port in that case.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := FreePort()
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		c.Port = port
		c.URL = "http://127.0.0.1:" + strconv.Itoa(port)
		lastErr = c.start()
		if lastErr == nil || !c.portTaken() {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("testenv: %v\n%s", lastErr, c.logTail())
	}
	return c
}

// Stop stops the server with SIGTERM and waits for it to exit (SIGKILL after
// 10 s). It does nothing if the server is not running.
func (c *Couch) Stop(t testing.TB) {
	t.Helper()
	if err := c.kill(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatalf("testenv: stop pouchdb-server: %v", err)
	}
}

// Kill kills the server's process group with SIGKILL and waits for it to exit.
// It does nothing if the server is not running.
func (c *Couch) Kill(t testing.TB) {
	t.Helper()
	if err := c.kill(syscall.SIGKILL, 0); err != nil {
		t.Fatalf("testenv: kill pouchdb-server: %v", err)
	}
}

// Restart starts the server again on the same port with the same options and
// waits until it answers. A running server is stopped (SIGTERM) first. With
// in-memory storage the restarted server has no databases; with a DataDir it
// has what was written before. The server uuid stays the same.
func (c *Couch) Restart(t testing.TB) {
	t.Helper()
	c.Stop(t)
	var err error
	// The port may linger for a moment after the old process died.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if err = c.start(); err == nil || !c.portTaken() || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("testenv: restart: %v\n%s", err, c.logTail())
	}
}

// Running reports whether the server process is alive (it may still be
// starting or be unhealthy).
func (c *Couch) Running() bool {
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if p == nil {
		return false
	}
	return !exited(p.done)
}

// LogTail returns the last lines of the server's output, for failure messages.
func (c *Couch) LogTail() string { return c.logTail() }

// CreateDB creates database name and fails the test if that does not succeed
// (also if it exists).
func (c *Couch) CreateDB(t testing.TB, name string) {
	t.Helper()
	status, body := c.Do(t, http.MethodPut, "/"+url.PathEscape(name), nil)
	if status != http.StatusCreated && status != http.StatusAccepted {
		t.Fatalf("testenv: create database %q: HTTP %d: %s", name, status, body)
	}
}

// Put writes doc as document id of db and returns the new revision. To update
// a document, put its current revision in doc["_rev"].
func (c *Couch) Put(t testing.TB, db, id string, doc map[string]any) (rev string) {
	t.Helper()
	if doc == nil {
		doc = map[string]any{}
	}
	status, body := c.Do(t, http.MethodPut, docPath(db, id), doc)
	if status != http.StatusCreated && status != http.StatusAccepted {
		t.Fatalf("testenv: put %s/%s: HTTP %d: %s", db, id, status, body)
	}
	return revOf(t, body)
}

// Delete deletes document id at revision rev and returns the revision of the
// deletion (tombstone).
func (c *Couch) Delete(t testing.TB, db, id, rev string) (newRev string) {
	t.Helper()
	status, body := c.Do(t, http.MethodDelete, docPath(db, id)+"?rev="+url.QueryEscape(rev), nil)
	if status != http.StatusOK && status != http.StatusAccepted {
		t.Fatalf("testenv: delete %s/%s rev %s: HTTP %d: %s", db, id, rev, status, body)
	}
	return revOf(t, body)
}

// BulkDocs writes docs with one POST /db/_bulk_docs and fails the test if the
// request or any document fails.
func (c *Couch) BulkDocs(t testing.TB, db string, docs []map[string]any) {
	t.Helper()
	if docs == nil {
		docs = []map[string]any{}
	}
	status, body := c.Do(t, http.MethodPost, "/"+url.PathEscape(db)+"/_bulk_docs", map[string]any{"docs": docs})
	if status != http.StatusCreated && status != http.StatusOK && status != http.StatusAccepted {
		t.Fatalf("testenv: _bulk_docs %s: HTTP %d: %s", db, status, body)
	}
	var results []struct {
		ID     string `json:"id"`
		Error  string `json:"error"`
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(body, &results); err != nil {
		t.Fatalf("testenv: _bulk_docs %s: bad response %q: %v", db, body, err)
	}
	if len(results) != len(docs) {
		t.Fatalf("testenv: _bulk_docs %s: %d results for %d docs: %s", db, len(results), len(docs), body)
	}
	var errs []string
	for i, r := range results {
		if r.Error != "" {
			errs = append(errs, fmt.Sprintf("doc %d (id %q): %s: %s", i, r.ID, r.Error, r.Reason))
		}
	}
	if len(errs) > 0 {
		t.Fatalf("testenv: _bulk_docs %s: %d of %d docs failed:\n%s", db, len(errs), len(docs), strings.Join(errs, "\n"))
	}
}

// Get reads document id of db; it returns false if the server answers 404.
// Numbers decode as float64.
func (c *Couch) Get(t testing.TB, db, id string) (map[string]any, bool) {
	t.Helper()
	status, body := c.Do(t, http.MethodGet, docPath(db, id), nil)
	switch status {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, false
	default:
		t.Fatalf("testenv: get %s/%s: HTTP %d: %s", db, id, status, body)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("testenv: get %s/%s: bad JSON %q: %v", db, id, body, err)
	}
	return doc, true
}

// Do sends a request to the server and returns the status and body; it fails
// the test only if the request cannot be made. path is appended to URL as is
// (escape it yourself), body is encoded as JSON with Content-Type
// application/json unless it is nil, a []byte or a string (sent as is, still
// labelled JSON).
func (c *Couch) Do(t testing.TB, method, path string, body any) (status int, respBody []byte) {
	t.Helper()
	r := requestBody(t, method, path, body)
	req, err := http.NewRequest(method, c.URL+path, r)
	if err != nil {
		t.Fatalf("testenv: %s %s: %v", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if r != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		t.Fatalf("testenv: %s %s: %v\n%s", method, path, err, c.logTail())
	}
	defer resp.Body.Close()
	respBody, err = io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("testenv: %s %s: read response: %v", method, path, err)
	}
	return resp.StatusCode, respBody
}

// docPath is /db/id, escaped; the slash after _design/ and _local/ stays.
// requestBody is body as a request's: nil, a []byte or a string as is,
// anything else encoded as JSON.
func requestBody(t testing.TB, method, path string, body any) io.Reader {
	t.Helper()
	switch b := body.(type) {
	case nil:
		return nil
	case []byte:
		return bytes.NewReader(b)
	case string:
		return strings.NewReader(b)
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			t.Fatalf("testenv: %s %s: encode body: %v", method, path, err)
		}
		return bytes.NewReader(buf)
	}
}

func docPath(db, id string) string {
	for _, prefix := range []string{"_design/", "_local/"} {
		if rest, ok := strings.CutPrefix(id, prefix); ok {
			return "/" + url.PathEscape(db) + "/" + prefix + url.PathEscape(rest)
		}
	}
	return "/" + url.PathEscape(db) + "/" + url.PathEscape(id)
}

func revOf(t testing.TB, body []byte) string {
	t.Helper()
	var r struct {
		Rev string `json:"rev"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Rev == "" {
		t.Fatalf("testenv: no rev in response %q (%v)", body, err)
	}
	return r.Rev
}

// start launches the server on c.Port and waits until it answers. On failure
// the process is killed and the error returned (the log is in c.logPath).
func (c *Couch) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil {
		return errors.New("pouchdb-server is already running")
	}
	args := []string{"--host", "127.0.0.1", "--port", strconv.Itoa(c.Port), "--no-color"}
	if c.opts.DataDir != "" {
		args = append(args, "--dir", c.opts.DataDir)
	} else {
		args = append(args, "--in-memory")
	}
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own copy
	fmt.Fprintf(logFile, "--- testenv: %s %s\n", c.bin, strings.Join(args, " "))

	cmd := exec.Command(c.bin, args...)
	cmd.Dir = c.workDir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.bin, err)
	}
	p := &couchProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	c.proc = p

	if err := c.waitHealthy(p); err != nil {
		signalGroup(p.cmd, syscall.SIGKILL)
		<-p.done
		c.proc = nil
		return err
	}
	return nil
}

// waitHealthy polls GET / until pouchdb-server answers, the process exits or
// StartTimeout passes.
func (c *Couch) waitHealthy(p *couchProc) error {
	probe := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(StartTimeout)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("pouchdb-server on port %d exited during startup: %v", c.Port, p.waitErr)
		default:
		}
		resp, err := probe.Get(c.URL + "/")
		if err == nil {
			var welcome map[string]any
			decErr := json.NewDecoder(resp.Body).Decode(&welcome)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && decErr == nil && welcome["version"] != nil {
				// Make sure it is our process that answered, not an earlier
				// owner of the port.
				select {
				case <-p.done:
					return fmt.Errorf("pouchdb-server on port %d exited during startup: %v", c.Port, p.waitErr)
				default:
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pouchdb-server did not answer %s/ within %v (last error: %v)", c.URL, StartTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill signals the process group and waits for the exit; with grace > 0 it
// sends SIGKILL if the process is still alive after grace.
func (c *Couch) kill(sig syscall.Signal, grace time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.proc
	if p == nil {
		return nil
	}
	c.proc = nil
	defer c.transport.CloseIdleConnections()
	signalGroup(p.cmd, sig)
	return awaitExit(p.cmd, p.done, sig, grace)
}

// portTaken reports whether the server failed because its port was in
// use (pouchdb-server says so in words, node in an error code).
func (c *Couch) portTaken() bool {
	return c.logContains("EADDRINUSE") || c.logContains("already in use")
}

func (c *Couch) logContains(s string) bool {
	b, err := os.ReadFile(c.logPath)
	return err == nil && bytes.Contains(b, []byte(s))
}

// logTail returns the last 40 lines (at most 8 KiB) of the server log.
func (c *Couch) logTail() string {
	return logTail(c.logPath, "pouchdb-server")
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// RepoRoot returns the directory holding go.mod, found by walking up from
// the working directory (a test's working directory is its package directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

var pouchdbOnce struct {
	sync.Once
	bin string
	err error
}

// PouchDBBin returns the pouchdb-server binary to run: $PTOP_POUCHDB_BIN if
// set, else tools/pouchdb/node_modules/.bin/pouchdb-server if it was
// installed from the current package-lock.json (scripts/lib.sh writes the
// stamp).
func PouchDBBin() (string, error) {
	pouchdbOnce.Do(func() {
		pouchdbOnce.bin, pouchdbOnce.err = findPouchDBBin()
	})
	return pouchdbOnce.bin, pouchdbOnce.err
}

func findPouchDBBin() (string, error) {
	if bin := os.Getenv("PTOP_POUCHDB_BIN"); bin != "" {
		if strings.ContainsRune(bin, filepath.Separator) {
			// The server runs in a scratch dir: a relative path would be
			// resolved from there.
			abs, err := filepath.Abs(bin)
			if err != nil {
				return "", fmt.Errorf("PTOP_POUCHDB_BIN: %w", err)
			}
			bin = abs
		}
		if _, err := exec.LookPath(bin); err != nil {
			return "", fmt.Errorf("PTOP_POUCHDB_BIN: %w", err)
		}
		return bin, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	pdir := filepath.Join(root, "tools", "pouchdb")
	if !depsFresh(pdir) {
		return "", fmt.Errorf("pouchdb-server is not installed in %s, or was installed from another package-lock.json: run scripts/test.sh prepare (npm ci there), or set PTOP_POUCHDB_BIN", pdir)
	}
	return filepath.Join(pdir, "node_modules", ".bin", "pouchdb-server"), nil
}

// stampPath holds the sha256 of the package-lock.json node_modules was
// installed from (written by scripts/lib.sh).
func stampPath(pdir string) string {
	return filepath.Join(pdir, "node_modules", ".ptop-lock-sha256")
}

func lockSum(pdir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(pdir, "package-lock.json"))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

func depsFresh(pdir string) bool {
	if _, err := os.Stat(filepath.Join(pdir, "node_modules", ".bin", "pouchdb-server")); err != nil {
		return false
	}
	stamp, err := os.ReadFile(stampPath(pdir))
	if err != nil {
		return false
	}
	sum, err := lockSum(pdir)
	return err == nil && strings.TrimSpace(string(stamp)) == sum
}
