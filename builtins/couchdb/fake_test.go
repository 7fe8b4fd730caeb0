package couchdb

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
)

// Tests of error paths and CouchDB 2+ formats against a fake server;
// everything pouchdb-server can show is tested against it instead.

// fakeCouch serves GET /db and POST /db/_changes; each feed request is
// handed to feed with its number (from 0).
type fakeCouch struct {
	t   *testing.T
	srv *httptest.Server

	mu        sync.Mutex
	updateSeq string
	dbStatus  []int // statuses to answer GET /db with, one per request; then 200
	feeds     []feedRequest
	feedSeen  chan int
	feed      func(n int, w http.ResponseWriter, r *http.Request)
}

type feedRequest struct {
	method string
	query  url.Values
	header http.Header
	body   string
}

func newFake(t *testing.T, feed func(n int, w http.ResponseWriter, r *http.Request)) *fakeCouch {
	f := &fakeCouch{t: t, updateSeq: "0", feed: feed, feedSeen: make(chan int, 100)}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCouch) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/db":
		f.mu.Lock()
		status := http.StatusOK
		if len(f.dbStatus) > 0 {
			status, f.dbStatus = f.dbStatus[0], f.dbStatus[1:]
		}
		seq := f.updateSeq
		f.mu.Unlock()
		if status != http.StatusOK {
			writeError(w, status)
			return
		}
		fmt.Fprintf(w, `{"db_name":"db","update_seq":%q}`, seq)
	case r.Method == http.MethodPost && r.URL.Path == "/db/_changes":
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		n := len(f.feeds)
		f.feeds = append(f.feeds, feedRequest{r.Method, r.URL.Query(), r.Header.Clone(), string(body)})
		f.mu.Unlock()
		f.feedSeen <- n
		f.feed(n, w, r)
	default:
		writeError(w, http.StatusNotFound)
	}
}

func writeError(w http.ResponseWriter, status int) {
	reasons := map[int]string{
		400: `{"error":"bad_request","reason":"Malformed sequence supplied in 'since' parameter."}`,
		401: `{"error":"unauthorized","reason":"Name or password is incorrect."}`,
		403: `{"error":"forbidden","reason":"You are not allowed to access this db."}`,
		404: `{"error":"not_found","reason":"Database does not exist."}`,
	}
	w.WriteHeader(status)
	if msg, ok := reasons[status]; ok {
		io.WriteString(w, msg)
	} else {
		fmt.Fprintf(w, `{"error":"unknown","reason":"status %d"}`, status)
	}
}

// url is the fake's URL with userinfo (which may be "").
func (f *fakeCouch) url(userinfo string) string {
	if userinfo == "" {
		return f.srv.URL
	}
	return strings.Replace(f.srv.URL, "://", "://"+userinfo+"@", 1)
}

// waitFeed waits for feed request n and returns it.
func (f *fakeCouch) waitFeed(n int) feedRequest {
	f.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		f.mu.Lock()
		if len(f.feeds) > n {
			req := f.feeds[n]
			f.mu.Unlock()
			return req
		}
		f.mu.Unlock()
		select {
		case <-f.feedSeen:
		case <-deadline:
			f.t.Fatalf("no feed request #%d within 10s", n)
		}
	}
}

func (f *fakeCouch) feedCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.feeds)
}

// writeLines writes lines (each followed by a newline) and flushes.
func writeLines(w http.ResponseWriter, lines ...string) {
	for _, l := range lines {
		io.WriteString(w, l+"\n")
	}
	w.(http.Flusher).Flush()
}

// hang keeps a feed open until the client goes away.
func hang(r *http.Request) { <-r.Context().Done() }

func rowLine(seq any, id string) string {
	s, _ := json.Marshal(seq)
	return fmt.Sprintf(`{"seq":%s,"id":%q,"changes":[{"rev":"1-%s"}],"doc":{"_id":%q,"_rev":"1-%s"}}`, s, id, id, id, id)
}

func TestFakeRequest(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) { hang(r) })
	src := newTestSource(t, Config{
		URL: f.url("admin:pa%2Fss"), DB: "db", Heartbeat: engine.Duration(2 * time.Second),
		Selector: map[string]any{"type": "a", "n": map[string]any{"$gt": 1}},
	})
	f.updateSeq = "9-g1AAA"
	startRun(t, src, "7-g1AAA")
	req := f.waitFeed(0)
	want := url.Values{
		"feed": {"continuous"}, "include_docs": {"true"}, "heartbeat": {"2000"}, "style": {"main_only"},
		"since": {"7-g1AAA"}, "filter": {"_selector"}, "selector": {`{"n":{"$gt":1},"type":"a"}`},
	}
	if fmt.Sprint(req.query) != fmt.Sprint(want) {
		t.Errorf("query\n%v\nwant\n%v", req.query, want)
	}
	if req.method != "POST" || req.body != `{"selector":{"n":{"$gt":1},"type":"a"}}` {
		t.Errorf("%s with body %s", req.method, req.body)
	}
	if ae := req.header.Get("Accept-Encoding"); strings.Contains(ae, "gzip") {
		t.Errorf("Accept-Encoding: %s", ae)
	}
	if ce := req.header.Get("Content-Encoding"); ce != "" {
		t.Errorf("Content-Encoding: %s", ce)
	}
	if got, want := req.header.Get("Authorization"), "Basic "+base64.StdEncoding.EncodeToString([]byte("admin:pa/ss")); got != want {
		t.Errorf("Authorization: %q, want %q", got, want)
	}
}

func TestFakeDesignFilterRequest(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) { hang(r) })
	src := newTestSource(t, Config{URL: f.url(""), DB: "db", Filter: "app/by_type", Params: map[string]string{"type": "case"}})
	startRun(t, src, "")
	req := f.waitFeed(0)
	if q := req.query; q.Get("filter") != "app/by_type" || q.Get("type") != "case" || q.Get("since") != "0" || q.Has("selector") {
		t.Errorf("query %v", q)
	}
	if a := req.header.Get("Authorization"); a != "" {
		t.Errorf("Authorization without credentials: %q", a)
	}
}

func TestFakeEnvCredentials(t *testing.T) {
	t.Setenv("COUCH_USER", "envuser")
	t.Setenv("COUCH_PASSWORD", "envpass")
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) { hang(r) })
	basic := func(up string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(up)) }

	startRun(t, newTestSource(t, Config{URL: f.url(""), DB: "db"}), "")
	if got := f.waitFeed(0).header.Get("Authorization"); got != basic("envuser:envpass") {
		t.Errorf("from the environment: %q", got)
	}
	// The URL's credentials win.
	startRun(t, newTestSource(t, Config{URL: f.url("u:p"), DB: "db"}), "")
	if got := f.waitFeed(1).header.Get("Authorization"); got != basic("u:p") {
		t.Errorf("from the URL: %q", got)
	}
}

func TestFakeStringSeqs(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			writeLines(w, rowLine("1-g1AAAAB5eJzL", "a"), "", rowLine("2-g1AAAAc\"x", "b"))
			return // the connection ends
		}
		hang(r)
	})
	f.updateSeq = "2-g1AAAAzz"
	r := startRun(t, newTestSource(t, Config{URL: f.url(""), DB: "db"}), "")
	for _, want := range []engine.Change{
		{Seq: "1-g1AAAAB5eJzL", ID: "a", Rev: "1-a"},
		{Seq: `2-g1AAAAc"x`, ID: "b", Rev: "1-b"},
	} {
		c := r.next(t)
		if c.Seq != want.Seq || c.ID != want.ID || c.Rev != want.Rev || doc(t, c)["_id"] != want.ID {
			t.Fatalf("got %+v, want %+v", c, want)
		}
	}
	if since := f.waitFeed(1).query.Get("since"); since != `2-g1AAAAc"x` {
		t.Errorf("reconnected with since %q", since)
	}
	if since := f.waitFeed(0).query.Get("since"); since != "0" {
		t.Errorf("first since %q", since)
	}
}

func TestFakeLastSeq(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			writeLines(w, rowLine("1-a", "a"), `{"last_seq":"5-abc","pending":0}`)
		}
		hang(r) // the source must reconnect on last_seq, not wait for the end
	})
	f.updateSeq = "5-abc"
	r := startRun(t, newTestSource(t, Config{URL: f.url(""), DB: "db"}), "")
	if c := r.next(t); c.Seq != "1-a" {
		t.Fatalf("got %+v", c)
	}
	if since := f.waitFeed(1).query.Get("since"); since != "5-abc" {
		t.Errorf("reconnected with since %q, want 5-abc", since)
	}
}

func TestFakeInvalidJSON(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
		writeLines(w, rowLine(1, "a"), `{"seq":2,"id":"b",`, "", rowLine(3, "c"))
		hang(r)
	})
	r := startRun(t, newTestSource(t, Config{URL: f.url(""), DB: "db"}), "")
	if c := r.next(t); c.ID != "a" || c.Seq != "1" || c.Err != nil {
		t.Fatalf("got %+v", c)
	}
	c := r.next(t)
	if c.Err == nil || c.Seq != "" || !strings.Contains(c.Err.Error(), `unreadable changes feed row "{\"seq\":2,\"id\":\"b\","`) {
		t.Fatalf("got %+v, want an unreadable row", c)
	}
	if c := r.next(t); c.ID != "c" || c.Seq != "3" {
		t.Fatalf("got %+v", c)
	}
	if n := f.feedCount(); n != 1 {
		t.Errorf("%d feed requests, want 1", n)
	}
}

func TestFakeErrorLine(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
		switch n {
		case 0:
			writeLines(w, rowLine(1, "a"), `{"error":"timeout","reason":"The request could not be processed in a reasonable amount of time."}`)
		case 1:
			writeLines(w, rowLine(2, "b"))
		}
		hang(r)
	})
	f.updateSeq = "2"
	src := newTestSource(t, Config{URL: f.url("admin:s3cret"), DB: "db"})
	var logs syncBuffer
	src.log = slog.New(slog.NewTextHandler(&logs, nil))
	r := startRun(t, src, "")
	if c := r.next(t); c.ID != "a" {
		t.Fatalf("got %+v", c)
	}
	if c := r.next(t); c.ID != "b" {
		t.Fatalf("got %+v", c)
	}
	if since := f.waitFeed(1).query.Get("since"); since != "1" {
		t.Errorf("reconnected with since %q", since)
	}
	log := logs.String()
	if !strings.Contains(log, "level=WARN") || !strings.Contains(log, "reconnecting") ||
		!strings.Contains(log, "admin:xxxxx@") || !strings.Contains(log, "The request could not be processed") {
		t.Errorf("log: %s", log)
	}
	if strings.Contains(log, "s3cret") {
		t.Errorf("the password is in the log: %s", log)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestFakeOpaqueRewindIsKept(t *testing.T) {
	// A CouchDB 2+ update sequence behind the position is only a hint: the
	// position is kept (the server rewinds unknown shards itself).
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) { hang(r) })
	f.updateSeq = "3-g1AAAAzz"
	startRun(t, newTestSource(t, Config{URL: f.url(""), DB: "db"}), "8-g1AAAAB")
	if since := f.waitFeed(0).query.Get("since"); since != "8-g1AAAAB" {
		t.Errorf("since %q, want 8-g1AAAAB", since)
	}
}

func TestFakeStall(t *testing.T) {
	start := time.Now()
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			writeLines(w, rowLine(1, "a"))
		} else {
			writeLines(w, "")
		}
		hang(r) // silent: no heartbeats
	})
	f.updateSeq = "1"
	r := startRun(t, newTestSource(t, Config{URL: f.url(""), DB: "db", Heartbeat: engine.Duration(100 * time.Millisecond)}), "")
	if c := r.next(t); c.ID != "a" {
		t.Fatalf("got %+v", c)
	}
	if since := f.waitFeed(1).query.Get("since"); since != "1" {
		t.Errorf("reconnected with since %q", since)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("reconnected after %v, before 3 heartbeats", d)
	}
}

func TestFakeSlowConsumerIsNoStall(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
		writeLines(w, rowLine(1, "a"), rowLine(2, "b"))
		for {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
				writeLines(w, "")
			}
		}
	})
	src := newTestSource(t, Config{URL: f.url(""), DB: "db", Heartbeat: engine.Duration(100 * time.Millisecond)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan engine.Change) // unbuffered: Run waits for each read
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, "", out) }()
	f.waitFeed(0)
	time.Sleep(time.Second) // the source waits on out, far longer than 3 heartbeats
	for _, want := range []string{"a", "b"} {
		select {
		case c := <-out:
			if c.ID != want {
				t.Fatalf("got %s, want %s", c.ID, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no change")
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := f.feedCount(); n != 1 {
		t.Errorf("%d feed requests: a slow consumer was taken for a stall", n)
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("Run returned %v", err)
	}
}

func TestFakeRetriesServerErrors(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			writeError(w, http.StatusServiceUnavailable)
			return
		}
		writeLines(w, rowLine(1, "a"))
		hang(r)
	})
	f.dbStatus = []int{500, 502}
	r := startRun(t, newTestSource(t, Config{URL: f.url(""), DB: "db"}), "")
	if c := r.next(t); c.ID != "a" {
		t.Fatalf("got %+v", c)
	}
	if n := f.feedCount(); n != 2 {
		t.Errorf("%d feed requests, want 2", n)
	}
}

func TestFakeFatal(t *testing.T) {
	const creds = "admin:s3cret"
	tests := []struct {
		name       string
		dbStatus   int // for GET /db, 0 for 200
		feedStatus int // for the feed
		since      string
		want       string // after "couchdb URL/db: "
	}{
		{"wrong password", 401, 0, "0", "looking up the database: unauthorized (401): check the credentials in the url, or COUCH_USER and COUCH_PASSWORD: Unauthorized: Name or password is incorrect."},
		{"wrong password on the feed", 0, 401, "0", "opening the changes feed: unauthorized (401): check the credentials in the url, or COUCH_USER and COUCH_PASSWORD: Unauthorized: Name or password is incorrect."},
		{"forbidden", 403, 0, "0", "looking up the database: forbidden (403): the user may not read this database: Forbidden: You are not allowed to access this db."},
		{"missing database", 404, 0, "0", `database "db" does not exist: Not Found: Database does not exist.`},
		{"bare integer since", 0, 400, "2", `opening the changes feed: the server rejected the request (since "2"): Bad Request: Malformed sequence supplied in 'since' parameter.; CouchDB 2+ takes no bare integer but "0": use "0", now, or a sequence id the server gave ("42-g1AAAA…")`},
		{"bad since", 0, 400, "2-x", `opening the changes feed: the server rejected the request (since "2-x"): Bad Request: Malformed sequence supplied in 'since' parameter.`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if tt.feedStatus != 0 {
					writeError(w, tt.feedStatus)
					return
				}
				hang(r)
			})
			f.updateSeq = "9"
			if tt.dbStatus != 0 {
				f.dbStatus = []int{tt.dbStatus}
			}
			r := startRun(t, newTestSource(t, Config{URL: f.url(creds), DB: "db"}), tt.since)
			err := r.wait(t, 5*time.Second)
			want := "couchdb " + f.url("admin:xxxxx") + "/db: " + tt.want
			if err == nil || err.Error() != want {
				t.Fatalf("Run returned\n%v\nwant\n%s", err, want)
			}
		})
	}
}

func TestFakeCheckpointErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		writeError(w, http.StatusUnauthorized)
	}))
	defer srv.Close()
	u := strings.Replace(srv.URL, "://", "://admin:s3cret@", 1)
	src := newTestSource(t, Config{URL: u, DB: "db"})
	_, err := src.LoadCheckpoint(context.Background(), "p")
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "unauthorized (401)") {
		t.Errorf("load: %v", err)
	}
	err = src.SaveCheckpoint(context.Background(), "p", "1")
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "unauthorized (401)") {
		t.Errorf("save: %v", err)
	}
}

func TestFakeUnreachable(t *testing.T) {
	// Network errors never name the password either.
	srv := httptest.NewServer(http.NotFoundHandler())
	u := strings.Replace(srv.URL, "://", "://admin:s3cret@", 1)
	srv.Close()
	src := newTestSource(t, Config{URL: u, DB: "db"})
	_, err := src.LoadCheckpoint(context.Background(), "p")
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("load: %v", err)
	}
}

// With CouchDB 2+ opaque sequences: on a heartbeat, a server-filtered
// feed asks a normal feed from its position (POST, the selector in the
// body, limit 1, no docs) and hands on its last_seq as a position when
// nothing passes; when something passes it hands on nothing (the
// continuous feed brings it).
func TestFakeFilteredFeedPosition(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("feed") == "normal" {
			io.WriteString(w, `{"results":[],"last_seq":"9-g1AAAB","pending":0}`)
			return
		}
		writeLines(w, rowLine("3-g1AAAA", "a1"), "")
		hang(r)
	})
	src := newTestSource(t, Config{
		URL: f.url(""), DB: "db", Heartbeat: engine.Duration(time.Hour),
		Selector: map[string]any{"type": "a"},
	})
	r := startRun(t, src, "")
	if c := r.next(t); c.ID != "a1" || c.Seq != "3-g1AAAA" {
		t.Fatalf("first change %+v", c)
	}
	if c := r.next(t); !c.IsPosition() || c.Seq != "9-g1AAAB" {
		t.Fatalf("want the position 9-g1AAAB, got %+v", c)
	}
	req := f.waitFeed(1)
	if q := req.query; req.method != "POST" || q.Get("since") != "3-g1AAAA" || q.Get("limit") != "1" || q.Has("include_docs") ||
		q.Get("filter") != "_selector" || req.body != `{"selector":{"type":"a"}}` {
		t.Fatalf("position request %+v", req)
	}

	// Something passes after the position: nothing is handed on, and the
	// next change is the next row of the continuous feed.
	g := newFake(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("feed") == "normal" {
			io.WriteString(w, `{"results":[{"seq":"10-g1AAAC","id":"a2","changes":[{"rev":"1-x"}]}],"last_seq":"10-g1AAAC","pending":0}`)
			return
		}
		writeLines(w, rowLine("3-g1AAAA", "a1"), "", "", rowLine("10-g1AAAC", "a2"))
		hang(r)
	})
	src2 := newTestSource(t, Config{
		URL: g.url(""), DB: "db", Heartbeat: engine.Duration(time.Hour),
		Selector: map[string]any{"type": "a"},
	})
	r2 := startRun(t, src2, "")
	for _, want := range []string{"a1", "a2"} {
		if c := r2.next(t); c.ID != want {
			t.Fatalf("got %+v, want %s", c, want)
		}
	}
	if n := g.feedCount(); n != 3 {
		t.Fatalf("%d feed requests, want the feed and one per heartbeat", n)
	}
}
