package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/dimagi/ptop/engine"
)

// cmdSchema prints the JSON Schema of a pillow file, for editors: it is
// built from the loader's own definitions and the registered sources,
// sinks and checkpoint stores.
func cmdSchema(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("schema", "schema > .ptop.schema.json", stderr)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 0 {
		fmt.Fprintln(stderr, "ptop schema: no arguments expected")
		return 2
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
