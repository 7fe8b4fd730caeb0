package main

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/dimagi/ptop/engine"
)

// The reference pages in docs/reference are what the doc tags generate:
// a changed or new key without `go generate ./cmd/ptop` fails here.
func TestReferencePagesUpToDate(t *testing.T) {
	dir := filepath.Join("..", "..", "docs", "reference")
	pages := referencePages(engine.Schema())
	for name, want := range pages {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Errorf("docs/reference/%s is stale or missing (%v): run go generate ./cmd/ptop", name, err)
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.md"))
	for _, f := range files {
		if _, ok := pages[filepath.Base(f)]; !ok {
			t.Errorf("docs/reference/%s describes no registered type: run go generate ./cmd/ptop", filepath.Base(f))
		}
	}
}

// Every key of a pillow file, of every source, sink and checkpoint store,
// is described once, in its doc tag.
func TestEveryKeyIsDescribed(t *testing.T) {
	s := engine.Schema()
	var missing []string
	var walk func(path string, obj map[string]any)
	walk = func(path string, obj map[string]any) {
		props, _ := obj["properties"].(map[string]any)
		for k, v := range props {
			p, _ := v.(map[string]any)
			if _, ref := p["$ref"]; ref {
				continue // a one-key alternative: described by its definition's keys
			}
			if str(p["description"]) == "" {
				missing = append(missing, path+k)
			}
			if nested := objectOf(p); nested != nil {
				walk(path+k+".", nested)
			}
		}
	}
	walk("", s)
	for name, def := range s["definitions"].(map[string]any) {
		walk(name+": ", def.(map[string]any))
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("keys without a doc tag:\n%s", strings.Join(missing, "\n"))
	}
}

func TestReferenceTypeNames(t *testing.T) {
	pages := referencePages(engine.Schema())
	for _, want := range []string{
		"| `batch.wait` | duration | `\"100ms\"` |",
		"| `workers` | integer |",
		"| `include_design` | boolean |",
		"| `sinks` | list of one-key object |",
	} {
		if !strings.Contains(pages["pillow.md"], want) {
			t.Errorf("pillow.md lacks %q", want)
		}
	}
	if !strings.Contains(pages["source-couchdb.md"], "| `url` | string |  | **Required.**") {
		t.Errorf("source-couchdb.md does not mark url required:\n%s", pages["source-couchdb.md"])
	}
}
