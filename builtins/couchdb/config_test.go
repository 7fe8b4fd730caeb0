package couchdb

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
)

// A sink that does nothing, so that pillow files can be loaded without
// depending on another builtin.
type nopSinkConfig struct{}

type nopSink struct{}

func (nopSink) Open(context.Context) error                   { return nil }
func (nopSink) Write(context.Context, []engine.Record) error { return nil }
func (nopSink) Close() error                                 { return nil }

func init() {
	engine.RegisterSink("couchdbtest", func(*nopSinkConfig, engine.BuildContext) (engine.Sink, error) {
		return nopSink{}, nil
	})
}

// loadSource writes a pillow whose source block is src (indented under
// `couchdb:`, from line 4) and loads it.
func loadSource(t *testing.T, src string) (*engine.Spec, string, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "p.yaml")
	var b strings.Builder
	b.WriteString("name: p\nsource:\n  couchdb:\n")
	for _, l := range strings.Split(strings.TrimSpace(src), "\n") {
		b.WriteString("    " + l + "\n")
	}
	b.WriteString("sinks:\n  - couchdbtest: {}\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := engine.LoadFile(path)
	return spec, path, err
}

func TestConfigErrors(t *testing.T) {
	const since = `use "0" (the beginning), "now", or a sequence id such as 42 or "42-g1AAAA…"`
	const dbName = `a database name is a lowercase letter followed by lowercase letters, digits and _$()+-/`
	tests := []struct {
		name, src string
		want      []string // "line:col: message", in order
	}{
		{"missing url", "db: x", []string{`4:5: missing required key "url"`}},
		{"missing db", "url: http://127.0.0.1:5984", []string{`4:5: missing required key "db"`}},
		{"since abc", "url: http://h:5984\ndb: x\nsince: abc", []string{`6:12: invalid since "abc": ` + since}},
		{"since -1", "url: http://h:5984\ndb: x\nsince: -1", []string{`6:12: invalid since "-1": ` + since}},
		{"since dash only", "url: http://h:5984\ndb: x\nsince: \"12-\"", []string{`6:12: invalid since "12-": ` + since}},
		{"since empty", "url: http://h:5984\ndb: x\nsince: \"\"", []string{`6:12: invalid since "": ` + since}},
		{
			"selector and filter", "url: http://h:5984\ndb: x\nselector: {type: a}\nfilter: app/by_type",
			[]string{`7:13: set either selector or filter, not both`},
		},
		{
			"filter without slash", "url: http://h:5984\ndb: x\nfilter: by_type",
			[]string{`6:13: invalid filter "by_type": use "ddoc/name", the design document (without _design/) and the filter's name`},
		},
		{
			"filter with two slashes", "url: http://h:5984\ndb: x\nfilter: _design/app/by_type",
			[]string{`6:13: invalid filter "_design/app/by_type": use "ddoc/name", the design document (without _design/) and the filter's name`},
		},
		{
			"params without filter", "url: http://h:5984\ndb: x\nparams: {type: a}",
			[]string{`6:13: params are the query parameters of a filter; set filter too`},
		},
		{"zero heartbeat", "url: http://h:5984\ndb: x\nheartbeat: 0s", []string{`6:16: heartbeat must be positive, got 0s`}},
		{"negative heartbeat", "url: http://h:5984\ndb: x\nheartbeat: -5s", []string{`6:16: heartbeat must be positive, got -5s`}},
		{
			"bad heartbeat", "url: http://h:5984\ndb: x\nheartbeat: soon",
			[]string{`6:16: invalid duration "soon": use a number with a unit, such as "500ms" or "10s"`},
		},
		{"url scheme", "url: ftp://me:s3cret@h\ndb: x", []string{`4:10: invalid url "ftp://me:xxxxx@h": use http:// or https://`}},
		{"url no host", "url: \"http:///x\"\ndb: x", []string{`4:10: invalid url "http:///x": no host`}},
		{"url unparsable", "url: \"http://h:prt\"\ndb: x", []string{`4:10: invalid url: the port is not a number`}},
		{"url password unencoded", "url: \"http://me:s3/cr:wq@h:5984\"\ndb: x", []string{`4:10: invalid url: the user name or password is not valid in a URL, or a character in it cuts the URL short; percent-encode these characters in the user name and password: @ as %40, : as %3A, / as %2F, ? as %3F, # as %23, % as %25, space as %20`}},
		{"errors_db with a space", "url: http://h:5984\ndb: x\nerrors_db: Bad Name", []string{`6:16: invalid errors_db "Bad Name": ` + dbName}},
		{"errors_db uppercase", "url: http://h:5984\ndb: x\nerrors_db: Errors", []string{`6:16: invalid errors_db "Errors": ` + dbName}},
		{"errors_db starting with _", "url: http://h:5984\ndb: x\nerrors_db: _users", []string{`6:16: invalid errors_db "_users": ` + dbName}},
		{"errors_db starting with a digit", "url: http://h:5984\ndb: x\nerrors_db: \"1x\"", []string{`6:16: invalid errors_db "1x": ` + dbName}},
		{"errors_db empty", "url: http://h:5984\ndb: x\nerrors_db: \"\"", []string{`6:16: invalid errors_db "": must not be empty`}},
		{
			"errors_db too long", "url: http://h:5984\ndb: x\nerrors_db: " + strings.Repeat("e", 239),
			[]string{`6:16: invalid errors_db "` + strings.Repeat("e", 239) + `": longer than 238 characters`},
		},
		{
			"errors_db is db", "url: http://h:5984\ndb: cases\nerrors_db: cases",
			[]string{`6:16: errors_db must not be the source's database: its entries would show up in the changes feed`},
		},
		{
			"records_db is db", "url: http://h:5984\ndb: cases\nrecords_db: cases",
			[]string{`6:17: records_db must not be the source's database: its entries would show up in the changes feed`},
		},
		{
			"records_db is errors_db", "url: http://h:5984\ndb: cases\nrecords_db: ptop_errors",
			[]string{`6:17: records_db must not be errors_db`},
		},
		{"records_db uppercase", "url: http://h:5984\ndb: x\nrecords_db: Recs", []string{`6:17: invalid records_db "Recs": ` + dbName}},
		{"unknown key", "url: http://h:5984\ndb: x\nheartbeats: 1s", []string{`6:5: unknown key "heartbeats" (did you mean "heartbeat"?)`}},
		{"several", "db: x\nsince: later\nheartbeat: 0s", []string{
			`4:5: missing required key "url"`,
			`5:12: invalid since "later": ` + since,
			`6:16: heartbeat must be positive, got 0s`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, path, err := loadSource(t, tt.src)
			if err == nil {
				t.Fatal("loaded without error")
			}
			want := make([]string, len(tt.want))
			for i, w := range tt.want {
				want[i] = path + ":" + w
			}
			got := strings.Split(err.Error(), "\n")
			if !reflect.DeepEqual(got, want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("the password is in the error: %v", err)
			}
		})
	}
}

func TestConfigValid(t *testing.T) {
	tests := []struct {
		name, src string
		want      Config
	}{
		{"defaults", "url: http://h:5984\ndb: x", Config{
			URL: "http://h:5984", DB: "x", Since: "0", Heartbeat: engine.Duration(10 * time.Second), ErrorsDB: "ptop_errors", RecordsDB: "ptop_records",
		}},
		{"since 0 as a number", "url: http://h:5984\ndb: x\nsince: 0", Config{
			URL: "http://h:5984", DB: "x", Since: "0", Heartbeat: engine.Duration(10 * time.Second), ErrorsDB: "ptop_errors", RecordsDB: "ptop_records",
		}},
		{"since integer", "url: http://h:5984\ndb: x\nsince: 42", Config{
			URL: "http://h:5984", DB: "x", Since: "42", Heartbeat: engine.Duration(10 * time.Second), ErrorsDB: "ptop_errors", RecordsDB: "ptop_records",
		}},
		{"since string seq", "url: http://h:5984\ndb: x\nsince: 12-g1AAAAB5eJzL", Config{
			URL: "http://h:5984", DB: "x", Since: "12-g1AAAAB5eJzL", Heartbeat: engine.Duration(10 * time.Second), ErrorsDB: "ptop_errors", RecordsDB: "ptop_records",
		}},
		{"everything", `url: https://u:p@h/couch
db: x
since: now
selector: {type: a, n: {"$gt": 2}, tags: [x, y]}
heartbeat: 500ms
checkpoint_id: mine`, Config{
			URL: "https://u:p@h/couch", DB: "x", Since: "now",
			Selector:  map[string]any{"type": "a", "n": map[string]any{"$gt": 2}, "tags": []any{"x", "y"}},
			Heartbeat: engine.Duration(500 * time.Millisecond), CheckpointID: "mine", ErrorsDB: "ptop_errors", RecordsDB: "ptop_records",
		}},
		{"filter", "url: http://h:5984\ndb: x\nfilter: app/by_type\nparams: {type: 3}", Config{
			URL: "http://h:5984", DB: "x", Since: "0", Heartbeat: engine.Duration(10 * time.Second),
			Filter: "app/by_type", Params: map[string]string{"type": "3"}, ErrorsDB: "ptop_errors", RecordsDB: "ptop_records",
		}},
		{"errors_db", "url: http://h:5984\ndb: x\nerrors_db: pillows/errors_2+(a)-$", Config{
			URL: "http://h:5984", DB: "x", Since: "0", Heartbeat: engine.Duration(10 * time.Second),
			ErrorsDB: "pillows/errors_2+(a)-$", RecordsDB: "ptop_records",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, _, err := loadSource(t, tt.src)
			if err != nil {
				t.Fatal(err)
			}
			src, ok := spec.Src().(*Source)
			if !ok {
				t.Fatalf("source is %T", spec.Src())
			}
			if !reflect.DeepEqual(src.cfg, tt.want) {
				t.Errorf("config\n%#v\nwant\n%#v", src.cfg, tt.want)
			}
		})
	}
}

func TestCheckpointID(t *testing.T) {
	for _, tt := range []struct{ cfg, want string }{
		{"", "_local/ptop-p"},
		{"mine", "_local/mine"},
		{"_local/mine", "_local/mine"},
	} {
		s := newTestSource(t, Config{URL: "http://h:5984", DB: "x", CheckpointID: tt.cfg})
		if got := s.checkpointID("p"); got != tt.want {
			t.Errorf("checkpoint_id %q: got %q, want %q", tt.cfg, got, tt.want)
		}
	}
}

func TestSeqNumber(t *testing.T) {
	for s, want := range map[string]int64{
		"0": 0, "42": 42, "12-g1AAAA": 12, "now": -1, "": -1, "-1": -1,
		"99999999999999999999999": -1,
	} {
		if got := seqNumber(s); got != want {
			t.Errorf("seqNumber(%q) = %d, want %d", s, got, want)
		}
	}
}

func TestParseLine(t *testing.T) {
	tests := []struct {
		line    string
		want    engine.Change
		lastSeq string
		err     string
		rowErr  string
	}{
		{
			line: `{"seq":12,"id":"a","changes":[{"rev":"1-x"}],"doc":{"_id":"a","n":[1,2]}}`,
			want: engine.Change{Seq: "12", ID: "a", Rev: "1-x", RawDoc: []byte(`{"_id":"a","n":[1,2]}`)},
		},
		{
			line: `{"seq":"3-g1AAAA\"q","id":"b","changes":[{"rev":"2-y"}],"deleted":true,"doc":{"_id":"b","_deleted":true}}`,
			want: engine.Change{Seq: `3-g1AAAA"q`, ID: "b", Rev: "2-y", Deleted: true, RawDoc: []byte(`{"_id":"b","_deleted":true}`)},
		},
		{
			line: `{"seq":"4-x","id":"c","changes":[{"rev":"1-z"}]}`,
			want: engine.Change{Seq: "4-x", ID: "c", Rev: "1-z"},
		},
		{line: `{"last_seq":"9-abc","pending":0}`, lastSeq: "9-abc"},
		{line: `{"last_seq":9}`, lastSeq: "9"},
		{line: `{"error":"not_found","reason":"deleted"}`, err: `server error "not_found": "deleted"`},
		{line: `{"seq":1,"id":`, rowErr: `unreadable changes feed row "{\"seq\":1,\"id\":": unexpected end of JSON input`},
		{line: `{"id":"x"}`, rowErr: `unreadable changes feed row "{\"id\":\"x\"}": no seq or id`},
	}
	for _, tt := range tests {
		c, last, err := parseLine([]byte(tt.line))
		switch {
		case tt.err != "":
			if err == nil || err.Error() != tt.err {
				t.Errorf("%s: error %v, want %s", tt.line, err, tt.err)
			}
		case err != nil:
			t.Errorf("%s: %v", tt.line, err)
		case tt.rowErr != "":
			if c.Err == nil || c.Err.Error() != tt.rowErr || c.Seq != "" {
				t.Errorf("%s: change %+v, want Err %s", tt.line, c, tt.rowErr)
			}
		case last != tt.lastSeq:
			t.Errorf("%s: last_seq %q, want %q", tt.line, last, tt.lastSeq)
		case !reflect.DeepEqual(c, tt.want):
			t.Errorf("%s:\n got %+v\nwant %+v", tt.line, c, tt.want)
		}
	}
}

// TestDocExample loads the example in the package documentation.
func TestDocExample(t *testing.T) {
	src, err := os.ReadFile("couchdb.go")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(l, "//\t"); ok {
			lines = append(lines, rest)
		}
	}
	if len(lines) < 3 || lines[0] != "source:" {
		t.Fatalf("no example in the package documentation: %q", lines)
	}
	t.Setenv("COUCH_URL", "http://127.0.0.1:5984")
	path := filepath.Join(t.TempDir(), "p.yaml")
	pillow := "name: case-search\n" + strings.Join(lines, "\n") + "\nsinks:\n  - couchdbtest: {}\n"
	if err := os.WriteFile(path, []byte(pillow), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := engine.LoadFile(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, pillow)
	}
	s := spec.Src().(*Source)
	if s.cfg.DB != "cases" || s.cfg.Selector["doc_type"] != "CommCareCase" || s.checkpointID("case-search") != "_local/ptop-case-search" {
		t.Errorf("example decoded as %+v", s.cfg)
	}
}

func TestRawUserinfo(t *testing.T) {
	for in, want := range map[string]string{
		"http://u:p@h:5984":        "u:p@",
		"http://u:p%40x@h/db@x?a@": "u:p%40x@",
		"http://h/db@x":            "",
		"http://h":                 "",
	} {
		if got := rawUserinfo(in); got != want {
			t.Errorf("rawUserinfo(%q) = %q, want %q", in, got, want)
		}
	}
}
