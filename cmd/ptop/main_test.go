package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func ptop(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(testArgs(args), &o, &e)
	return code, o.String(), e.String()
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestValidateShippedPipelines(t *testing.T) {
	t.Setenv("COUCH_URL", "http://127.0.0.1:1")
	t.Setenv("ES_URL", "http://127.0.0.1:1")
	code, out, errOut := ptop(t, "validate", "../../pipelines")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.HasPrefix(out, "6 pillows OK: case-search, case-search-es, cases-postgres, cases-tcp, forms, households") {
		t.Fatalf("stdout: %q", out)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), "name: a\nsource: {file: {path: x}}\nsinks: [{file: {path: y}}]\nbatch: {size: 0}\n")
	write(t, filepath.Join(dir, "b.yaml"), "name: b\nsource: {file: {path: x}}\nfilter: doc.x ==\nsinks: [{file: {path: z}}]\n")
	code, out, errOut := ptop(t, "validate", dir)
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], filepath.Join(dir, "a.yaml")+":4:15: ") ||
		!strings.HasPrefix(lines[1], filepath.Join(dir, "b.yaml")+":3:") || lines[2] != "2 problems found" {
		t.Fatalf("stderr:\n%s", errOut)
	}
}

func TestValidateMissingPath(t *testing.T) {
	code, _, errOut := ptop(t, "validate", "/nonexistent/dir")
	if code != 1 || !strings.Contains(errOut, "/nonexistent/dir: no such file or directory") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestUsageAndVersion(t *testing.T) {
	if code, _, errOut := ptop(t); code != 2 || !strings.Contains(errOut, "Usage:") {
		t.Errorf("no args: exit %d, %q", code, errOut)
	}
	if code, _, errOut := ptop(t, "frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %q", code, errOut)
	}
	if code, out, _ := ptop(t, "version"); code != 0 || !strings.HasPrefix(out, "ptop ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	if code, _, errOut := ptop(t, "run", "-h"); code != 2 || !strings.Contains(errOut, "-pillow") {
		t.Errorf("run -h: exit %d, %q", code, errOut)
	}
}

func TestRunFileSourceToEnd(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "changes.jsonl")
	write(t, in, `{"seq":1,"id":"a","changes":[{"rev":"1-a"}],"doc":{"_id":"a","type":"x","v":1}}
{"seq":2,"id":"b","changes":[{"rev":"1-b"}],"doc":{"_id":"b","type":"y","v":2}}
{"seq":3,"id":"a","changes":[{"rev":"2-a"}],"deleted":true,"doc":{"_id":"a","_rev":"2-a","_deleted":true}}
`)
	pdir := filepath.Join(dir, "pipelines")
	outA, outB := filepath.Join(dir, "a.jsonl"), filepath.Join(dir, "b.jsonl")
	write(t, filepath.Join(pdir, "one.yaml"), "name: one\nsource: {file: {path: "+in+"}}\nfilter: doc.type == \"x\"\n"+
		"transform: |\n  function transform(doc) { return {_id: \"r-\" + doc._id, v: doc.v * 10}; }\nsinks: [{file: {path: "+outA+"}}]\n")
	write(t, filepath.Join(pdir, "two.yaml"), "name: two\nsource: {file: {path: "+in+"}}\nsinks: [{file: {path: "+outB+"}}]\n")

	code, _, errOut := ptop(t, "run", pdir, "--pillow", "one", "--log-level", "warn")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	got, _ := os.ReadFile(outA)
	// Deleting a deletes the record with its id, as always, and r-a, the
	// record it produced (records follow their document).
	want := `{"action":"index","id":"r-a","doc":{"_id":"r-a","v":10}}` + "\n" + `{"action":"delete","id":"a"}` + "\n" + `{"action":"delete","id":"r-a"}` + "\n"
	if string(got) != want {
		t.Fatalf("one wrote:\n%s\nwant:\n%s", got, want)
	}
	if _, err := os.Stat(outB); !os.IsNotExist(err) {
		t.Fatal("pillow two ran although only one was asked for")
	}
	if code, _, errOut := ptop(t, "run", pdir, "--pillow", "three"); code != 1 || !strings.Contains(errOut, `no pillow named "three" in `) {
		t.Fatalf("unknown pillow: exit %d, %s", code, errOut)
	}
}

func TestRunFailsOnMissingInput(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "p.yaml"), "name: p\nsource: {file: {path: "+filepath.Join(dir, "missing.jsonl")+"}}\nsinks: [{file: {path: "+filepath.Join(dir, "o.jsonl")+"}}]\n")
	code, _, errOut := ptop(t, "run", dir)
	if code != 1 || !strings.Contains(errOut, "missing.jsonl: no such file or directory") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

// testArgs gives `ptop run` in tests an HTTP listener on a free port, so
// that concurrent runs do not fight over the default one.
func testArgs(args []string) []string {
	if len(args) == 0 || args[0] != "run" {
		return args
	}
	for _, a := range args {
		if strings.HasPrefix(a, "--http") || strings.HasPrefix(a, "-http") {
			return args
		}
	}
	return append(append([]string(nil), args...), "--http", "127.0.0.1:0")
}

func TestValidateUnsetEnvIsAWarning(t *testing.T) {
	dir := t.TempDir()
	pillow := "name: a\nsource:\n  couchdb:\n    url: ${PTOP_TEST_UNSET_URL}\n    db: cases\nsinks: [{file: {path: out.jsonl}}]\n"
	write(t, filepath.Join(dir, "a.yaml"), pillow)
	code, out, errOut := ptop(t, "validate", dir)
	want := filepath.Join(dir, "a.yaml") + ":4:10: warning: environment variable PTOP_TEST_UNSET_URL is not set"
	if code != 0 || !strings.HasPrefix(out, "1 pillow OK: a") || !strings.HasPrefix(errOut, want) || !strings.Contains(errOut, "1 warning") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	code, _, errOut = ptop(t, "validate", "--strict", dir)
	if code != 1 || !strings.Contains(errOut, filepath.Join(dir, "a.yaml")+":4:10: environment variable PTOP_TEST_UNSET_URL is not set") {
		t.Fatalf("--strict: exit %d: %s", code, errOut)
	}
	code, _, errOut = ptop(t, "run", "--http", "", dir)
	if code != 1 || !strings.Contains(errOut, "PTOP_TEST_UNSET_URL is not set") {
		t.Fatalf("run: exit %d: %s", code, errOut)
	}

	// The rest of the block is still checked: a bad key beside the unset
	// variable is an error, and so is a problem in a sink.
	write(t, filepath.Join(dir, "a.yaml"), "name: a\nsource:\n  couchdb:\n    url: ${PTOP_TEST_UNSET_URL}\n    db: \"\"\n    heartbeat: -1s\n"+
		"sinks: [{file: {path: out.jsonl, frobnicate: 1}}]\n")
	code, _, errOut = ptop(t, "validate", dir)
	if code != 1 || !strings.Contains(errOut, ":5:9: db must not be empty") || !strings.Contains(errOut, "heartbeat must be positive") ||
		!strings.Contains(errOut, `unknown key "frobnicate"`) || !strings.Contains(errOut, "3 problems found") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestBuildVersion(t *testing.T) {
	vcs := []debug.BuildSetting{{Key: "vcs.revision", Value: "511e5bb3c1d2e0f9a8b7c6d5e4f3a2b1c0d9e8f7"}, {Key: "vcs.time", Value: "2026-12-02T17:00:00Z"}}
	for _, c := range []struct {
		version  string
		settings []debug.BuildSetting
		want     string
	}{
		{"(devel)", nil, "devel"},
		{"(devel)", vcs, "devel 511e5bb3c1d2 2026-12-02T17:00:00Z"},
		{"(devel)", append(vcs, debug.BuildSetting{Key: "vcs.modified", Value: "true"}), "devel 511e5bb3c1d2 2026-12-02T17:00:00Z (modified)"},
		{"v0.3.0", nil, "v0.3.0"},
		{"v0.3.1-0.20261202170000-511e5bb3c1d2", vcs, "v0.3.1-0.20261202170000-511e5bb3c1d2"},
	} {
		bi := &debug.BuildInfo{Main: debug.Module{Version: c.version}, Settings: c.settings}
		if got := buildVersion(bi); got != c.want {
			t.Errorf("%s %v: got %q, want %q", c.version, c.settings, got, c.want)
		}
	}
}

// Sources and sinks log through slog.Default(): every command sets it to
// a slog handler on its stderr, so no line has the log package's format.
func TestDefaultLoggerIsSlog(t *testing.T) {
	defer slog.SetDefault(slog.Default())
	var o, e bytes.Buffer
	run([]string{"version"}, &o, &e)
	slog.Default().With("pillow", "p").Info("created index", "index", "x")
	if got := e.String(); !strings.HasPrefix(got, "time=") || !strings.Contains(got, `level=INFO msg="created index" pillow=p index=x`) {
		t.Fatalf("stderr: %q", got)
	}
}
