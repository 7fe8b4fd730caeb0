package couchdb

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
)

// Error paths of the error store and ReadDoc, against a fake server.

// uriServer answers every request with handle, and keeps the requests'
// methods and raw URIs.
type uriServer struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []string // "METHOD URI"
}

func newURIServer(t *testing.T, handle func(w http.ResponseWriter, r *http.Request)) *uriServer {
	u := &uriServer{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Method+" "+r.RequestURI)
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		handle(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *uriServer) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.reqs...)
}

func statusHandler(status int) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) { writeError(w, status) }
}

func TestFakeErrorStoreErrors(t *testing.T) {
	const pass = "s3cr3t-pw"
	ctx := context.Background()
	for _, tt := range []struct {
		name      string
		status    int
		permanent bool
	}{
		{"unauthorized", http.StatusUnauthorized, true},
		{"forbidden", http.StatusForbidden, true},
		{"server error", http.StatusInternalServerError, false},
		{"unavailable", http.StatusServiceUnavailable, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := newURIServer(t, statusHandler(tt.status))
			src := newTestSource(t, Config{URL: strings.Replace(u.srv.URL, "http://", "http://me:"+pass+"@", 1), DB: "db"})
			es, err := src.ErrorStore()
			if err != nil {
				t.Fatal(err)
			}
			check := func(what string, err error) {
				t.Helper()
				switch {
				case err == nil:
					t.Errorf("%s: no error", what)
				case engine.IsPermanent(err) != tt.permanent:
					t.Errorf("%s: permanent %v, want %v: %v", what, engine.IsPermanent(err), tt.permanent, err)
				case strings.Contains(err.Error(), pass):
					t.Errorf("%s: the password is in the error: %v", what, err)
				case !strings.Contains(err.Error(), "/ptop_errors"):
					t.Errorf("%s: the error does not name the database: %v", what, err)
				}
			}
			_, err = es.Record(ctx, failure("p", "a", time.Now()), backoff)
			check("Record", err)
			_, err = es.List(ctx, "p")
			check("List", err)
			check("Clear", es.Clear(ctx, "p", "a"))
			_, err = es.Retry(ctx, "p", nil)
			check("Retry", err)
			_, err = es.Purge(ctx, "p", []string{"a"})
			check("Purge", err)
			_, err = src.ReadDoc(ctx, "a")
			if err == nil || engine.IsPermanent(err) != tt.permanent || strings.Contains(err.Error(), pass) {
				t.Errorf("ReadDoc: %v", err)
			}
		})
	}
}

func TestFakeErrorStoreCreateForbidden(t *testing.T) {
	// The entry is not there, the database neither, and creating it is
	// not allowed.
	u := newURIServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/errs" {
			writeError(w, http.StatusForbidden)
			return
		}
		writeError(w, http.StatusNotFound)
	})
	src := newTestSource(t, Config{URL: u.srv.URL, DB: "db", ErrorsDB: "errs"})
	es, _ := src.ErrorStore()
	_, err := es.Record(context.Background(), failure("p", "a", time.Now()), backoff)
	if !engine.IsPermanent(err) || !strings.Contains(err.Error(), `create database "errs" as an admin`) {
		t.Errorf("Record: %v", err)
	}
	want := []string{"GET /errs/p:a", "PUT /errs/p:a", "PUT /errs"}
	if got := u.requests(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestFakePathPrefix(t *testing.T) {
	// Behind a proxy at /couch/, an escaped '/' of a document id stays
	// escaped.
	u := newURIServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.RequestURI == "/couch/db/a%2Fb":
			w.Write([]byte(`{"_id":"a/b","_rev":"1-x"}`))
		case r.Method == http.MethodGet && r.RequestURI == "/couch/db/_design/app":
			w.Write([]byte(`{"_id":"_design/app","_rev":"2-y"}`))
		case r.Method == http.MethodGet && strings.HasPrefix(r.RequestURI, "/couch/errs/p:a%2Fb"):
			writeError(w, http.StatusNotFound)
		case r.Method == http.MethodPut && r.RequestURI == "/couch/errs/p:a%2Fb":
			w.WriteHeader(http.StatusCreated)
			w.Write([]byte(`{"ok":true,"id":"p:a/b","rev":"1-z"}`))
		default:
			writeError(w, http.StatusBadRequest)
		}
	})
	src := newTestSource(t, Config{URL: u.srv.URL + "/couch/", DB: "db", ErrorsDB: "errs"})
	ctx := context.Background()
	for id, rev := range map[string]string{"a/b": "1-x", "_design/app": "2-y"} {
		c, err := src.ReadDoc(ctx, id)
		if err != nil || c.Rev != rev || c.ID != id {
			t.Errorf("ReadDoc(%q): %+v, %v\n%s", id, c, err, strings.Join(u.requests(), "\n"))
		}
	}
	es, _ := src.ErrorStore()
	if _, err := es.Record(ctx, failure("p", "a/b", time.Now()), backoff); err != nil {
		t.Errorf("Record: %v\n%s", err, strings.Join(u.requests(), "\n"))
	}
}

func TestFakeReadDocOpenRevs(t *testing.T) {
	// Conflicting deleted leaves (CouchDB can have several): the highest
	// generation wins, then the highest revision; an empty answer is a
	// document never written.
	var openRevs string
	u := newURIServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/db":
			w.Write([]byte(`{"db_name":"db"}`))
		case r.URL.Query().Get("open_revs") == "all":
			w.Write([]byte(openRevs))
		default:
			writeError(w, http.StatusNotFound)
		}
	})
	src := newTestSource(t, Config{URL: u.srv.URL, DB: "db"})
	for _, tt := range []struct {
		answer  string
		rev     string
		deleted bool
	}{
		{`[{"ok":{"_id":"d","_rev":"2-a","_deleted":true}},{"ok":{"_id":"d","_rev":"10-a","_deleted":true}},{"ok":{"_id":"d","_rev":"3-z","_deleted":true}}]`, "10-a", true},
		{`[{"ok":{"_id":"d","_rev":"3-a","_deleted":true}},{"ok":{"_id":"d","_rev":"3-b","_deleted":true}}]`, "3-b", true},
		{`[{"ok":{"_id":"d","_rev":"5-a","_deleted":true}},{"ok":{"_id":"d","_rev":"2-b","x":1}}]`, "2-b", false},
		{`[]`, "", true},
		{`[{"missing":"1-a"}]`, "", true},
	} {
		openRevs = tt.answer
		c, err := src.ReadDoc(context.Background(), "d")
		if err != nil || c.Rev != tt.rev || c.Deleted != tt.deleted || c.ID != "d" {
			t.Errorf("%s: %+v, %v", tt.answer, c, err)
		}
	}
}

func TestErrorStoreInvalidName(t *testing.T) {
	src := newTestSource(t, Config{URL: "http://h:5984", DB: "db", ErrorsDB: "Bad Name"})
	if _, err := src.ErrorStore(); err == nil || !strings.Contains(err.Error(), `"Bad Name"`) {
		t.Errorf("ErrorStore: %v", err)
	}
	src = newTestSource(t, Config{URL: "http://h:5984", DB: "db"})
	es, err := src.ErrorStore()
	if err != nil || es.(*errorStore).db != DefaultErrorsDB {
		t.Errorf("ErrorStore: %v, %v", es, err)
	}
}

func TestClipError(t *testing.T) {
	if got := clipError("short"); got != "short" {
		t.Errorf("clipError(short) = %q", got)
	}
	long := strings.Repeat("☃", maxErrorBytes) // 3 bytes each
	got := clipError(long)
	if !strings.HasSuffix(got, " more bytes)") || len(got) > maxErrorBytes+30 || !strings.HasPrefix(got, "☃☃") {
		t.Errorf("clipError: %d bytes, ends %q", len(got), got[len(got)-30:])
	}
	if i := strings.Index(got, "…"); i < 0 || !strings.HasSuffix(got[:i], "☃") {
		t.Errorf("clipError cut a character")
	}
}
