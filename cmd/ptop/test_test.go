package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dimagi/ptop/engine"
)

// unsetEnv unsets variables for the test, restoring them afterwards.
func unsetEnv(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		t.Setenv(n, "")
		os.Unsetenv(n)
	}
}

var summaryRE = regexp.MustCompile(`(?m)^(\d+) cases passed, (\d+) failed$`)

// TestShippedPillowTests runs `ptop test` on pipelines/, without the
// variables the pillows' sources and sinks need, and requires every pillow
// there to have a test file and every case to pass.
func TestShippedPillowTests(t *testing.T) {
	unsetEnv(t, "COUCH_URL", "ES_URL", "PG_DSN", "TCP_ADDRESS", "PTOP_OUT", "COUCH_DB")
	code, out, errOut := ptop(t, "test", "../../pipelines")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if strings.Contains(out, "[no test file]") {
		t.Errorf("every shipped pillow needs a test file:\n%s", out)
	}
	m := summaryRE.FindStringSubmatch(out)
	if m == nil || m[2] != "0" {
		t.Fatalf("no summary line:\n%s", out)
	}
	pillows, err := filepath.Glob("../../pipelines/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pillows {
		if !engine.IsPillowFile(filepath.Base(p)) {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^name: *(\S+)`).FindSubmatch(data)
		if m == nil {
			t.Fatalf("%s: no name", p)
		}
		name := string(m[1])
		if !regexp.MustCompile(`(?m)^ok   ` + regexp.QuoteMeta(name) + `\t`).MatchString(out) {
			t.Errorf("pillow %s (%s) was not tested:\n%s", name, p, out)
		}
	}
}

const failingPillow = `name: p
source: {couchdb: {url: "${PTOP_TEST_UNSET_URL}", db: cases}}
filter: doc.type != "skip"
transform: |
  function transform(doc, change) {
    if (doc.type === "none") { return null; }
    return {_id: doc._id, name: doc.name, n: doc.n, tags: doc.tags, seq: change.seq};
  }
sinks: [{file: {path: "${PTOP_TEST_UNSET_OUT}/p.jsonl"}}]
`

const failingTests = `cases:
  - name: numbers compare by value
    change: {seq: 5, doc: {_id: a, name: x, n: 1, tags: [a]}}
    want: {_id: a, name: x, n: 1.0, tags: [a], seq: "5"}
  - name: the record differs
    change: {seq: "1", doc: {_id: a, name: x, n: 1, tags: [a, b], "odd key": 1}}
    want: {_id: a, name: y, n: 2, tags: [a], seq: "1", extra: true}
  - name: wants filtered
    change: {doc: {_id: a, name: x}}
    want: filtered
  - name: wants an error
    change: {doc: {_id: a, type: skip}}
    want_error: boom
  - name: wants a delete
    change: {doc: {_id: a, type: none}}
    want: delete
  - name: wants no record
    change: {doc: {_id: a, type: skip}}
    want: []
  - name: an error matches in any case
    change: {doc: {_id: a, name: x, tags: 1, n: {}, type: none}}
    want: []
`

func TestPillowTestReportsFailures(t *testing.T) {
	unsetEnv(t, "PTOP_TEST_UNSET_URL", "PTOP_TEST_UNSET_OUT")
	dir := t.TempDir()
	write(t, filepath.Join(dir, "p.yaml"), failingPillow)
	tf := filepath.Join(dir, "p.test.yaml")
	write(t, tf, failingTests)
	code, out, errOut := ptop(t, "test", dir)
	if code != 1 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{
		"--- FAIL: p: the record differs (" + tf + ":5)\n" +
			"    expected:\n      1 record:\n      [\n        {\n          \"_id\": \"a\",\n          \"extra\": true,\n",
		"    got:\n      1 record:\n      [\n        {\n          \"_id\": \"a\",\n          \"n\": 1,\n",
		"    differences:\n" +
			"      [0].extra: missing, expected true\n" +
			"      [0].n: expected 2, got 1\n" +
			"      [0].name: expected \"y\", got \"x\"\n" +
			"      [0].tags[1]: not expected, got \"b\"\n",
		"--- FAIL: p: wants filtered (" + tf + ":8)\n    expected:\n      filtered\n    got:\n      1 record:\n",
		"--- FAIL: p: wants an error (" + tf + ":11)\n    expected:\n      an error containing \"boom\"\n    got:\n      filtered\n",
		"--- FAIL: p: wants a delete (" + tf + ":14)\n    expected:\n      delete\n    got:\n      0 records\n",
		"--- FAIL: p: wants no record (" + tf + ":17)\n    expected:\n      0 records\n    got:\n      filtered\n",
		"FAIL p\t5 of 7 cases failed\n",
		"\n2 cases passed, 5 failed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks:\n%s\n--- output:\n%s", want, out)
		}
	}
	if strings.Contains(out, "numbers compare by value") || strings.Contains(out, "in any case") {
		t.Errorf("passing cases are reported as failures:\n%s", out)
	}

	// -v names the passing cases too; a fixed file passes.
	write(t, tf, "cases:\n  - name: fine\n    change: {doc: {_id: a, type: none}}\n    want: []\n"+
		"  - name: throws\n    change: {doc: {_id: a, name: x, n: {}, tags: 1, type: skip}}\n    want: filtered\n")
	code, out, _ = ptop(t, "test", "-v", dir)
	if code != 0 || !strings.Contains(out, "--- ok: p: fine ("+tf+":2)\n") || !strings.HasSuffix(out, "ok   p\t2 cases\n2 cases passed, 0 failed\n") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

func TestPillowTestErrorCases(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "p.yaml"), `name: p
source: {file: {path: x}}
transform: |
  function transform(doc) { return {name: doc.name.toUpperCase()}; }
max_doc_bytes: 60
sinks: [{file: {path: y}}]
`)
	write(t, filepath.Join(dir, "p.test.yaml"), `cases:
  - name: a throw
    change: {doc: {_id: a}}
    want_error: CANNOT READ PROPERTY 'toUpperCase'
  - name: too large
    change: {doc: {_id: a, name: "0123456789012345678901234567890123456789"}}
    want_error: more than max_doc_bytes (60)
  - name: not too large
    change: {doc: {_id: a, name: "01234567890123456789"}}
    want: {name: "01234567890123456789"}
  - name: wrong message
    change: {doc: {_id: a}}
    want_error: is not a function
`)
	code, out, _ := ptop(t, "test", dir)
	want := "--- FAIL: p: wrong message (" + filepath.Join(dir, "p.test.yaml") + ":11)\n" +
		"    expected:\n      an error containing \"is not a function\"\n" +
		"    got:\n      error: transform: TypeError: Cannot read property 'toUpperCase' of undefined"
	if code != 1 || !strings.Contains(out, want) || !strings.HasSuffix(out, "\n3 cases passed, 1 failed\n") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

func TestPillowTestFileProblems(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "q.yaml"), "name: q\nsource: {file: {path: x}}\nsinks: [{file: {path: y}}]\n")
	write(t, filepath.Join(dir, "orphan.test.yaml"), "cases: []\n")
	qt := filepath.Join(dir, "q.test.yaml")
	write(t, qt, `cases:
  - name: unknown key
    chnge: {}
    want: filtered
  - name: bad want
    change: {doc: {_id: a}}
    want: filterd
  - name: both
    change: {doc: {x: 1}}
    want: []
    want_error: x
  - name: item
    change: {id: a, deleted: true, seq: 5}
    want: [a]
  - change: {doc: {_id: a}, rev: [1]}
    want: delete
  - name: no doc
    change: {id: a}
    want_error: ""
  - name: doc is no mapping
    change: {doc: [1]}
    want: []
  - name: doc is empty
    change: {doc: }
    want: []
`)
	code, out, errOut := ptop(t, "test", dir)
	want := []string{
		filepath.Join(dir, "orphan.test.yaml") + ":1:1: no pillow orphan.yaml beside this test file",
		qt + `:2:5: missing required key "change"`,
		qt + `:3:5: unknown key "chnge" (did you mean "change"?)`,
		qt + `:7:11: want is a record, a list of records ([] for none), filtered or delete; got "filterd"`,
		qt + `:9:19: a change needs an id, or a doc with an _id`,
		qt + `:11:17: set either want or want_error, not both`,
		qt + `:14:11: want: item 0 (line 14) is "a"; a record is a mapping`,
		qt + `:15:5: missing required key "name"`,
		qt + `:15:34: expected a string, got a list`,
		qt + `:18:13: a change needs a doc, unless it is a deletion (deleted: true)`,
		qt + `:19:17: want_error must not be empty: write part of the error message`,
		qt + `:21:19: expected a mapping, got a list`,
		qt + `:24:19: a change needs an id, or a doc with an _id`,
		qt + `:24:19: a change needs a doc, unless it is a deletion (deleted: true)`,
		"14 problems found",
	}
	if code != 1 || out != "" || strings.TrimSpace(errOut) != strings.Join(want, "\n") {
		t.Fatalf("exit %d, stdout %q, stderr:\n%s\nwant:\n%s", code, out, errOut, strings.Join(want, "\n"))
	}

	// A pillow that does not load is reported as `ptop validate` would.
	write(t, filepath.Join(dir, "orphan.yaml"), "name: orphan\nsource: {file: {path: x}}\nsinks: []\n")
	code, _, errOut = ptop(t, "test", dir)
	if code != 1 || !strings.HasPrefix(errOut, filepath.Join(dir, "orphan.yaml")+":3:8: a pillow needs at least one sink\n") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestPillowTestOneFileAndNoTests(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), "name: a\nsource: {file: {path: x}}\nsinks: [{file: {path: y}}]\n")
	write(t, filepath.Join(dir, "a.test.yml"), "cases:\n  - {name: passes, change: {doc: {_id: x, v: 1}}, want: [{_id: x, v: 1}]}\n")
	write(t, filepath.Join(dir, "b.yaml"), "name: b\nsource: {file: {path: x}}\nsinks: [{file: {path: z}}]\n")
	code, out, _ := ptop(t, "test", dir)
	if code != 0 || out != "ok   a\t1 case\n?    b\t[no test file]\n1 cases passed, 0 failed\n" {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	code, out, _ = ptop(t, "test", filepath.Join(dir, "a.yaml"))
	if code != 0 || out != "ok   a\t1 case\n1 cases passed, 0 failed\n" {
		t.Fatalf("one pillow file: exit %d:\n%s", code, out)
	}
	code, out, _ = ptop(t, "test", filepath.Join(dir, "a.test.yml"))
	if code != 0 || out != "ok   a\t1 case\n1 cases passed, 0 failed\n" {
		t.Fatalf("a test file: exit %d:\n%s", code, out)
	}
	if code, _, errOut := ptop(t, "test", dir, dir); code != 2 || !strings.Contains(errOut, "one directory at most") {
		t.Fatalf("two directories: exit %d: %s", code, errOut)
	}
}

func TestYAMLAsJSON(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), "name: a\nsource: {file: {path: x}}\nsinks: [{file: {path: y}}]\n")
	// Timestamps stay the text written, merge keys merge, numbers compare
	// by value whatever their spelling.
	write(t, filepath.Join(dir, "a.test.yaml"), `cases:
  - name: yaml
    change:
      doc: &d {_id: x, on: 2026-01-01, n: 0x10, f: 1e3, big: 12345678901234567890, "y": yes}
    want: [{_id: x, on: "2026-01-01", n: 16.0, f: 1000, big: 12345678901234567890, "y": "yes"}]
  - name: merge
    change:
      doc: {<<: *d, _id: z, n: 2}
    want: [{_id: z, on: "2026-01-01", n: 2, f: 1000, big: 12345678901234567890, "y": "yes"}]
`)
	code, out, errOut := ptop(t, "test", dir)
	if code != 0 {
		t.Fatalf("exit %d:\n%s%s", code, out, errOut)
	}
}
