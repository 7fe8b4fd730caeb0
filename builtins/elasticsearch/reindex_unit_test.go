package elasticsearch

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
)

// Reindex support without a server (see reindex_test.go for the tests
// against real ones).

func TestRebuildTargetNeedsMapping(t *testing.T) {
	_, _, err := newTestSink(t, Config{URL: "http://127.0.0.1:1", Index: "plain"}, t.TempDir()).RebuildTarget(testCtx(t), false)
	if err == nil || !strings.Contains(err.Error(), "a reindex needs mapping_file") {
		t.Fatalf("RebuildTarget without a mapping: %v", err)
	}
	if _, err := newTestSink(t, Config{URL: "http://127.0.0.1:1", Index: "plain"}, t.TempDir()).Promote(testCtx(t), false); err == nil {
		t.Fatal("Promote without RebuildTarget succeeded")
	}
}

func TestChooseTarget(t *testing.T) {
	s := &Sink{physical: "a-12345678"}
	const now = 1700000000
	for _, tc := range []struct {
		name     string
		points   []string
		existing map[string]bool
		want     string
	}{
		{"no alias", nil, nil, "a-12345678"},
		{"mapping changed", []string{"a-87654321"}, nil, "a-12345678"},
		{"mapping changed, resumed", []string{"a-87654321"}, map[string]bool{"a-12345678": false}, "a-12345678"},
		{"mapping changed back to a kept index", []string{"a-87654321"}, map[string]bool{"a-12345678": true}, "a-12345678-r1700000000"},
		{"same mapping", []string{"a-12345678"}, map[string]bool{"a-12345678": false}, "a-12345678-r1700000000"},
		{"same mapping, resumed", []string{"a-12345678"}, map[string]bool{"a-12345678": false, "a-12345678-r5": false, "a-12345678-r7": false, "a-12345678-r9": true}, "a-12345678-r7"},
		{"after a same-mapping reindex", []string{"a-12345678-r5"}, map[string]bool{"a-12345678-r5": false}, "a-12345678"},
		{"name taken", []string{"a-12345678"}, map[string]bool{"a-12345678": false, "a-12345678-r1700000000": true}, "a-12345678-r1700000001"},
	} {
		if got := s.chooseTarget(tc.points, tc.existing, time.Unix(now, 0)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	for name, want := range map[string]bool{"a-12345678": true, "a-12345678-r1": true, "a-12345678-r": false, "a-12345678-rx": false, "a-12345678-r1-x": false, "a-87654321": false, "a-12345678x": false} {
		if got := s.ownsIndex(name); got != want {
			t.Errorf("ownsIndex(%s) = %v", name, got)
		}
	}
}

// A server that does not know require_alias (before 7.10) is written
// through the alias without it.
func TestFakeRequireAliasUnknown(t *testing.T) {
	var bulks []string
	var physical string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/_alias/cases":
			fmt.Fprintf(w, `{%q:{"aliases":{"cases":{}}}}`, physical)
		case strings.HasSuffix(r.URL.Path, "/_bulk"):
			bulks = append(bulks, r.URL.Path+"?"+r.URL.RawQuery)
			if r.URL.Query().Has("require_alias") {
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprint(w, `{"error":{"type":"illegal_argument_exception","reason":"request [/cases/_bulk] contains unrecognized parameter: [require_alias]"},"status":400}`)
				return
			}
			fmt.Fprint(w, `{"errors":false}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{}`)
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	s := newTestSink(t, Config{URL: srv.URL, Index: "cases", MappingFile: writeFile(t, dir, "m.json", `{}`)}, dir)
	physical = s.Index()
	if err := s.Open(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.Write(testCtx(t), []engine.Record{idx("a", "1-a", map[string]any{})}); err != nil {
			t.Fatal(err)
		}
	}
	const with = "/cases/_bulk?require_alias=true&filter_path=errors,items.*.status,items.*.error"
	const without = "/cases/_bulk?filter_path=errors,items.*.status,items.*.error"
	if want := []string{with, without, without}; strings.Join(bulks, " ") != strings.Join(want, " ") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(bulks, "\n"), strings.Join(want, "\n"))
	}
}
