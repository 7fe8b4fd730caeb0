package component_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Sources and sinks are written against package component alone: the
// engine, which runs them, is not theirs to import (their tests may).
func TestBuiltinsImportComponentNotEngine(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "builtins", "*", "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no builtins found: %v", err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(fset, f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if path == "github.com/dimagi/ptop/engine" {
				t.Errorf("%s imports the engine; use package component", f)
			}
		}
	}
}
