package engine_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	json "github.com/goccy/go-json"

	"github.com/dimagi/ptop/engine"
)

func putFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const processPillow = `name: p
source: {file: {path: in.jsonl}}
filter: doc.type != "skip"
transform: |
  function transform(doc, change) {
    if (doc.type === "boom") { return doc.missing.field; }
    if (doc.type === "none") { return null; }
    if (doc.type === "many") { return [{_id: doc._id + ":1", n: 1}, {_id: doc._id + ":2", n: 2}]; }
    if (doc.type === "num") { return {_id: 42, n: doc.n}; }
    return {name: doc.name, seq: change.seq, n: doc.n};
  }
max_doc_bytes: 200
sinks: [{file: {path: out.jsonl}}]
`

func loadOne(t *testing.T, content string) *engine.Spec {
	t.Helper()
	specs, err := engine.Load(putFile(t, t.TempDir(), "p.yaml", content))
	if err != nil {
		t.Fatal(err)
	}
	return specs[0]
}

func raw(doc string) engine.Change {
	var d struct {
		ID string `json:"_id"`
	}
	if err := json.Unmarshal([]byte(doc), &d); err != nil {
		panic(err)
	}
	return engine.Change{ID: d.ID, Seq: "7", Rev: "1-a", RawDoc: []byte(doc)}
}

func TestProcess(t *testing.T) {
	s := loadOne(t, processPillow)
	type rec struct {
		ID, DocID string
		Delete    bool
		Doc       string
	}
	for _, tc := range []struct {
		name     string
		change   engine.Change
		want     []rec
		filtered bool
		err      string
	}{
		{
			name: "one record, id from the document", change: raw(`{"_id":"a","name":"x","n":3}`),
			want: []rec{{ID: "a", DocID: "a", Doc: `{"name":"x","seq":"7","n":3}`}},
		}, // the transform's key order
		{name: "filtered", change: raw(`{"_id":"a","type":"skip"}`), filtered: true},
		{name: "null makes no record", change: raw(`{"_id":"a","type":"none"}`)},
		{
			name: "several records", change: raw(`{"_id":"a","type":"many"}`),
			want: []rec{{ID: "a:1", DocID: "a", Doc: `{"_id":"a:1","n":1}`}, {ID: "a:2", DocID: "a", Doc: `{"_id":"a:2","n":2}`}},
		},
		{
			name: "a numeric _id", change: raw(`{"_id":"a","type":"num","n":1.5}`),
			want: []rec{{ID: "42", DocID: "a", Doc: `{"_id":42,"n":1.5}`}},
		},
		{
			name: "deletion", change: engine.Change{ID: "a", Rev: "2-b", Deleted: true},
			want: []rec{{ID: "a", DocID: "a", Delete: true, Doc: "null"}},
		},
		{name: "design document", change: raw(`{"_id":"_design/x"}`), filtered: true},
		{name: "transform throws", change: raw(`{"_id":"a","type":"boom"}`), err: "transform: TypeError: Cannot read property 'field' of undefined"},
		{name: "too large", change: raw(`{"_id":"a","name":"` + strings.Repeat("x", 200) + `"}`), err: "more than max_doc_bytes (200)"},
		{name: "unreadable", change: engine.Change{ID: "a", RawDoc: []byte(`{"_id":"a",}`)}, err: "decoding the document"},
		{name: "source error", change: engine.Change{ID: "a", Err: errors.New("bad row")}, err: "bad row"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, filtered, err := s.Process(tc.change)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if filtered != tc.filtered {
				t.Errorf("filtered = %v", filtered)
			}
			var got []rec
			for _, r := range recs {
				b, err := json.Marshal(r.Doc)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, rec{ID: r.ID, DocID: r.DocID, Delete: r.Delete, Doc: string(b)})
				if r.Seq != tc.change.Seq || r.Rev != tc.change.Rev {
					t.Errorf("record seq/rev = %q/%q", r.Seq, r.Rev)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("records:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestProcessSettings(t *testing.T) {
	s := loadOne(t, "name: p\nsource: {file: {path: x}}\ninclude_design: true\nskip_deletes: true\nsinks: [{file: {path: y}}]\n")
	recs, filtered, err := s.Process(engine.Change{ID: "a", Deleted: true})
	if err != nil || !filtered || len(recs) != 0 {
		t.Errorf("skip_deletes: %v %v %v", recs, filtered, err)
	}
	recs, filtered, err = s.Process(raw(`{"_id":"_design/x","n":1}`))
	if err != nil || filtered || len(recs) != 1 || recs[0].ID != "_design/x" {
		t.Fatalf("include_design: %v %v %v", recs, filtered, err)
	}
	// Without a transform the record is the document as the feed sent it.
	if got, ok := recs[0].Doc.(json.RawMessage); !ok || string(got) != `{"_id":"_design/x","n":1}` {
		t.Errorf("doc = %#v", recs[0].Doc)
	}
}

// TestProcessAgreesWithRun runs a feed through a real pillow (file source
// to file sink) and checks that Process predicts every line it writes.
func TestProcessAgreesWithRun(t *testing.T) {
	dir := t.TempDir()
	docs := []string{
		`{"_id":"a","name":"x","n":3}`,
		`{"_id":"b","type":"skip"}`,
		`{"_id":"c","type":"many"}`,
		`{"_id":"d","type":"boom"}`,
		`{"_id":"e","type":"num","n":2}`,
		`{"_id":"_design/f"}`,
		`{"_id":"g","name":"` + strings.Repeat("y", 300) + `"}`,
		`{"_id":"h","type":"none"}`,
	}
	var in strings.Builder
	var changes []engine.Change
	for i, d := range docs {
		c := raw(d)
		c.Seq = string(rune('1' + i))
		changes = append(changes, c)
		in.WriteString(`{"seq":` + c.Seq + `,"id":"` + c.ID + `","changes":[{"rev":"1-a"}],"doc":` + d + "}\n")
	}
	in.WriteString(`{"seq":9,"id":"a","deleted":true,"changes":[{"rev":"2-b"}]}` + "\n")
	changes = append(changes, engine.Change{ID: "a", Seq: "9", Rev: "2-b", Deleted: true})
	putFile(t, dir, "in.jsonl", in.String())
	pillow := strings.ReplaceAll(strings.ReplaceAll(processPillow, "in.jsonl", filepath.Join(dir, "in.jsonl")), "out.jsonl", filepath.Join(dir, "out.jsonl"))
	s := loadOne(t, pillow)

	var want []string
	for _, c := range changes {
		recs, _, err := s.Process(c)
		if err != nil {
			continue
		}
		for _, r := range recs {
			line := map[string]any{"action": "index", "id": r.ID, "doc": r.Doc}
			if r.Delete {
				line = map[string]any{"action": "delete", "id": r.ID}
			}
			want = append(want, canonJSON(t, line))
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := engine.NewPillow(s, engine.RunOptions{Log: log}).Run(ctx); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "out.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var v any
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		got = append(got, canonJSON(t, v))
	}
	if len(want) != 5 || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the run wrote:\n%s\nProcess predicted:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// canonJSON encodes v with sorted keys and numbers as JSON has them.
func canonJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var x any
	if err := json.Unmarshal(b, &x); err != nil {
		t.Fatal(err)
	}
	b, _ = json.Marshal(x)
	return string(b)
}

func TestLoadWithAllowUnsetEnv(t *testing.T) {
	dir := t.TempDir()
	putFile(t, dir, "a.yaml", `name: a
source: {couchdb: {url: "${PTOP_TEST_UNSET_URL}", db: cases}}
batch: {size: "${PTOP_TEST_UNSET_SIZE}"}
skip_deletes: "${PTOP_TEST_UNSET_SKIP:-true}"
filter: doc.x == 1
sinks: [{file: {path: "${PTOP_TEST_UNSET_OUT}/a.jsonl"}}]
`)
	putFile(t, dir, "b.yaml", "name: b\nsource: {file: {path: x}}\nsinks: [{file: {path: y}}]\n")
	_, err := engine.Load(dir)
	if err == nil || strings.Count(err.Error(), "is not set") != 3 {
		t.Fatalf("Load: want three unset variables, got %v", err)
	}
	if _, err := engine.LoadWith(engine.LoadOptions{}, dir); err == nil || err.Error() != mustErr(engine.Load(dir)).Error() {
		t.Fatalf("LoadWith without options must be Load: %v", err)
	}
	specs, err := engine.LoadWith(engine.LoadOptions{AllowUnsetEnv: true}, dir)
	if err != nil {
		t.Fatal(err)
	}
	a, b := specs[0], specs[1]
	if a.Batch.Size != 500 || !a.SkipDeletes || a.Src() != nil || a.Outputs() != nil {
		t.Errorf("a: batch %+v, skip_deletes %v, source %v, outputs %v", a.Batch, a.SkipDeletes, a.Src(), a.Outputs())
	}
	if b.Src() == nil || len(b.Outputs()) != 1 {
		t.Errorf("b, which needs no variable, must be built as usual")
	}
	if _, filtered, err := a.Process(engine.Change{ID: "x", Doc: map[string]any{"x": 2}}); err != nil || !filtered {
		t.Errorf("Process on a pillow loaded without its variables: %v %v", filtered, err)
	}

	// Every other problem is still reported.
	putFile(t, dir, "c.yaml", "name: c\nsource: {file: {path: \"${PTOP_TEST_UNSET_IN}\"}}\nbatchh: {}\nsinks: [{file: {path: z}}]\n")
	_, err = engine.LoadWith(engine.LoadOptions{AllowUnsetEnv: true}, dir)
	if want := filepath.Join(dir, "c.yaml") + `:3:1: unknown key "batchh" (did you mean "batch"?)`; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

func mustErr(_ any, err error) error { return err }

type decodeTarget struct {
	Name  string         `yaml:"name" ptop:"required"`
	Size  int            `yaml:"size"`
	Doc   map[string]any `yaml:"doc"`
	Items []string       `yaml:"items"`
}

func TestDecodeFile(t *testing.T) {
	dir := t.TempDir()
	p := putFile(t, dir, "x.yaml", "name: ${NOT_EXPANDED}\nsize: 3\ndoc: {a: 1, b: [x, 2.5]}\nitems: [a, b]\n")
	var v decodeTarget
	if err := engine.DecodeFile(p, &v); err != nil {
		t.Fatal(err)
	}
	want := decodeTarget{Name: "${NOT_EXPANDED}", Size: 3, Doc: map[string]any{"a": 1, "b": []any{"x", 2.5}}, Items: []string{"a", "b"}}
	if !reflect.DeepEqual(v, want) {
		t.Errorf("got %#v", v)
	}
	p = putFile(t, dir, "bad.yaml", "size: x\nitemz: []\n")
	err := engine.DecodeFile(p, &decodeTarget{})
	wantErr := p + `:1:1: missing required key "name"` + "\n" + p + `:1:7: expected an integer, got "x"` + "\n" + p + `:2:1: unknown key "itemz" (did you mean "items"?)`
	if err == nil || err.Error() != wantErr {
		t.Errorf("got %v\nwant %s", err, wantErr)
	}
	p = putFile(t, dir, "syntax.yaml", "name: [\n")
	if err := engine.DecodeFile(p, &decodeTarget{}); err == nil || err.Error() != p+":1:7: invalid YAML: did not find expected node content" {
		t.Errorf("syntax error: %v", err)
	}
	if err := engine.DecodeFile(filepath.Join(dir, "missing.yaml"), &decodeTarget{}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
}
