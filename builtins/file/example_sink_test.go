package file_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	_ "github.com/dimagi/ptop/builtins/file" // the file source
	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/engine"
)

// PrintConfig is what a pillow writes under `- print: {…}`. Fields are
// decoded strictly from YAML, with positions; Validate reports problems at
// the key that has them.
type PrintConfig struct {
	Prefix string `yaml:"prefix" doc:"printed before each record's id"`
}

// Validate implements component.Validator.
func (c *PrintConfig) Validate(ch component.Check) {
	if ch.Has("prefix") && c.Prefix == "" {
		ch.Errorf("prefix", "prefix must not be empty")
	}
}

// printSink writes one line per record to standard output.
type printSink struct{ prefix string }

func (s *printSink) Open(context.Context) error { return nil }
func (s *printSink) Close() error               { return nil }

// Write acknowledges the whole batch by returning nil; an error would make
// the engine retry it, a component.RecordErrors would reject single records.
func (s *printSink) Write(_ context.Context, records []component.Record) error {
	for _, r := range records {
		if r.Delete {
			fmt.Printf("%s%s deleted\n", s.prefix, r.ID)
			continue
		}
		fmt.Printf("%s%s %s\n", s.prefix, r.ID, r.Doc) // JSON text
	}
	return nil
}

// A sink is a type with Open, Write and Close, written against package
// component alone and registered under a name from its package's init
// (cmd/ptop imports every builtin package). The engine runs it.
// This example registers a sink that prints records, and runs a pillow
// that reads a changes dump with the file source into it.
func ExampleRegisterSink() {
	component.RegisterSink("print", func(cfg *PrintConfig, _ component.BuildContext) (component.Sink, error) {
		return &printSink{prefix: cfg.Prefix}, nil
	})

	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	feed := `{"seq":1,"id":"c1","changes":[{"rev":"1-a"}],"doc":{"_id":"c1","_rev":"1-a","type":"case","name":"Ada"}}
{"seq":2,"id":"f1","changes":[{"rev":"1-b"}],"doc":{"_id":"f1","_rev":"1-b","type":"form"}}
{"seq":3,"id":"c2","changes":[{"rev":"2-c"}],"deleted":true}
`
	feedPath := filepath.Join(dir, "feed.jsonl")
	pillow := fmt.Sprintf(`name: print-cases
source: {file: {path: %q}}
filter: doc == nil || doc.type == "case"
transform: |
  function transform(doc) { return {name: doc.name.toUpperCase()}; }
sinks:
  - print: {prefix: "case "}
`, feedPath)
	_ = os.WriteFile(feedPath, []byte(feed), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "print-cases.yaml"), []byte(pillow), 0o644)

	specs, err := engine.Load(dir)
	if err != nil {
		fmt.Println(err)
		return
	}
	p := engine.NewPillow(specs[0], engine.RunOptions{})
	if err := p.Run(context.Background()); err != nil {
		fmt.Println(err)
	}
	// Output:
	// case c1 {"name":"ADA"}
	// case c2 deleted
}
