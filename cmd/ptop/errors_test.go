package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

// TestErrorsWrongPassword: with credentials the server refuses, `ptop
// errors` prints the 401 and no count: it does not know of any failed
// changes, and must not say there are none.
func TestErrorsWrongPassword(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":"unauthorized","reason":"Name or password is incorrect."}`)
	}))
	defer srv.Close()
	dir := t.TempDir()
	write(t, filepath.Join(dir, "p.yaml"), fmt.Sprintf(`name: p
source:
  couchdb: {url: "http://admin:wrong@%s", db: db}
sinks:
  - file: {path: out.jsonl}
`, strings.TrimPrefix(srv.URL, "http://")))
	for _, args := range [][]string{{"errors", "--dir", dir}, {"errors", "p", "--dir", dir}, {"errors", "purge", "--dir", dir}} {
		code, stdout, stderr := ptop(t, args...)
		if code != 1 || stdout != "" || !strings.Contains(stderr, "unauthorized (401)") || strings.Contains(stderr, "wrong") {
			t.Errorf("ptop %v: exit %d\nstdout %q\nstderr %q", args, code, stdout, stderr)
		}
	}
}
