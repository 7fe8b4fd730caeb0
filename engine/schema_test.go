package engine_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"

	"github.com/dimagi/ptop/engine"
)

// compileSchema compiles engine.Schema() with a draft-07 validator, which
// checks it against the draft's meta-schema first.
func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	b, err := json.Marshal(engine.Schema())
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft7)
	if err := c.AddResource("pillow.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("pillow.schema.json")
	if err != nil {
		t.Fatalf("the schema does not compile: %v", err)
	}
	return sch
}

// yamlInstance turns YAML into what a validator sees: JSON.
func yamlInstance(t *testing.T, src string) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal([]byte(src), &v); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

// TestSchemaAgreesWithLoader checks the schema's verdict on pillows against
// the loader's: what the loader accepts, the schema accepts, and the
// schema rejects these kinds of mistakes as the loader does.
func TestSchemaAgreesWithLoader(t *testing.T) {
	t.Setenv("PTOP_TEST_SIZE", "5")
	t.Setenv("PTOP_TEST_BOOL", "true")
	sch := compileSchema(t)
	const base = "name: p\nsource: {file: {path: in.jsonl}}\nsinks: [{file: {path: out.jsonl}}]\n"
	for _, tc := range []struct {
		name, src string
		ok        bool
	}{
		{"minimal", base, true},
		{"everything", `name: case-search.v2
description: all keys
source:
  couchdb:
    url: http://127.0.0.1:5984
    db: cases
    since: 0
    selector: {doc_type: CommCareCase, n: {$gt: 3}}
    heartbeat: 10s
    checkpoint_id: x
    errors_db: errs
filter: doc.x == 1
transform: |
  function transform(doc) { return doc; }
transform_timeout: 500ms
batch: {size: 10, wait: 2}
include_design: true
skip_deletes: false
workers: 2
max_doc_bytes: 100000
errors: {max_attempts: 3, backoff: 1m30s, max_backoff: 1h, poll: 1.5}
sinks:
  - file: {path: a.jsonl, sync: true}
  - file: {path: b.jsonl}
`, true},
		{"variables stand for numbers, booleans and durations", base + "batch: {size: \"${PTOP_TEST_SIZE}\", wait: \"${PTOP_TEST_UNSET:-1s}\"}\ninclude_design: \"${PTOP_TEST_BOOL}\"\n", true},
		{"unknown key", base + "batchh: {size: 1}\n", false},
		{"unknown key in a block", base + "batch: {sise: 1}\n", false},
		{"unknown key in a source", "name: p\nsource: {file: {path: x, pth: y}}\nsinks: [{file: {path: y}}]\n", false},
		{"wrong type", base + "batch: {size: many}\n", false},
		{"wrong type of boolean", base + "skip_deletes: [yes]\n", false},
		{"bad duration", base + "transform_timeout: 10 seconds\n", false},
		{"missing required key", "name: p\nsource: {file: {path: x}}\n", false},
		{"missing required key of a sink", "name: p\nsource: {file: {path: x}}\nsinks: [{file: {sync: true}}]\n", false},
		{"unknown source type", "name: p\nsource: {kafka: {}}\nsinks: [{file: {path: y}}]\n", false},
		{"two source types", "name: p\nsource: {file: {path: x}, couchdb: {url: http://h, db: d}}\nsinks: [{file: {path: y}}]\n", false},
		{"no sinks", "name: p\nsource: {file: {path: x}}\nsinks: []\n", false},
		{"bad name", "name: a b\nsource: {file: {path: x}}\nsinks: [{file: {path: y}}]\n", false},
		{"transform and transform_file", base + "transform: 'function transform(d) { return d; }'\ntransform_file: t.js\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			schemaErr := sch.Validate(yamlInstance(t, tc.src))
			if (schemaErr == nil) != tc.ok {
				t.Errorf("schema: ok=%v, want %v: %v", schemaErr == nil, tc.ok, schemaErr)
			}
			_, loadErr := engine.Load(putFile(t, t.TempDir(), "p.yaml", tc.src))
			if (loadErr == nil) != tc.ok {
				t.Errorf("loader: ok=%v, want %v: %v", loadErr == nil, tc.ok, loadErr)
			}
		})
	}
}

func TestSchemaShape(t *testing.T) {
	s := engine.Schema()
	if s["$schema"] != engine.SchemaDraft || s["additionalProperties"] != false {
		t.Errorf("root: %v %v", s["$schema"], s["additionalProperties"])
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	js := string(b)
	for _, want := range []string{
		`"required":["name","source","sinks"]`,
		`"source.couchdb":`, `"source.file":`, `"sink.file":`,
		`"$ref":"#/definitions/source.couchdb"`,
		`"size":{"anyOf":[{"type":"integer"},{"pattern":"\\$\\{","type":"string"}],"default":500,"description":`,
		`"default":"10s"`, // the couchdb source's heartbeat, from its SetDefaults
		`"filter":{"description":"An expr-lang expression`,
		`"type":["string","number","boolean"]}`,
	} {
		if !strings.Contains(js, want) {
			t.Errorf("schema lacks %s", want)
		}
	}
	// Every object says which keys it allows.
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if _, ok := v["properties"]; ok {
				if v["additionalProperties"] != false {
					t.Errorf("%s: properties without additionalProperties: false", path)
				}
			}
			for k, x := range v {
				walk(path+"/"+k, x)
			}
		case []any:
			for _, x := range v {
				walk(path+"/[]", x)
			}
		}
	}
	walk("#", s)
}
