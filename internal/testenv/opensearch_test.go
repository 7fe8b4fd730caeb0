//go:build unix

package testenv

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

func TestOpenSearchShared(t *testing.T) {
	t.Parallel()
	start := time.Now()
	s := StartOpenSearch(t)
	t.Logf("%s %s ready in %v at %s", s.Dist, s.Version, time.Since(start).Round(time.Millisecond), s.URL)
	if !strings.HasPrefix(s.URL, "http://127.0.0.1:") || s.Port == 0 || s.TransportPort == 0 {
		t.Fatalf("URL %q, ports %d/%d", s.URL, s.Port, s.TransportPort)
	}
	if !strings.HasPrefix(s.Version, "2.") {
		t.Errorf("version %q, want 2.x", s.Version)
	}
	if again := StartOpenSearch(t); again != s {
		t.Error("a second StartOpenSearch started another server")
	}
	if status, body := s.Do(t, http.MethodPut, "/testenv-shared/_doc/a%2Fb", map[string]any{"n": 1}); status != http.StatusCreated {
		t.Fatalf("put: HTTP %d: %s", status, body)
	}
	src, version, found := s.GetDoc(t, "testenv-shared", "a/b")
	if !found || src["n"] != float64(1) || version != 1 {
		t.Fatalf("get: %v %d %v", src, version, found)
	}
	if n := s.Count(t, "testenv-shared"); n != 1 {
		t.Fatalf("count %d", n)
	}
	if _, _, found := s.GetDoc(t, "testenv-shared", "missing"); found {
		t.Fatal("a missing document was found")
	}
}

func TestOpenSearchOwnRestart(t *testing.T) {
	Integration(t, "starts a search server")
	t.Parallel()
	var dir string
	t.Run("server", func(t *testing.T) {
		s := StartSearch(t, SearchOptions{Own: true})
		dir = s.Dir
		if status, body := s.Do(t, http.MethodPut, "/keep/_doc/1?refresh=true", map[string]any{"n": 1}); status != http.StatusCreated {
			t.Fatalf("put: HTTP %d: %s", status, body)
		}
		s.Stop(t)
		if s.Running() {
			t.Fatal("running after Stop")
		}
		port := s.Port
		start := time.Now()
		s.Restart(t)
		t.Logf("restarted in %v", time.Since(start).Round(time.Millisecond))
		if s.Port != port || !s.Running() {
			t.Fatalf("port %d (was %d), running %v", s.Port, port, s.Running())
		}
		if _, _, found := s.GetDoc(t, "keep", "1"); !found {
			t.Fatal("the document did not survive the restart")
		}
		s.Kill(t)
		if s.Running() {
			t.Fatal("running after Kill")
		}
	})
	if _, err := os.Stat(dir); dir == "" || !os.IsNotExist(err) {
		t.Errorf("scratch dir %q not removed after the test: %v", dir, err)
	}
}
