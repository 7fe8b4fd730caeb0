package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/dimagi/ptop/engine"
)

// cmdSchema prints the JSON Schema of a pillow file, for editors: it is
// built from the loader's own definitions and the registered sources,
// sinks and checkpoint stores. With --reference it writes the same as
// Markdown pages instead (docs/reference).
func cmdSchema(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("schema", "schema > .ptop.schema.json | schema --reference DIR", stderr)
	refDir := fs.String("reference", "", "write the Markdown reference pages into `DIR` instead")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 0 {
		fmt.Fprintln(stderr, "ptop schema: no arguments expected")
		return 2
	}
	if *refDir != "" {
		if err := writeReference(*refDir, referencePages(engine.Schema())); err != nil {
			fmt.Fprintln(stderr, "ptop schema:", err)
			return 1
		}
		return 0
	}
	e := json.NewEncoder(stdout)
	e.SetEscapeHTML(false)
	e.SetIndent("", "  ")
	if err := e.Encode(engine.Schema()); err != nil {
		fmt.Fprintln(stderr, "ptop schema:", err)
		return 1
	}
	return 0
}
