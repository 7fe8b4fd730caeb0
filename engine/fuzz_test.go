package engine_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/dimagi/ptop/engine"
)

// FuzzParse feeds arbitrary bytes to the pillow loader: it must report
// problems, never panic.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/invalid/*.yaml")
	valid, _ := filepath.Glob("../pipelines/*.yaml")
	for _, p := range append(seeds, valid...) {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("name: a\nsource: {file: {path: x}}\nsinks: [{file: {path: y}}]\ntransform: |\n  function transform(doc) { return doc; }\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := engine.Parse(filepath.Join(dir, "fuzz.yaml"), data)
		if err == nil && s == nil {
			t.Fatal("no spec and no error")
		}
	})
}
