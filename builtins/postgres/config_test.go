package postgres

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
)

// loadFile writes content to a pillow file and loads it.
func loadFile(t *testing.T, content string) (*engine.Spec, string, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := engine.LoadFile(path)
	return spec, path, err
}

// The sink's keys start on line 5, column 7.
const sinkHead = "name: p\nsource: {file: {path: x}}\nsinks:\n  - postgres:\n"

func TestConfigErrors(t *testing.T) {
	const dsn = "dsn: postgres://u:s3cret@h/db\n"
	tests := []struct {
		name, src string
		want      []string // "line:col: message", in order
	}{
		{"missing dsn and table", "key: id", []string{`5:7: missing required key "dsn"`, `5:7: missing required key "table"`}},
		{"empty dsn", "dsn: \"\"\ntable: t", []string{`5:12: dsn must not be empty`}},
		{"bad dsn", "dsn: \"postgres://u:s3cret@h:port/db\"\ntable: t", []string{`5:12: invalid dsn: invalid port`}},
		{"bad dsn option", "dsn: \"host=h password=s3cret sslmode=sometimes\"\ntable: t", []string{`5:12: invalid dsn: failed to configure TLS (sslmode is invalid)`}},
		{"empty table", dsn + "table: \"\"", []string{`6:14: table must not be empty`}},
		{"table with three parts", dsn + "table: a.b.c", []string{`6:14: invalid table "a.b.c": use name or schema.name`}},
		{"table with an empty part", dsn + "table: a.", []string{`6:14: invalid table "a.": use name or schema.name, without spaces around the names`}},
		{"table name too long", dsn + "table: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", []string{`6:14: table name "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" is 55 bytes; it may have at most 54`}},
		{"schema name too long", dsn + "table: ssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss.t", []string{`6:14: schema name "ssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss" is 64 bytes; Postgres names are at most 63`}},
		{"column name too long", dsn + "table: t\ncolumns: {cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc: text}", []string{`7:16: column "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc" is 64 bytes; Postgres names are at most 63`}},
		{"key too long", dsn + "table: t\nkey: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc", []string{`7:12: key "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc" is 64 bytes; Postgres names are at most 63`}},
		{"empty key", dsn + "table: t\nkey: \"\"", []string{`7:12: key must not be empty`}},
		{"reserved key", dsn + "table: t\nkey: _rev", []string{`7:12: key "_rev" is a column ptop keeps for itself; choose another name`}},
		{
			"key among columns", dsn + "table: t\nkey: id\ncolumns: {id: text}",
			[]string{`8:16: column "id" is the key column; the key is not listed in columns (it is text)`},
		},
		{
			"column named doc", dsn + "table: t\ncolumns: {doc: jsonb}",
			[]string{`7:16: column "doc" holds the record's other fields; name the column differently, or set doc: false`},
		},
		{
			"position column", dsn + "table: t\ncolumns:\n  _seq: int",
			[]string{`8:9: column "_seq" is a column ptop keeps for itself (the revision and feed position); choose another name`},
		},
		{
			"empty type", dsn + "table: t\ncolumns: {name: \"\", n: int}",
			[]string{`7:16: column "name" needs a type, such as text, integer, timestamptz or jsonb`},
		},
		{
			"null type", dsn + "table: t\ncolumns: {name: }",
			[]string{`7:16: column "name" needs a type, such as text, integer, timestamptz or jsonb`},
		},
		{
			"injected type", dsn + "table: t\ncolumns: {name: \"text); DROP TABLE x; --\"}",
			[]string{`7:16: column "name": invalid type "text); DROP TABLE x; --": use a type name such as text, numeric(10,2), timestamptz or text[]`},
		},
		{"empty column name", dsn + "table: t\ncolumns: {\"\": text}", []string{`7:16: a column name must not be empty`}},
		{"column twice", dsn + "table: t\ncolumns: {a: text, a: int}", []string{`7:16: column "a" is listed twice`}},
		{"columns a list", dsn + "table: t\ncolumns: [a, b]", []string{`7:16: expected a mapping, got a list`}},
		{"doc not bool", dsn + "table: t\ndoc: maybe", []string{`7:12: expected true or false, got "maybe"`}},
		{"zero timeout", dsn + "table: t\ntimeout: 0s", []string{`7:16: timeout must be positive, got 0s`}},
		{"unknown key", dsn + "table: t\ncolumn: {a: text}", []string{`7:7: unknown key "column" (did you mean "columns"?)`}},
		{"several", "table: a.b.c\ncreate: yes please\ncolumns: {x: \"\"}", []string{
			`5:7: missing required key "dsn"`,
			`5:14: invalid table "a.b.c": use name or schema.name`,
			`6:15: expected true or false, got "yes please"`,
			`7:16: column "x" needs a type, such as text, integer, timestamptz or jsonb`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, path, err := loadFile(t, sinkHead+indent(tt.src, "      "))
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

func TestCheckpointConfigErrors(t *testing.T) {
	for _, tt := range []struct{ src, want string }{
		{"checkpoint:\n  postgres: {table: t}\n", `6:13: missing required key "dsn"`},
		{"checkpoint:\n  postgres: {dsn: \"postgres://h:x/db\"}\n", `6:19: invalid dsn: invalid port`},
		{"checkpoint:\n  postgres: {dsn: \"postgres://h/db\", table: \"a.b.c\"}\n", `6:45: invalid table "a.b.c": use name or schema.name`},
		{"checkpoint:\n  postgres: {dsn: \"postgres://h/db\", table: tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt}\n", `6:45: table name "tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt" is 64 bytes; it may have at most 63`},
		{"checkpoint:\n  postgres: {dsn: \"postgres://h/db\", tabel: x}\n", `6:38: unknown key "tabel" (did you mean "table"?)`},
	} {
		_, path, err := loadFile(t, "name: p\nsource: {file: {path: x}}\nsinks:\n  - file: {path: y}\n"+tt.src)
		if err == nil || err.Error() != path+":"+tt.want {
			t.Errorf("%s: error\n%v\nwant\n%s:%s", tt.src, err, path, tt.want)
		}
	}
}

func TestConfigValid(t *testing.T) {
	t.Setenv("PG_DSN", "postgres://u:p@db.example:5433/cases?sslmode=disable")
	spec, _, err := loadFile(t, sinkHead+indent(`dsn: ${PG_DSN}
table: reports.cases
key: case_id
columns:
  name: text
  opened_on: timestamp with time zone
  amount: numeric(10, 2)
  tags: text[]
doc: false
create: true
timeout: 5s`, "      ")+"checkpoint:\n  postgres: {dsn: \"${PG_DSN}\"}\n")
	if err != nil {
		t.Fatal(err)
	}
	s := spec.Outputs()[0].Sink.(*Sink)
	want := Config{
		DSN: "postgres://u:p@db.example:5433/cases?sslmode=disable", Table: "reports.cases", Key: "case_id",
		Columns: map[string]string{"name": "text", "opened_on": "timestamp with time zone", "amount": "numeric(10, 2)", "tags": "text[]"},
		Create:  true, Timeout: engine.Duration(5 * time.Second),
		columnOrder: []string{"name", "opened_on", "amount", "tags"},
	}
	if !reflect.DeepEqual(s.cfg, want) {
		t.Errorf("config\n%#v\nwant\n%#v", s.cfg, want)
	}
	if got := strings.Join(s.columns, ","); got != "name,opened_on,amount,tags" {
		t.Errorf("columns in order %s", got)
	}
	if s.table.Sanitize() != `"reports"."cases"` {
		t.Errorf("table %s", s.table.Sanitize())
	}
	cps, ok := spec.Checkpoints().(*Checkpoints)
	if !ok || cps.table.Sanitize() != `"ptop_checkpoints"` {
		t.Fatalf("checkpoint store %#v", spec.Checkpoints())
	}
	if !s.SharesStore(cps) {
		t.Error("does not share the store of the same DSN")
	}

	// Defaults.
	spec, _, err = loadFile(t, sinkHead+"      dsn: host=h\n      table: t\n")
	if err != nil {
		t.Fatal(err)
	}
	s = spec.Outputs()[0].Sink.(*Sink)
	want = Config{DSN: "host=h", Table: "t", Key: "_id", Doc: true, Timeout: engine.Duration(DefaultTimeout)}
	if !reflect.DeepEqual(s.cfg, want) {
		t.Errorf("defaults\n%#v\nwant\n%#v", s.cfg, want)
	}
}
