package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"

	"github.com/dimagi/ptop/engine"
)

// pillowSchema compiles what `ptop schema` prints, as an editor would.
func pillowSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	code, out, errOut := ptop(t, "schema")
	if code != 0 || errOut != "" {
		t.Fatalf("ptop schema: exit %d: %s", code, errOut)
	}
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(out))
	if err != nil {
		t.Fatalf("ptop schema printed no JSON: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft7)
	if err := c.AddResource(".ptop.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile(".ptop.schema.json")
	if err != nil {
		t.Fatalf("the schema is not valid draft-07: %v", err)
	}
	return sch
}

// yamlFileAsJSON reads a YAML file as a JSON Schema validator sees it.
func yamlFileAsJSON(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
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

func TestSchemaValidatesShippedPipelines(t *testing.T) {
	sch := pillowSchema(t)
	files, err := filepath.Glob("../../pipelines/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		if !engine.IsPillowFile(filepath.Base(f)) {
			continue
		}
		n++
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(yamlFileAsJSON(t, data)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if n < 3 {
		t.Fatalf("only %d pillows in pipelines/", n)
	}
}

func TestSchemaRejectsBadPillows(t *testing.T) {
	sch := pillowSchema(t)
	good, err := os.ReadFile("../../pipelines/case-search.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, old, new, want string }{
		{"unknown key", "heartbeat: 10s", "heartbeat: 10s\n    hearbeat: 5s", "hearbeat"},
		{"unknown top-level key", "batch:", "bach: {size: 1}\nbatch:", "bach"},
		{"wrong type", "size: 500", "size: lots", "size"},
		{"bad duration", "wait: 100ms", "wait: a second", "wait"},
		{"unknown sink type", "- file:", "- s3:", "sinks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := strings.Replace(string(good), tc.old, tc.new, 1)
			if bad == string(good) {
				t.Fatalf("%q is not in case-search.yaml", tc.old)
			}
			err := sch.Validate(yamlFileAsJSON(t, []byte(bad)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want an error about %s, got %v", tc.want, err)
			}
		})
	}
}

func TestSchemaCommand(t *testing.T) {
	if code, _, errOut := ptop(t, "schema", "extra"); code != 2 || !strings.Contains(errOut, "no arguments") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	_, out, _ := ptop(t, "schema")
	if !strings.Contains(out, `"$schema": "http://json-schema.org/draft-07/schema#"`) || strings.Contains(out, `\u003c`) {
		t.Errorf("schema:\n%.400s", out)
	}
}
