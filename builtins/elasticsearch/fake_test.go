package elasticsearch

import (
	"bufio"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/dimagi/ptop/engine"
)

// Unit tests of error paths against a fake server (beside the tests
// against real servers in sink_test.go, not instead of them).

// fakeES answers _bulk requests with the statuses its script gives, one
// list of item statuses (or a whole-request status) per request.
type fakeES struct {
	mu       sync.Mutex
	requests []fakeRequest
	replies  []fakeReply
}

type fakeRequest struct {
	path, query, auth string
	actions           []string // the action lines
	docs              []string // the document lines
}

type fakeReply struct {
	status int   // of the whole request; 0 means 200
	items  []int // item statuses; nil: all 201
}

func (f *fakeES) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	req := fakeRequest{path: r.URL.Path, query: r.URL.RawQuery, auth: r.Header.Get("Authorization")}
	if r.Method == http.MethodHead {
		f.requests = append(f.requests, req)
		w.WriteHeader(http.StatusNotFound)
		return
	}
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, `{"index"`) || strings.HasPrefix(line, `{"delete"`) {
			req.actions = append(req.actions, line)
		} else {
			req.docs = append(req.docs, line)
		}
	}
	f.requests = append(f.requests, req)
	var rep fakeReply
	if len(f.replies) > 0 {
		rep, f.replies = f.replies[0], f.replies[1:]
	}
	if rep.status != 0 && rep.status != http.StatusOK {
		w.WriteHeader(rep.status)
		fmt.Fprintf(w, `{"error":{"type":"fake_exception","reason":"whole request failed"},"status":%d}`, rep.status)
		return
	}
	var items []string
	errs := false
	for i, a := range req.actions {
		status := 201
		if rep.items != nil {
			status = rep.items[i]
		}
		action := "index"
		if strings.HasPrefix(a, `{"delete"`) {
			action = "delete"
		}
		switch {
		case status < 300:
			items = append(items, fmt.Sprintf(`{%q:{"status":%d}}`, action, status))
		case status == 404 && action == "delete":
			items = append(items, fmt.Sprintf(`{%q:{"status":404}}`, action))
		default:
			errs = true
			typ := map[int]string{400: "mapper_parsing_exception", 409: "version_conflict_engine_exception", 429: "es_rejected_execution_exception", 503: "unavailable_shards_exception"}[status]
			items = append(items, fmt.Sprintf(`{%q:{"status":%d,"error":{"type":%q,"reason":"item %d failed","caused_by":{"type":"x","reason":"deeper"}}}}`, action, status, typ, i))
		}
	}
	fmt.Fprintf(w, `{"errors":%v,"items":[%s]}`, errs, strings.Join(items, ","))
}

func (f *fakeES) reqs() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.requests...)
}

func newFake(t *testing.T, replies ...fakeReply) (*fakeES, *httptest.Server) {
	f := &fakeES{replies: replies}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func TestFakeBulkEncoding(t *testing.T) {
	f, srv := newFake(t)
	s := newTestSink(t, Config{URL: srv.URL + "/prefix/", Index: "things"}, t.TempDir())
	doc := map[string]any{"_id": "a\"1", "name": "x\ny", "html": "<b>&</b>"}
	err := s.Write(testCtx(t), []engine.Record{
		idx("a\"1", "12-abc", doc),
		del("b", "3-x"),
		idx("c", "", map[string]any{"k": 1}),
		idx("ü/d", "bogus", map[string]any{"k": 2}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, has := doc["_id"]; !has {
		t.Error("Write changed the record's document")
	}
	rs := f.reqs()
	if len(rs) != 1 {
		t.Fatalf("%d requests", len(rs))
	}
	r := rs[0]
	if r.path != "/prefix/things/_bulk" || r.query != "filter_path=errors,items.*.status,items.*.error" {
		t.Errorf("request to %s?%s", r.path, r.query)
	}
	wantActions := []string{
		`{"index":{"_id":"a\"1","version":12,"version_type":"external_gte"}}`,
		`{"delete":{"_id":"b","version":3,"version_type":"external_gte"}}`,
		`{"index":{"_id":"c"}}`,
		`{"index":{"_id":"ü/d"}}`,
	}
	if strings.Join(r.actions, "\n") != strings.Join(wantActions, "\n") {
		t.Errorf("actions:\n%s\nwant:\n%s", strings.Join(r.actions, "\n"), strings.Join(wantActions, "\n"))
	}
	if len(r.docs) != 3 {
		t.Fatalf("docs %q", r.docs)
	}
	var d map[string]any
	if err := stdjson.Unmarshal([]byte(r.docs[0]), &d); err != nil || d["name"] != "x\ny" || d["html"] != "<b>&</b>" || d["_id"] != nil {
		t.Errorf("doc %s (%v)", r.docs[0], err)
	}
}

func TestFakeItemsRetried(t *testing.T) {
	f, srv := newFake(t,
		fakeReply{items: []int{201, 429, 200, 503, 409, 404}},
		fakeReply{items: []int{429, 201}},
		fakeReply{items: []int{201}},
	)
	s := newTestSink(t, Config{URL: srv.URL, Index: "x"}, t.TempDir())
	recs := []engine.Record{
		idx("a", "1-a", map[string]any{"n": 0}),
		idx("b", "1-b", map[string]any{"n": 1}),
		idx("c", "1-c", map[string]any{"n": 2}),
		idx("d", "1-d", map[string]any{"n": 3}),
		idx("e", "1-e", map[string]any{"n": 4}), // 409: older than what is there
		del("f", "1-f"),                         // 404: not there
	}
	if err := s.Write(testCtx(t), recs); err != nil {
		t.Fatalf("Write: %v", err)
	}
	rs := f.reqs()
	if len(rs) != 3 {
		t.Fatalf("%d requests, want 3", len(rs))
	}
	ids := func(r fakeRequest) string {
		var out []string
		for _, a := range r.actions {
			out = append(out, a[strings.Index(a, `"_id":"`)+7:][:1])
		}
		return strings.Join(out, ",")
	}
	if got := ids(rs[1]); got != "b,d" {
		t.Errorf("second request sent %s, want b,d", got)
	}
	if got := ids(rs[2]); got != "b" {
		t.Errorf("third request sent %s, want b", got)
	}
	if len(rs[1].docs) != 2 || rs[1].docs[0] != `{"n":1}` || rs[1].docs[1] != `{"n":3}` {
		t.Errorf("retried docs %q", rs[1].docs)
	}
}

func TestFakeItemsRetriedUntilGivingUp(t *testing.T) {
	_, srv := newFake(t,
		fakeReply{items: []int{201, 429}},
		fakeReply{items: []int{429}},
		fakeReply{items: []int{429}},
	)
	s := newTestSink(t, Config{URL: srv.URL, Index: "x", MaxRetries: 2}, t.TempDir())
	err := s.Write(testCtx(t), []engine.Record{idx("a", "1-a", map[string]any{}), idx("b", "1-b", map[string]any{})})
	var re engine.RecordErrors
	if err == nil || errors.As(err, &re) || engine.IsPermanent(err) {
		t.Fatalf("Write: %v, want a plain error for the engine to retry", err)
	}
	want := "1 of 2 records still turned away after 2 retries, first: HTTP 429: es_rejected_execution_exception: item 0 failed (caused by x: deeper)"
	if err.Error() != want {
		t.Errorf("error %q\nwant %q", err, want)
	}
}

func TestFakeRejectedAndRetriedTogether(t *testing.T) {
	_, srv := newFake(t,
		fakeReply{items: []int{400, 503, 201}},
		fakeReply{items: []int{201}},
	)
	s := newTestSink(t, Config{URL: srv.URL, Index: "x"}, t.TempDir())
	err := s.Write(testCtx(t), []engine.Record{
		idx("a", "1-a", map[string]any{}), idx("b", "1-b", map[string]any{}), idx("c", "1-c", map[string]any{}),
	})
	var re engine.RecordErrors
	if !errors.As(err, &re) || len(re) != 1 || re[0].Index != 0 ||
		re[0].Err.Error() != "HTTP 400: mapper_parsing_exception: item 0 failed (caused by x: deeper)" {
		t.Fatalf("Write: %v", err)
	}
}

func TestFakeWholeRequestFailures(t *testing.T) {
	for _, status := range []int{429, 500, 502, 503} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			_, srv := newFake(t, fakeReply{status: status})
			s := newTestSink(t, Config{URL: srv.URL, Index: "x"}, t.TempDir())
			err := s.Write(testCtx(t), []engine.Record{idx("a", "1-a", map[string]any{})})
			var re engine.RecordErrors
			if err == nil || errors.As(err, &re) || engine.IsPermanent(err) {
				t.Fatalf("Write: %v, want a plain error", err)
			}
			want := fmt.Sprintf("_bulk at %s: HTTP %d: fake_exception: whole request failed", srv.URL, status)
			if err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
			// The next write, once the server is back, goes through.
			if err := s.Write(testCtx(t), []engine.Record{idx("a", "1-a", map[string]any{})}); err != nil {
				t.Fatalf("second Write: %v", err)
			}
		})
	}
}

func TestFakeConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := newTestSink(t, Config{URL: "http://user:secret@" + addr, Index: "x"}, t.TempDir())
	for _, f := range []func() error{
		func() error { return s.Open(testCtx(t)) },
		func() error { return s.Write(testCtx(t), []engine.Record{idx("a", "1-a", map[string]any{})}) },
	} {
		err := f()
		if err == nil || engine.IsPermanent(err) || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("got %v, want a plain connection refused", err)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("the password shows in %q", err)
		}
	}
}

func TestFakeIndexNotFoundIsNotTheRecords(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, `{"errors":true,"items":[{"index":{"status":404,"error":{"type":"index_not_found_exception","reason":"no such index [x]"}}}]}`)
	}))
	defer srv.Close()
	s := newTestSink(t, Config{URL: srv.URL, Index: "x"}, t.TempDir())
	err := s.Write(testCtx(t), []engine.Record{idx("a", "1-a", map[string]any{})})
	var re engine.RecordErrors
	if err == nil || errors.As(err, &re) || !strings.Contains(err.Error(), "index_not_found_exception") {
		t.Fatalf("Write: %v, want a plain error", err)
	}
}

func TestFakeAuth(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{URL: "http://elastic:pa%3Ass@HOST", Index: "x"}, "Basic ZWxhc3RpYzpwYTpzcw=="},
		{Config{URL: "http://HOST", Index: "x", Username: "elastic", Password: "pa:ss"}, "Basic ZWxhc3RpYzpwYTpzcw=="},
		{Config{URL: "http://HOST", Index: "x"}, ""},
	} {
		f, srv := newFake(t)
		tc.cfg.URL = strings.Replace(tc.cfg.URL, "HOST", strings.TrimPrefix(srv.URL, "http://"), 1)
		s := newTestSink(t, tc.cfg, t.TempDir())
		if err := s.Open(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		if err := s.Write(testCtx(t), []engine.Record{idx("a", "1-a", map[string]any{})}); err != nil {
			t.Fatal(err)
		}
		for _, r := range f.reqs() {
			if r.auth != tc.want {
				t.Errorf("%s: Authorization %q, want %q", r.path, r.auth, tc.want)
			}
		}
	}
}

func TestFakeOpenRefusedCredentials(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":{"type":"security_exception","reason":"unable to authenticate user [ptop]"},"status":401}`)
	}))
	defer srv.Close()
	dir := t.TempDir()
	for _, cfg := range []Config{
		{URL: srv.URL, Index: "x", Username: "ptop", Password: "wrong"},
		{URL: srv.URL, Index: "x", MappingFile: writeFile(t, dir, "m.json", `{}`)},
	} {
		err := newTestSink(t, cfg, dir).Open(testCtx(t))
		if err == nil || !engine.IsPermanent(err) || !strings.Contains(err.Error(), "HTTP 401: security_exception: unable to authenticate user [ptop]") {
			t.Errorf("Open: %v, want a permanent error with the reason", err)
		}
	}
}

func TestFakeUnencodableRecord(t *testing.T) {
	f, srv := newFake(t)
	s := newTestSink(t, Config{URL: srv.URL, Index: "x"}, t.TempDir())
	err := s.Write(testCtx(t), []engine.Record{
		idx("a", "1-a", map[string]any{"n": 1}),
		idx("nan", "1-b", map[string]any{"n": math.NaN()}),
		{ID: "", Rev: "1-c", Doc: map[string]any{}},
		{ID: "list", Rev: "1-d", Doc: []any{1, 2}},
		idx("d", "1-e", map[string]any{"n": 4}),
	})
	var re engine.RecordErrors
	if !errors.As(err, &re) || len(re) != 3 || re[0].Index != 1 || re[1].Index != 2 || re[2].Index != 3 {
		t.Fatalf("Write: %v", err)
	}
	if rs := f.reqs(); len(rs) != 1 || len(rs[0].actions) != 2 || len(rs[0].docs) != 2 {
		t.Fatalf("requests %+v", rs)
	}
}

func TestFakeLargeBatchSplit(t *testing.T) {
	f, srv := newFake(t)
	s := newTestSink(t, Config{URL: srv.URL, Index: "x"}, t.TempDir())
	big := strings.Repeat("x", 1<<20)
	var recs []engine.Record
	for i := 0; i < 70; i++ { // 70 MiB
		recs = append(recs, idx(fmt.Sprint(i), "1-a", map[string]any{"blob": big}))
	}
	if err := s.Write(testCtx(t), recs); err != nil {
		t.Fatal(err)
	}
	rs := f.reqs()
	total := 0
	for _, r := range rs {
		total += len(r.actions)
	}
	if len(rs) != 3 || total != 70 {
		t.Fatalf("%d requests with %d actions, want 3 with 70", len(rs), total)
	}
}

// A batch whose every record the server refuses whole, even alone, is a
// problem of the index or server, not of the records: the batch is
// retried rather than sent to the error store.
func TestFakeEveryRecordRefusedIsNotTheRecords(t *testing.T) {
	f, srv := newFake(t, fakeReply{status: 400}, fakeReply{status: 400}, fakeReply{status: 400})
	s := newTestSink(t, Config{URL: srv.URL, Index: "x"}, t.TempDir())
	err := s.Write(testCtx(t), []engine.Record{idx("a", "1-a", map[string]any{}), idx("b", "1-a", map[string]any{})})
	var re engine.RecordErrors
	if err == nil || errors.As(err, &re) || !strings.HasPrefix(err.Error(), "every record of the batch refused: ") {
		t.Fatalf("Write: %v, want a plain error", err)
	}
	if n := len(f.reqs()); n != 3 {
		t.Fatalf("%d requests, want the batch and each half", n)
	}
}

// A request refused whole (413) is halved until the record at fault is
// alone; the others are written.
func TestFakeRefusedRequestBisected(t *testing.T) {
	f, srv := newFake(t, fakeReply{status: 413}, fakeReply{status: 413}, fakeReply{}, fakeReply{status: 413}, fakeReply{})
	s := newTestSink(t, Config{URL: srv.URL, Index: "x"}, t.TempDir())
	err := s.Write(testCtx(t), []engine.Record{
		idx("a", "1-a", map[string]any{}), idx("b", "1-a", map[string]any{}),
		idx("c", "1-a", map[string]any{}), idx("d", "1-a", map[string]any{}),
	})
	var re engine.RecordErrors
	if !errors.As(err, &re) || len(re) != 1 || re[0].Index != 1 {
		t.Fatalf("Write: %v, want record 1 alone", err)
	}
	var sent []string
	for _, r := range f.reqs() {
		sent = append(sent, fmt.Sprint(len(r.actions)))
	}
	// [a b c d] refused, [a b] refused, [a] written, [b] refused, [c d] written.
	if got := strings.Join(sent, " "); got != "4 2 1 1 2" {
		t.Fatalf("request sizes %s", got)
	}
}

// Records each too large for the server (413 alone) are each the
// record's fault, even when the whole batch is made of them.
func TestFakeEveryRecordTooLargeGoesToErrors(t *testing.T) {
	_, srv := newFake(t, fakeReply{status: 413}, fakeReply{status: 413}, fakeReply{status: 413})
	s := newTestSink(t, Config{URL: srv.URL, Index: "x"}, t.TempDir())
	err := s.Write(testCtx(t), []engine.Record{idx("a", "1-a", map[string]any{}), idx("b", "1-a", map[string]any{})})
	var re engine.RecordErrors
	if !errors.As(err, &re) || len(re) != 2 || !strings.Contains(re[0].Err.Error(), "HTTP 413") {
		t.Fatalf("Write: %v, want both records rejected", err)
	}
}

// A document passed through as the feed sent it reaches the server with
// its bytes: numbers exact, keys in order, without its _id.
func TestFakeBulkPassesRawDocumentsExactly(t *testing.T) {
	f, srv := newFake(t)
	s := newTestSink(t, Config{URL: srv.URL, Index: "things"}, t.TempDir())
	raw := stdjson.RawMessage(`{"_id":"a","z":12345678901234567890123,"_rev":"1-x","a":9007199254740993,"n":{"_id":1}}`)
	if err := s.Write(testCtx(t), []engine.Record{{ID: "a", DocID: "a", Rev: "1-x", Doc: raw}}); err != nil {
		t.Fatal(err)
	}
	rs := f.reqs()
	if len(rs) != 1 || len(rs[0].docs) != 1 {
		t.Fatalf("requests %+v", rs)
	}
	if want := `{"z":12345678901234567890123,"_rev":"1-x","a":9007199254740993,"n":{"_id":1}}`; rs[0].docs[0] != want {
		t.Errorf("doc %s, want %s", rs[0].docs[0], want)
	}
}
