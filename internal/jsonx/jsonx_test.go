package jsonx

import (
	stdjson "encoding/json"
	"strings"
	"testing"
)

// AppendString writes what encoding/json writes (without HTML escaping),
// invalid UTF-8 included.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a\"b\\c", "\x00\u2028", "\xff\xfe", "日本"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var want strings.Builder
		enc := stdjson.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		enc.Encode(s)
		if got := string(AppendString(nil, s)); got != strings.TrimSuffix(want.String(), "\n") {
			t.Fatalf("AppendString(%q) = %s, want %s", s, got, want.String())
		}
	})
}
