package engine_test

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/dimagi/ptop/builtins/couchdb"
	"github.com/dimagi/ptop/builtins/file"
	"github.com/dimagi/ptop/engine"
)

// TestLoadBadConfigs loads each file in testdata/invalid and compares the
// problems reported with the file's `# want: LINE:COL: message` lines.
func TestLoadBadConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 25 {
		t.Fatalf("only %d bad configs in testdata/invalid", len(files))
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			want := wantErrors(t, f)
			if len(want) == 0 {
				t.Fatalf("%s has no '# want:' lines", f)
			}
			_, err := engine.Load(f)
			var es engine.Errors
			if !errors.As(err, &es) {
				t.Fatalf("Load(%s) = %v, want positioned errors", f, err)
			}
			var got []string
			for _, e := range es {
				got = append(got, e.Error())
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("Load(%s) errors:\n got: %s\nwant: %s", f, strings.Join(got, "\n      "), strings.Join(want, "\n      "))
			}
		})
	}
}

func wantErrors(t *testing.T, path string) []string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "# want: "); ok {
			want = append(want, path+":"+rest)
		}
	}
	return want
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadDuplicateNames(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a.yaml", "name: same\nsource: {file: {path: x}}\nsinks: [{file: {path: y}}]\n")
	b := writeFile(t, dir, "b.yaml", "\nname: same\nsource: {file: {path: x}}\nsinks: [{file: {path: y}}]\n")
	_, err := engine.Load(dir)
	want := a + `:1:7: pillow name "same" is used again at ` + b + ":2:7\n" +
		b + `:2:7: pillow name "same" is already used at ` + a + ":1:7"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}

func TestLoadCollectsAllFiles(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", "name: a\nsource: {file: {path: x}}\nsinks: []\n")
	writeFile(t, dir, "b.yml", "name: b\nsource: {file: {path: x}}\nsinks: [{file: {}}]\n")
	writeFile(t, dir, "b.test.yaml", "not: a pillow\n")
	writeFile(t, dir, "notes.txt", "ignored\n")
	_, err := engine.Load(dir)
	var es engine.Errors
	if !errors.As(err, &es) || len(es) != 2 {
		t.Fatalf("want 2 errors (one per file), got %v", err)
	}
	if !strings.HasPrefix(es[0].Error(), filepath.Join(dir, "a.yaml")+":3:8:") || !strings.HasPrefix(es[1].Error(), filepath.Join(dir, "b.yml")+":3:16:") {
		t.Fatalf("unexpected errors:\n%v", err)
	}
}

func TestLoadTransformFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "t.js", "function transform(doc) {\n  return {a: doc.a +};\n}\n")
	p := writeFile(t, dir, "p.yaml", "name: p\nsource: {file: {path: x}}\ntransform_file: t.js\nsinks: [{file: {path: y}}]\n")
	_, err := engine.Load(p)
	want := filepath.Join(dir, "t.js") + ":2:21: transform: Unexpected token }"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
	writeFile(t, dir, "t.js", "function transform(doc) { return {a: doc.a}; }\n")
	specs, err := engine.Load(p)
	if err != nil || len(specs) != 1 {
		t.Fatalf("Load = %v, %v", specs, err)
	}
}

// TestLoadTransformFileSafety: a transform_file must be a regular UTF-8
// file of at most 4 MiB, and errors about a file that is not JavaScript
// quote none of its content (it may be a secret named by mistake).
func TestLoadTransformFileSafety(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "p.yaml", "name: p\nsource: {file: {path: x}}\ntransform_file: t.js\nsinks: [{file: {path: y}}]\n")
	tjs := filepath.Join(dir, "t.js")
	for _, tt := range []struct {
		name, content, want string
	}{
		{"secret word", "sk_live_51HxYzSECRET\n", tjs + ": transform: the script failed when loaded: a ReferenceError (at " + tjs + ":1:1)"},
		{"secret call", "sk_live_51HxYzSECRET(1)\n", tjs + ": transform: the script failed when loaded: a ReferenceError (at " + tjs + ":1:21)"},
		{"secret pair", "API_KEY=sk_live_51HxYzSECRET\nOTHER='x'\n", tjs + ": transform: the script failed when loaded: a ReferenceError (at " + tjs + ":1:9)"},
		{"declared twice", "const sk_live_51HxYzSECRET = 1; const sk_live_51HxYzSECRET = 2;\n", tjs + ":1:39: transform: syntax error (the file is not valid JavaScript here)"},
		{"not UTF-8", "\xff\xfe secret", p + ":3:17: transform_file \"t.js\": not UTF-8 text; a transform file is JavaScript"},
		{"too large", "//" + strings.Repeat("x", 4<<20) + "\n", p + ":3:17: transform_file \"t.js\": larger than 4 MiB"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			writeFile(t, dir, "t.js", tt.content)
			_, err := engine.Load(p)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("got  %v\nwant %s", err, tt.want)
			}
			if strings.Contains(err.Error(), "sk_live") || strings.Contains(err.Error(), "secret") {
				t.Fatalf("the error quotes the file: %v", err)
			}
		})
	}
	t.Run("a device", func(t *testing.T) {
		q := writeFile(t, dir, "q.yaml", "name: q\nsource: {file: {path: x}}\ntransform_file: /dev/zero\nsinks: [{file: {path: y}}]\n")
		_, err := engine.Load(q)
		if want := q + ":3:17: transform_file \"/dev/zero\": not a regular file"; err == nil || err.Error() != want {
			t.Fatalf("got  %v\nwant %s", err, want)
		}
	})
}

func TestLoadEnvExpansion(t *testing.T) {
	t.Setenv("PTOP_TEST_PATH", "/data/in.jsonl")
	t.Setenv("PTOP_TEST_SIZE", "7")
	dir := t.TempDir()
	p := writeFile(t, dir, "p.yaml", `name: p
source: {file: {path: "${PTOP_TEST_PATH}"}}
filter: doc.x == "${NOT_EXPANDED}"
transform: |
  function transform(doc) { return {s: `+"`${doc.x}`"+`}; }
batch: {size: "${PTOP_TEST_SIZE}", wait: "${PTOP_TEST_UNSET:-250ms}"}
sinks: [{file: {path: "$${literal}"}}]
`)
	specs, err := engine.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	s := specs[0]
	if s.Batch.Size != 7 || s.Batch.Wait.String() != "250ms" {
		t.Errorf("batch = %+v", s.Batch)
	}
	if got := s.Source.Config.(*file.SourceConfig).Path; got != "/data/in.jsonl" {
		t.Errorf("source path = %q", got)
	}
	if got := s.Sinks[0].Config.(*file.SinkConfig).Path; got != "${literal}" {
		t.Errorf("sink path = %q", got)
	}
	if !strings.Contains(s.Filter, "${NOT_EXPANDED}") || !strings.Contains(s.Transform, "${doc.x}") {
		t.Errorf("filter and transform must not be expanded: %q %q", s.Filter, s.Transform)
	}
}

// Two pillows whose file sinks write one file (named alike or not) are
// reported at both places.
func TestLoadFileSinkPathClaimedTwice(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.jsonl")
	a := writeFile(t, dir, "a.yaml", "name: a\nsource: {file: {path: x}}\nsinks: [{file: {path: "+out+"}}]\n")
	b := writeFile(t, dir, "b.yaml", "name: b\nsource: {file: {path: x}}\nsinks:\n  - file: {path: "+dir+"/./out.jsonl}\n")
	writeFile(t, dir, "c.yaml", "name: c\nsource: {file: {path: x}}\nsinks: [{file: {path: "+filepath.Join(dir, "other.jsonl")+"}}]\n")
	_, err := engine.Load(dir)
	want := a + `:3:23: file path "` + out + `" is written again at ` + b + ":4:18\n" +
		b + `:4:18: file path "` + out + `" is already written at ` + a + ":3:23"
	if err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
}
