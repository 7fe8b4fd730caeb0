package file

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dimagi/ptop/engine"
)

func TestSourceReadsFeedDump(t *testing.T) {
	p := filepath.Join(t.TempDir(), "changes.jsonl")
	dump := `{"seq":1,"id":"a","changes":[{"rev":"1-x"}],"doc":{"_id":"a","n":1}}

{"seq":"2-g1AAAAB5eJzL","id":"b","changes":[{"rev":"2-y"}],"deleted":true,"doc":{"_id":"b","_deleted":true}}
{broken
{"seq":4,"changes":[]}
{"seq":5,"id":"c","changes":[{"rev":"1-z"}]}
{"last_seq":5,"pending":0}
`
	if err := os.WriteFile(p, []byte(dump), 0o644); err != nil {
		t.Fatal(err)
	}
	src, _ := NewSource(&SourceConfig{Path: p}, engine.BuildContext{})
	out := make(chan engine.Change, 10)
	if err := src.Run(context.Background(), "", out); err != nil {
		t.Fatalf("Run = %v, want nil at the end of the file", err)
	}
	close(out)
	var got []engine.Change
	for c := range out {
		got = append(got, c)
	}
	if len(got) != 5 {
		t.Fatalf("got %d changes: %+v", len(got), got)
	}
	want0 := engine.Change{Seq: "1", ID: "a", Rev: "1-x", RawDoc: []byte(`{"_id":"a","n":1}`)}
	if !reflect.DeepEqual(got[0], want0) {
		t.Errorf("change 0 = %+v", got[0])
	}
	if c := got[1]; c.Seq != "2-g1AAAAB5eJzL" || !c.Deleted || c.Rev != "2-y" {
		t.Errorf("string seq or deletion lost: %+v", c)
	}
	if c := got[2]; c.Err == nil || !strings.HasPrefix(c.Err.Error(), "line 4: ") {
		t.Errorf("bad line: %+v", c)
	}
	if c := got[3]; c.Err == nil || c.Err.Error() != "line 5: a change row needs an id" {
		t.Errorf("row without id: %+v", c)
	}
	if c := got[4]; c.ID != "c" || c.RawDoc != nil {
		t.Errorf("row without doc: %+v", c)
	}
}

func TestSourceLongLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "changes.jsonl")
	big := strings.Repeat("x", 3<<20)
	if err := os.WriteFile(p, []byte(`{"seq":1,"id":"big","doc":{"s":"`+big+`"}}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src, _ := NewSource(&SourceConfig{Path: p}, engine.BuildContext{})
	out := make(chan engine.Change, 1)
	if err := src.Run(context.Background(), "", out); err != nil {
		t.Fatal(err)
	}
	if c := <-out; c.Err != nil || len(c.RawDoc) != len(big)+8 {
		t.Fatalf("long line: err %v, doc of %d bytes", c.Err, len(c.RawDoc))
	}
}

func TestSourceMissingFile(t *testing.T) {
	src, _ := NewSource(&SourceConfig{Path: filepath.Join(t.TempDir(), "nope.jsonl")}, engine.BuildContext{})
	if err := src.Run(context.Background(), "", make(chan engine.Change)); !os.IsNotExist(err) {
		t.Fatalf("Run = %v, want not-exist", err)
	}
}

func TestSinkWritesLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "out.jsonl")
	s, _ := NewSink(&SinkConfig{Path: p, Sync: true}, engine.BuildContext{})
	ctx := context.Background()
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	err := s.Write(ctx, []engine.Record{
		{ID: "a", Doc: map[string]any{"_id": "a", "name": "<Ann & co>", "n": 1.5}},
		{ID: "b", Delete: true},
		{ID: "c", Doc: map[string]any{"f": func() {}}},
	})
	var re engine.RecordErrors
	if !errorsAs(err, &re) || len(re) != 1 || re[0].Index != 2 {
		t.Fatalf("Write = %v, want record 2 rejected", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	want := `{"action":"index","id":"a","doc":{"_id":"a","n":1.5,"name":"<Ann & co>"}}` + "\n" +
		`{"action":"delete","id":"b"}` + "\n"
	if string(b) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", b, want)
	}
	// A second run appends.
	s2, _ := NewSink(&SinkConfig{Path: p}, engine.BuildContext{})
	s2.Open(ctx)
	s2.Write(ctx, []engine.Record{{ID: "d", Delete: true}})
	s2.Close()
	b, _ = os.ReadFile(p)
	if !strings.HasSuffix(string(b), want+`{"action":"delete","id":"d"}`+"\n") {
		t.Fatalf("not appended:\n%s", b)
	}
}

func errorsAs(err error, re *engine.RecordErrors) bool {
	r, ok := err.(engine.RecordErrors)
	*re = r
	return ok
}

func TestSinkDropsPartialLineOnOpen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "out.jsonl")
	whole := `{"action":"delete","id":"a"}` + "\n"
	if err := os.WriteFile(p, []byte(whole+`{"action":"index","id":"b","doc":{"x`), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := NewSink(&SinkConfig{Path: p}, engine.BuildContext{})
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Write(context.Background(), []engine.Record{{ID: "c", Delete: true}})
	s.Close()
	b, _ := os.ReadFile(p)
	if want := whole + `{"action":"delete","id":"c"}` + "\n"; string(b) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", b, want)
	}
}

// A last line without newline that the sink did not write is someone
// else's: it is kept, and the sink's first record starts a line of its own.
func TestSinkKeepsForeignLastLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "out.jsonl")
	if err := os.WriteFile(p, []byte("# header\nnot ours"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := NewSink(&SinkConfig{Path: p}, engine.BuildContext{})
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), []engine.Record{{ID: "c", Delete: true}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	b, _ := os.ReadFile(p)
	if want := "# header\nnot ours\n" + `{"action":"delete","id":"c"}` + "\n"; string(b) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", b, want)
	}
}

func TestSinkCreatesDirectory(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a", "b", "out.jsonl")
	s, _ := NewSink(&SinkConfig{Path: p}, engine.BuildContext{})
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), []engine.Record{{ID: "c", Delete: true}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if b, err := os.ReadFile(p); err != nil || string(b) != `{"action":"delete","id":"c"}`+"\n" {
		t.Fatalf("file: %q, %v", b, err)
	}
}

// A path that cannot be a file fails at once, for good: the engine does
// not retry opening it for ever.
func TestSinkBadPathIsPermanent(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "plain")
	os.WriteFile(notDir, nil, 0o644)
	for _, p := range []string{dir, filepath.Join(notDir, "out.jsonl")} {
		s, _ := NewSink(&SinkConfig{Path: p}, engine.BuildContext{})
		err := s.Open(context.Background())
		if err == nil || !engine.IsPermanent(err) {
			t.Errorf("Open(%s) = %v, want a permanent error", p, err)
		}
	}
}

// With since set, the source starts after the row of that seq; a seq the
// file does not have stops it, rather than reading everything again.
func TestSourceResumesAfterSince(t *testing.T) {
	p := filepath.Join(t.TempDir(), "changes.jsonl")
	dump := `{"seq":1,"id":"a","changes":[{"rev":"1-x"}],"doc":{"_id":"a"}}
{"seq":"2-g1AA","id":"b","changes":[{"rev":"1-y"}],"doc":{"_id":"b"}}
{"seq":3,"id":"c","changes":[{"rev":"1-z"}],"doc":{"_id":"c"}}
`
	os.WriteFile(p, []byte(dump), 0o644)
	src, _ := NewSource(&SourceConfig{Path: p}, engine.BuildContext{})
	read := func(since string) ([]string, error) {
		out := make(chan engine.Change, 10)
		err := src.Run(context.Background(), since, out)
		close(out)
		var ids []string
		for c := range out {
			ids = append(ids, c.ID)
		}
		return ids, err
	}
	for since, want := range map[string]string{"": "a b c", "0": "a b c", "1": "b c", "2-g1AA": "c", "3": ""} {
		ids, err := read(since)
		if err != nil || strings.Join(ids, " ") != want {
			t.Errorf("since %q: %v, %v; want %s", since, ids, err, want)
		}
	}
	if _, err := read("9"); err == nil || !engine.IsPermanent(err) || !strings.Contains(err.Error(), `no row has the checkpoint's seq "9"`) {
		t.Errorf("since 9: %v", err)
	}
}
