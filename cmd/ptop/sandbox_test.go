package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dimagi/ptop/internal/testenv"
)

// TestHostileTransformsUnderMemoryCap runs a file of 2000 ordinary documents
// with hostile ones among them, under a 4 GB address-space cap: the
// process exits 0, every ordinary record is right, and each hostile change
// is failed with its reason while the others flow.
func TestHostileTransformsUnderMemoryCap(t *testing.T) {
	testenv.Integration(t, "builds and runs the command")
	hostile := map[string]string{
		"repeat":   "transform used more than 256 MiB",
		"fill":     "transform used more than 256 MiB",
		"typed":    "transform used more than 256 MiB",
		"double":   "transform used more than 256 MiB",
		"recurse":  "call stack exceeded 1000 frames",
		"loop":     "timed out after 500ms of CPU time",
		"mathmax":  "TypeError",
		"protoset": "TypeError",
		"exprbomb": "filter: a string would be longer than 256 MiB",
	}
	dir := t.TempDir()
	var in strings.Builder
	seq := 0
	row := func(id string, doc map[string]any) {
		seq++
		doc["_id"] = id
		b, _ := json.Marshal(map[string]any{"seq": seq, "id": id, "changes": []any{map[string]any{"rev": "1-a"}}, "doc": doc})
		in.Write(b)
		in.WriteByte('\n')
	}
	for i := 0; i < 2000; i++ {
		row(fmt.Sprintf("ok-%04d", i), map[string]any{"n": i, "name": fmt.Sprintf("name %d", i)})
		if i%200 == 100 {
			for attack := range hostile {
				row("bad-"+attack+fmt.Sprint(i), map[string]any{"attack": attack, "n": i, "name": "x"})
			}
		}
	}
	write(t, filepath.Join(dir, "in.jsonl"), in.String())
	out := filepath.Join(dir, "out.jsonl")
	write(t, filepath.Join(dir, "pipelines", "hostile.yaml"), `name: hostile
source: {file: {path: `+filepath.Join(dir, "in.jsonl")+`}}
filter: 'doc.attack != "exprbomb" || len(reduce(1..34, #acc + #acc, "x")) > 0'
transform: |
  function transform(doc) {
    switch (doc.attack) {
      case "repeat": return { s: "x".repeat(2 ** 33) };
      case "fill": return { a: new Array(2 ** 31).fill(0) };
      case "typed": return { a: new Uint8Array(2 ** 32) };
      case "double": { let s = "x"; for (;;) s += s; }
      case "recurse": { const f = () => [0].map(f); return f(); }
      case "loop": for (;;) {}
      case "mathmax": Math.max = () => "HACKED"; return null;
      case "protoset": Object.prototype.n = "HACKED"; return null;
    }
    return { _id: doc._id, n: doc.n, max: Math.max(doc.n, 7), name: doc.name.toUpperCase(), keys: Object.keys({}).length };
  }
transform_timeout: 500ms
workers: 2
batch: {size: 100, wait: 50ms}
sinks:
  - file: {path: "`+out+`"}
`)
	bin, err := buildPtop()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", append([]string{"-c", `ulimit -v 4000000; exec "$0" "$@"`, bin}, testArgs([]string{"run", filepath.Join(dir, "pipelines")})...)...)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		os.WriteFile(filepath.Join(os.TempDir(), "ptop-hostile.log"), []byte(stderr.String()), 0o644)
		t.Fatalf("ptop run: %v; log in %s", err, filepath.Join(os.TempDir(), "ptop-hostile.log"))
	}
	lines := readLines(t, out)
	if len(lines) != 2000 {
		t.Fatalf("%d records, want 2000; log:\n%.5000s", len(lines), stderr.String())
	}
	for i, l := range lines {
		d := l.Doc
		if l.ID != fmt.Sprintf("ok-%04d", i) || d["n"] != float64(i) || d["max"] != float64(max(i, 7)) ||
			d["name"] != fmt.Sprintf("NAME %d", i) || d["keys"] != 0.0 {
			t.Fatalf("record %d: %+v", i, l)
		}
	}
	failed := map[string]string{}
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, `msg="change failed"`) {
			for _, f := range strings.Fields(l) {
				if id, ok := strings.CutPrefix(f, "id=bad-"); ok {
					failed[strings.TrimRight(id, "0123456789")] += l
				}
			}
		}
	}
	for attack, reason := range hostile {
		if n := strings.Count(failed[attack], "change failed"); n != 10 {
			t.Errorf("%s: %d failures logged, want 10", attack, n)
		}
		if !strings.Contains(failed[attack], reason) {
			t.Errorf("%s: failure without %q: %.300s", attack, reason, failed[attack])
		}
	}
	if t.Failed() {
		os.Stderr.WriteString(stderr.String()[:min(3000, len(stderr.String()))])
	}
}

// Without a transform, a document reaches the file sink as the feed sent
// it: numbers beyond float64 exactly, keys in order.
func TestPassthroughKeepsNumbersExactly(t *testing.T) {
	testenv.Integration(t, "builds and runs the command")
	dir := t.TempDir()
	doc := `{"_id":"big","z":12345678901234567890123,"a":9007199254740993,"m":-0.1000000000000000055511151231257827}`
	write(t, filepath.Join(dir, "in.jsonl"), `{"seq":1,"id":"big","changes":[{"rev":"1-a"}],"doc":`+doc+"}\n")
	out := filepath.Join(dir, "out.jsonl")
	write(t, filepath.Join(dir, "pipelines", "p.yaml"), "name: p\nsource: {file: {path: "+filepath.Join(dir, "in.jsonl")+"}}\nsinks:\n  - file: {path: \""+out+"\"}\n")
	if code, _, errOut := ptop(t, "run", filepath.Join(dir, "pipelines")); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"doc":`+doc) {
		t.Fatalf("out: %s", b)
	}
}
