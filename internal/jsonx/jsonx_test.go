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

func TestAppendObjectWithout(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"_id":"a","n":12345678901234567890123,"b":{"_id":1}}`, `{"n":12345678901234567890123,"b":{"_id":1}}`},
		{` { "z" : [1, "]}\"" , {"a":2}], "_id" : "x\"y" , "a": null } `, `{"z":[1, "]}\"" , {"a":2}],"a":null}`},
		{`{"_id":"a"}`, `{}`},
		{`{}`, `{}`},
		{`{"x":9007199254740993,"y":-1.5e300,"t":true}`, `{"x":9007199254740993,"y":-1.5e300,"t":true}`},
	} {
		got, ok := AppendObjectWithout([]byte("pre"), []byte(tc.in), "_id")
		if !ok || string(got) != "pre"+tc.want {
			t.Errorf("%s: got %s %v, want %s", tc.in, got, ok, tc.want)
		}
	}
	for _, bad := range []string{`[1]`, `"s"`, `{"a":}`, `{"a":1`, `{"a" 1}`} {
		if got, ok := AppendObjectWithout([]byte("pre"), []byte(bad), "_id"); ok || string(got) != "pre" {
			t.Errorf("%s: got %s %v", bad, got, ok)
		}
	}
}
