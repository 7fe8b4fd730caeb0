//go:build unix

package testenv

// Search servers (OpenSearch, Elasticsearch) for the Elasticsearch sink's
// tests, pinned in tools/opensearch/servers.txt:
//
//	os := testenv.StartOpenSearch(t)   // one server shared by the test binary
//	// ... point the code under test at os.URL, use an index of its own ...
//	own := testenv.StartSearch(t, testenv.SearchOptions{Own: true})
//	own.Stop(t); own.Restart(t)        // same ports, same data
//
// scripts/test.sh prepare (tools/opensearch/install.sh) fetches each server's
// integ-test-zip from Maven Central (with mvn) and unpacks it under .cache;
// tests only look it up and fail with that hint when it is missing.
// The servers run on the machine's Java 17 with a 512 MB heap, single-node,
// on free loopback ports, with data and logs in a scratch directory under
// the system temp dir. As root they run as PTOP_SEARCH_USER (default
// nobody): both refuse to run as root.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The search servers pinned in tools/opensearch/servers.txt.
const (
	OpenSearch2    = "opensearch"     // OpenSearch 2.19
	Elasticsearch7 = "elasticsearch7" // Elasticsearch 7.17
	Elasticsearch8 = "elasticsearch8" // Elasticsearch 8.19
)

// SearchStartTimeout is how long a search server may take to start.
const SearchStartTimeout = 120 * time.Second

// SearchOptions configures StartSearch.
type SearchOptions struct {
	// Dist names the server in tools/opensearch/servers.txt; default
	// OpenSearch2.
	Dist string
	// Own starts a server for this test alone, which it may Stop, Kill and
	// Restart; it is killed and its data removed when the test ends.
	// Otherwise the test gets the server of that Dist shared by the whole
	// test binary (started on first use, killed when the binary exits),
	// and should use indexes of its own.
	Own bool
}

// OpenSearch is a search server process started for tests: OpenSearch or
// Elasticsearch, whichever SearchOptions.Dist names.
type OpenSearch struct {
	// URL is the server's base URL, http://127.0.0.1:PORT, without a
	// trailing slash.
	URL string
	// Port and TransportPort are the HTTP and transport ports on 127.0.0.1.
	Port, TransportPort int
	// Dist is the server's name in servers.txt; Version its version
	// number, as the server reports it.
	Dist, Version string
	// Dir holds the server's config, data and logs.
	Dir string

	shared  bool
	home    string
	env     []string
	cred    *syscall.Credential
	logPath string
	client  *http.Client

	mu   sync.Mutex
	proc *searchProc // nil when not running
}

type searchProc struct {
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // set before done is closed
}

// StartOpenSearch returns the OpenSearch server shared by the test binary,
// starting it on first use. Tests that stop the server need one of their
// own: StartSearch with Own.
func StartOpenSearch(t testing.TB) *OpenSearch {
	t.Helper()
	return StartSearch(t, SearchOptions{})
}

var sharedSearch struct {
	sync.Mutex
	m map[string]*sharedServer
}

// sharedServer is the server of one Dist shared by the test binary;
// servers of different Dists start in parallel.
type sharedServer struct {
	once sync.Once
	s    *OpenSearch
	err  error
}

// StartSearch starts a search server, or returns the shared one (see
// SearchOptions). It fails the test with the server's log if the server
// does not start, and with a clear message if Java or Maven is missing.
func StartSearch(t testing.TB, opts SearchOptions) *OpenSearch {
	t.Helper()
	Integration(t, "starts a search server")
	if opts.Dist == "" {
		opts.Dist = OpenSearch2
	}
	if opts.Own {
		s, err := newSearch(opts.Dist)
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		t.Cleanup(func() {
			s.kill(syscall.SIGKILL, 0)
			os.RemoveAll(s.Dir)
		})
		if err := s.startFresh(); err != nil {
			t.Fatalf("testenv: %v\n%s", err, s.LogTail())
		}
		return s
	}
	sharedSearch.Lock()
	if sharedSearch.m == nil {
		sharedSearch.m = map[string]*sharedServer{}
	}
	e := sharedSearch.m[opts.Dist]
	if e == nil {
		e = &sharedServer{}
		sharedSearch.m[opts.Dist] = e
	}
	sharedSearch.Unlock()
	e.once.Do(func() {
		s, err := newSearch(opts.Dist)
		if err == nil {
			s.shared = true
			if err = s.startFresh(); err != nil {
				err = fmt.Errorf("%w\n%s", err, s.LogTail())
			}
		}
		e.s, e.err = s, err
	})
	if e.err != nil {
		t.Fatalf("testenv: shared %s server: %v", opts.Dist, e.err)
	}
	return e.s
}

// SearchDists lists the servers that tests should run against: every
// server in tools/opensearch/servers.txt, or those named in
// $PTOP_SEARCH_DISTS (comma-separated).
func SearchDists() ([]string, error) {
	if env := strings.TrimSpace(os.Getenv("PTOP_SEARCH_DISTS")); env != "" {
		var ds []string
		for _, d := range strings.Split(env, ",") {
			if d = strings.TrimSpace(d); d != "" {
				ds = append(ds, d)
			}
		}
		return ds, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(root, "tools", "opensearch", "servers.txt"))
	if err != nil {
		return nil, err
	}
	var ds []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			ds = append(ds, f[0])
		}
	}
	return ds, nil
}

// Stop stops the server with SIGTERM and waits for it to exit (SIGKILL
// after 30 s). It does nothing if the server is not running.
func (s *OpenSearch) Stop(t testing.TB) {
	t.Helper()
	s.mustOwn(t, "Stop")
	if err := s.kill(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("testenv: stop %s: %v", s.Dist, err)
	}
}

// Kill kills the server with SIGKILL and waits for it to exit.
func (s *OpenSearch) Kill(t testing.TB) {
	t.Helper()
	s.mustOwn(t, "Kill")
	if err := s.kill(syscall.SIGKILL, 0); err != nil {
		t.Fatalf("testenv: kill %s: %v", s.Dist, err)
	}
}

// Restart starts the server again on the same ports with the same data,
// stopping it first (SIGTERM) if it runs, and waits until its indexes'
// primary shards are assigned (cluster health yellow).
func (s *OpenSearch) Restart(t testing.TB) {
	t.Helper()
	s.mustOwn(t, "Restart")
	s.Stop(t)
	var err error
	// The ports may linger for a moment after the old process died.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err = s.start(); err == nil || !s.portTaken() || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("testenv: restart %s: %v\n%s", s.Dist, err, s.LogTail())
	}
}

func (s *OpenSearch) mustOwn(t testing.TB, what string) {
	t.Helper()
	if s.shared {
		t.Fatalf("testenv: %s of the shared %s server: start one with SearchOptions{Own: true}", what, s.Dist)
	}
}

// Running reports whether the server process is alive.
func (s *OpenSearch) Running() bool {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return false
	}
	return !exited(p.done)
}

// Do sends a request and returns the status and body; it fails the test
// only if the request cannot be made. body is sent as JSON unless it is
// nil, a []byte or a string (sent as is, labelled JSON, or NDJSON for a
// path containing _bulk).
func (s *OpenSearch) Do(t testing.TB, method, path string, body any) (int, []byte) {
	t.Helper()
	r := requestBody(t, method, path, body)
	req, err := http.NewRequest(method, s.URL+path, r)
	if err != nil {
		t.Fatalf("testenv: %s %s: %v", method, path, err)
	}
	if r != nil {
		ct := "application/json"
		if strings.Contains(path, "_bulk") {
			ct = "application/x-ndjson"
		}
		req.Header.Set("Content-Type", ct)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("testenv: %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("testenv: %s %s: read response: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// Refresh makes what was written to index visible to searches.
func (s *OpenSearch) Refresh(t testing.TB, index string) {
	t.Helper()
	if status, body := s.Do(t, http.MethodPost, "/"+index+"/_refresh", nil); status != http.StatusOK {
		t.Fatalf("testenv: refresh %s: HTTP %d: %s", index, status, body)
	}
}

// GetDoc returns document id of index (its _source) and its version, or
// found false.
func (s *OpenSearch) GetDoc(t testing.TB, index, id string) (src map[string]any, version int64, found bool) {
	t.Helper()
	status, body := s.Do(t, http.MethodGet, "/"+index+"/_doc/"+url.PathEscape(id), nil)
	if status == http.StatusNotFound {
		return nil, 0, false
	}
	if status != http.StatusOK {
		t.Fatalf("testenv: get %s/%s: HTTP %d: %s", index, id, status, body)
	}
	var r struct {
		Found   bool           `json:"found"`
		Version int64          `json:"_version"`
		Source  map[string]any `json:"_source"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("testenv: get %s/%s: %v: %s", index, id, err, body)
	}
	return r.Source, r.Version, r.Found
}

// Count refreshes index and returns how many documents it holds.
func (s *OpenSearch) Count(t testing.TB, index string) int {
	t.Helper()
	s.Refresh(t, index)
	status, body := s.Do(t, http.MethodGet, "/"+index+"/_count", nil)
	if status != http.StatusOK {
		t.Fatalf("testenv: count %s: HTTP %d: %s", index, status, body)
	}
	var r struct {
		Count int `json:"count"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("testenv: count %s: %v: %s", index, err, body)
	}
	return r.Count
}

// LogTail returns the last lines of the server's output, for failure
// messages.
func (s *OpenSearch) LogTail() string {
	return logTail(s.logPath, s.Dist)
}

// newSearch finds the installed server and prepares a scratch
// directory (config, data, logs) for it, owned by the user it runs as.
func newSearch(dist string) (*OpenSearch, error) {
	home, err := SearchHome(dist)
	if err != nil {
		return nil, err
	}
	java, err := javaHome()
	if err != nil {
		return nil, err
	}
	cred, err := searchCredential()
	if err != nil {
		return nil, err
	}
	sweepStaleDirs("ptop-search-")
	dir, err := os.MkdirTemp("", fmt.Sprintf("ptop-search-%d-", os.Getpid()))
	if err != nil {
		return nil, err
	}
	s := &OpenSearch{
		Dist:    dist,
		Dir:     dir,
		home:    home,
		cred:    cred,
		logPath: filepath.Join(dir, "server.log"),
		client:  &http.Client{Timeout: 60 * time.Second},
	}
	if err := s.prepareDir(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// The launch scripts of both read the same variables, prefixed.
	prefix := "OPENSEARCH_"
	if _, err := os.Stat(filepath.Join(home, "bin", "elasticsearch")); err == nil {
		prefix = "ES_"
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "JAVA_TOOL_OPTIONS" || k == "JAVA_OPTS" || k == "JAVA_HOME" || k == "HOME" ||
			strings.HasPrefix(k, "OPENSEARCH_") || strings.HasPrefix(k, "ES_") {
			continue
		}
		s.env = append(s.env, kv)
	}
	s.env = append(s.env,
		"HOME="+dir,
		prefix+"JAVA_HOME="+java,
		prefix+"PATH_CONF="+filepath.Join(dir, "config"),
		prefix+"TMPDIR="+filepath.Join(dir, "tmp"),
		prefix+"JAVA_OPTS=-Xms512m -Xmx512m",
	)
	return s, nil
}

// prepareDir copies the server's config into s.Dir, with the paths of its
// jvm.options (GC log, heap dumps) made absolute: the launch script runs
// from the read-only install directory.
func (s *OpenSearch) prepareDir() error {
	for _, d := range []string{"data", "logs", "tmp"} {
		if err := os.Mkdir(filepath.Join(s.Dir, d), 0o755); err != nil {
			return err
		}
	}
	src := filepath.Join(s.home, "config")
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		dst := filepath.Join(s.Dir, "config", rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if d.Name() == "jvm.options" {
			b = bytes.ReplaceAll(b, []byte("logs/"), []byte(filepath.Join(s.Dir, "logs")+"/"))
			b = bytes.ReplaceAll(b, []byte("HeapDumpPath=data"), []byte("HeapDumpPath="+filepath.Join(s.Dir, "data")))
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		return fmt.Errorf("preparing %s: %w", s.Dir, err)
	}
	if s.cred == nil {
		return nil
	}
	return filepath.WalkDir(s.Dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(s.cred.Uid), int(s.cred.Gid))
	})
}

// startFresh starts the server on free ports, trying other ports when the
// ones picked were taken meanwhile.
func (s *OpenSearch) startFresh() error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if s.Port, err = FreePort(); err != nil {
			return err
		}
		if s.TransportPort, err = FreePort(); err != nil {
			return err
		}
		if s.TransportPort == s.Port {
			continue
		}
		s.URL = "http://127.0.0.1:" + strconv.Itoa(s.Port)
		if err = s.start(); err == nil || !s.portTaken() {
			return err
		}
	}
	return err
}

func (s *OpenSearch) portTaken() bool {
	b, err := os.ReadFile(s.logPath)
	return err == nil && (bytes.Contains(b, []byte("BindException")) || bytes.Contains(b, []byte("Address already in use")))
}

// start launches the server on s's ports and waits until it is healthy.
// On failure the process is killed and the error returned.
func (s *OpenSearch) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return errors.New(s.Dist + " is already running")
	}
	bin := filepath.Join(s.home, "bin", "opensearch")
	if _, err := os.Stat(bin); err != nil {
		bin = filepath.Join(s.home, "bin", "elasticsearch")
	}
	args := []string{
		"-Ediscovery.type=single-node",
		"-Enetwork.host=127.0.0.1",
		"-Ehttp.port=" + strconv.Itoa(s.Port),
		"-Etransport.port=" + strconv.Itoa(s.TransportPort),
		"-Epath.data=" + filepath.Join(s.Dir, "data"),
		"-Epath.logs=" + filepath.Join(s.Dir, "logs"),
		"-Ecluster.routing.allocation.disk.threshold_enabled=false",
		"-Ecluster.name=ptop-test",
		"-Enode.name=ptop-test",
	}
	if strings.HasSuffix(bin, "elasticsearch") {
		// The integ-test-zip of Elasticsearch carries x-pack security,
		// on by default in 8.x.
		args = append(args, "-Expack.security.enabled=false")
	}
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own copy
	fmt.Fprintf(logFile, "--- testenv: %s %s\n", bin, strings.Join(args, " "))

	cmd := exec.Command(bin, args...)
	cmd.Dir = s.Dir
	cmd.Env = s.env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	cmd.SysProcAttr.Credential = s.cred
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	p := &searchProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	s.proc = p
	if err := s.waitHealthy(p); err != nil {
		signalGroup(cmd, syscall.SIGKILL)
		<-p.done
		s.proc = nil
		return err
	}
	fmt.Fprintf(logFile, "--- testenv: %s %s healthy after %v\n", s.Dist, s.Version, time.Since(began).Round(time.Millisecond))
	return nil
}

// waitHealthy polls the cluster health until the primaries are assigned
// (yellow), the process exits or SearchStartTimeout passes. (GET / is no
// use: Elasticsearch 8's integ-test-zip does not serve it.)
func (s *OpenSearch) waitHealthy(p *searchProc) error {
	probe := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(SearchStartTimeout)
	exited := func() error {
		select {
		case <-p.done:
			return fmt.Errorf("%s on port %d exited during startup: %v", s.Dist, s.Port, p.waitErr)
		default:
			return nil
		}
	}
	var lastErr error
	for {
		if err := exited(); err != nil {
			return err
		}
		resp, err := probe.Get(s.URL + "/_cluster/health?wait_for_status=yellow&timeout=1s")
		if err == nil {
			var h struct {
				Status   string `json:"status"`
				TimedOut bool   `json:"timed_out"`
			}
			decErr := json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && decErr == nil && !h.TimedOut {
				// Make sure it is our process that answered.
				if err := exited(); err != nil {
					return err
				}
				s.Version = s.version(probe)
				return nil
			}
			lastErr = fmt.Errorf("health: HTTP %d, status %q", resp.StatusCode, h.Status)
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not become healthy at %s within %v (last: %v)", s.Dist, s.URL, SearchStartTimeout, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// version asks the node for its version number.
func (s *OpenSearch) version(c *http.Client) string {
	resp, err := c.Get(s.URL + "/_nodes/_local/version")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var r struct {
		Nodes map[string]struct {
			Version string `json:"version"`
		} `json:"nodes"`
	}
	if json.NewDecoder(resp.Body).Decode(&r) != nil {
		return ""
	}
	for _, n := range r.Nodes {
		return n.Version
	}
	return ""
}

// kill signals the process group and waits for the exit; with grace > 0 it
// sends SIGKILL if the process is still alive after grace.
func (s *OpenSearch) kill(sig syscall.Signal, grace time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	if p == nil {
		return nil
	}
	s.proc = nil
	signalGroup(p.cmd, sig)
	return awaitExit(p.cmd, p.done, sig, grace)
}

var searchHomes struct {
	sync.Mutex
	m map[string]string
}

// SearchHome returns the install directory of a server named in
// tools/opensearch/servers.txt. Tests never fetch it: scripts/test.sh
// prepare does (tools/opensearch/install.sh); a missing server is an error
// that says so.
func SearchHome(dist string) (string, error) {
	searchHomes.Lock()
	defer searchHomes.Unlock()
	if h, ok := searchHomes.m[dist]; ok {
		return h, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	if _, err := exec.LookPath("java"); err != nil && os.Getenv("JAVA_HOME") == "" {
		return "", fmt.Errorf("java not found: the %s server needs a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless)", dist)
	}
	script := filepath.Join(root, "tools", "opensearch", "install.sh")
	cmd := exec.Command("bash", script, "--check", dist)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s failed after %v: %w\n%s", script, dist, time.Since(start).Round(time.Second), err, stderr.String())
	}
	home := strings.TrimSpace(string(out))
	if home == "" {
		return "", fmt.Errorf("%s %s printed no directory\n%s", script, dist, stderr.String())
	}
	if searchHomes.m == nil {
		searchHomes.m = map[string]string{}
	}
	searchHomes.m[dist] = home
	return home, nil
}

// javaHome is $JAVA_HOME, or the installation of the java in PATH.
func javaHome() (string, error) {
	if h := os.Getenv("JAVA_HOME"); h != "" {
		return h, nil
	}
	java, err := exec.LookPath("java")
	if err != nil {
		return "", errors.New("java not found: the search servers need a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless), or set JAVA_HOME")
	}
	resolved, err := filepath.EvalSymlinks(java)
	if err != nil {
		return "", err
	}
	return filepath.Dir(filepath.Dir(resolved)), nil
}

// searchCredential is the user a server runs as: nil (the current user)
// unless running as root, which both servers refuse; then
// $PTOP_SEARCH_USER, default nobody.
func searchCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	name := os.Getenv("PTOP_SEARCH_USER")
	if name == "" {
		name = "nobody"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root, the search server must run as another user: %w (set PTOP_SEARCH_USER)", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil || uid == 0 {
		return nil, fmt.Errorf("user %s (uid %s, gid %s) cannot run the search server", name, u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}
