package main

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/dimagi/ptop/engine"
)

// tapBuffer is how many events a tap holds for a slow reader before it
// drops them.
const tapBuffer = 1024

// tapOutcomes are the outcomes --outcome takes.
var tapOutcomes = map[string]bool{"filtered": true, "written": true, "failed": true, "deleted": true}

// tapLine is one line of /tap: a change as it passed.
type tapLine struct {
	Seq     string      `json:"seq"`
	ID      string      `json:"id"`
	Rev     string      `json:"rev"`
	Deleted bool        `json:"deleted"`
	Outcome string      `json:"outcome"`
	Records []tapRecord `json:"records"`
	Stage   string      `json:"stage,omitempty"`
	Error   string      `json:"error,omitempty"`
}

type tapRecord struct {
	ID     string `json:"id"`
	Delete bool   `json:"delete,omitempty"`
	Doc    any    `json:"doc,omitempty"`
}

// tapNotice is a line of /tap that is not a change: events this tap lost
// since the last notice, or the end of the pillow.
type tapNotice struct {
	Dropped int64  `json:"dropped,omitempty"`
	Ended   string `json:"ended,omitempty"`
}

func newTapLine(e engine.Event, records bool) tapLine {
	l := tapLine{Seq: e.Seq, ID: e.ID, Rev: e.Rev, Deleted: e.Deleted, Outcome: e.Outcome, Stage: e.Stage, Error: e.Error, Records: make([]tapRecord, len(e.Records))}
	for i, r := range e.Records {
		l.Records[i] = tapRecord{ID: r.ID, Delete: r.Delete}
		if records {
			l.Records[i].Doc = r.Doc
		}
	}
	return l
}

// tapAllowed says whether r may read /tap, and if not, the status and why.
// /tap shows document contents: with a token it requires it; without one
// it answers only on a loopback listener.
func (s *httpServer) tapAllowed(r *http.Request) (int, string) {
	if s.opts.Token != "" {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+s.opts.Token)) == 1 {
			return 0, ""
		}
		return http.StatusUnauthorized, "/tap needs the listener's token: Authorization: Bearer TOKEN (ptop tap --http-token or PTOP_HTTP_TOKEN)"
	}
	if !s.loopback {
		return http.StatusForbidden, "/tap shows document contents: on a listener that is not on loopback it answers only when ptop run has --http-token (or PTOP_HTTP_TOKEN)"
	}
	return 0, ""
}

// tap streams the changes of a pillow as they pass, one JSON line each:
// ?outcome= keeps one outcome, ?records=false leaves record bodies out,
// ?limit=N ends after N lines. Changes this tap was too slow to take are
// dropped, not waited for, and reported as {"dropped":N}. When the pillow
// is restarted by a reload the tap follows the new one.
func (s *httpServer) tap(w http.ResponseWriter, r *http.Request) {
	if code, why := s.tapAllowed(r); code != 0 {
		http.Error(w, why, code)
		return
	}
	name := r.PathValue("name")
	q := r.URL.Query()
	outcome := q.Get("outcome")
	if outcome != "" && !tapOutcomes[outcome] {
		http.Error(w, "outcome must be filtered, written, failed or deleted", http.StatusBadRequest)
		return
	}
	records := q.Get("records") != "false"
	limit, _ := strconv.Atoi(q.Get("limit"))
	p := s.runner.Pillows()[name]
	if p == nil {
		http.Error(w, fmt.Sprintf("no pillow %q is running", name), http.StatusNotFound)
		return
	}
	t := p.Tap(tapBuffer)
	defer func() { t.Close() }()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		return
	}
	enc := json.NewEncoder(w)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var lost, reported int64 // dropped by taps already closed; dropped and told
	sent := 0
	for {
		select {
		case <-r.Context().Done():
			return
		case e, ok := <-t.Events():
			if !ok {
				return
			}
			if outcome != "" && e.Outcome != outcome {
				continue
			}
			if enc.Encode(newTapLine(e, records)) != nil {
				return
			}
			sent++
			if limit > 0 && sent >= limit {
				_ = rc.Flush()
				return
			}
			if len(t.Events()) == 0 && rc.Flush() != nil {
				return // the client went away
			}
		case <-tick.C:
			if d := lost + t.Dropped(); d > reported {
				if enc.Encode(tapNotice{Dropped: d - reported}) != nil {
					return
				}
				reported = d
				if rc.Flush() != nil {
					return
				}
			}
			if cur := s.runner.Pillows()[name]; cur != p {
				lost += t.Dropped()
				t.Close()
				if cur == nil {
					_ = enc.Encode(tapNotice{Ended: "pillow " + name + " is no longer running"})
					return
				}
				p, t = cur, cur.Tap(tapBuffer)
			}
		}
	}
}

// cmdTap prints the changes of a pillow of a running ptop as they pass.
func cmdTap(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("tap", "tap NAME [--http ADDR] [--limit N] [--outcome OUTCOME] [--records=false]", stderr)
	addr := fs.String("http", "127.0.0.1:9180", "the --http address of the running ptop")
	limit := fs.Int("limit", 0, "exit after N changes (0: no limit)")
	outcome := fs.String("outcome", "", "only changes with this outcome: filtered, written, failed or deleted")
	records := fs.Bool("records", true, "show the records' bodies (false: their ids only)")
	token := fs.String("http-token", "", "the running ptop's --http-token (default $PTOP_HTTP_TOKEN)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "ptop tap: name one pillow")
		return 2
	}
	if *outcome != "" && !tapOutcomes[*outcome] {
		fmt.Fprintf(stderr, "ptop tap: --outcome must be filtered, written, failed or deleted, got %q\n", *outcome)
		return 2
	}
	q := url.Values{}
	if *outcome != "" {
		q.Set("outcome", *outcome)
	}
	if !*records {
		q.Set("records", "false")
	}
	if *limit > 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	req, err := http.NewRequest("GET", httpURL(*addr)+"/tap/"+url.PathEscape(pos[0])+"?"+q.Encode(), nil)
	if err != nil {
		fmt.Fprintln(stderr, "ptop tap:", err)
		return 2
	}
	if tok := cmp.Or(*token, os.Getenv("PTOP_HTTP_TOKEN")); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "ptop tap: is ptop running with --http %s? %v\n", *addr, err)
		return 1
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		fmt.Fprintf(stderr, "ptop tap: %s: %s\n", resp.Status, bytes.TrimSpace(b))
		return 1
	}
	fmt.Fprintf(stderr, "ptop tap: tapping %s at %s\n", pos[0], *addr)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	n := 0
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.HasPrefix(line, []byte(`{"dropped"`)) || bytes.HasPrefix(line, []byte(`{"ended"`)) {
			var nt tapNotice
			_ = json.Unmarshal(line, &nt) // a notice ptop wrote: it decodes
			if nt.Ended != "" {
				fmt.Fprintf(stderr, "ptop tap: %s\n", nt.Ended)
				return 0
			}
			fmt.Fprintf(stderr, "ptop tap: %d change%s not shown: this tap fell behind and ptop does not wait for it\n", nt.Dropped, plural(int(nt.Dropped)))
			continue
		}
		fmt.Fprintf(stdout, "%s\n", line)
		n++
		if *limit > 0 && n >= *limit {
			return 0
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(stderr, "ptop tap:", err)
	} else {
		fmt.Fprintln(stderr, "ptop tap: ptop closed the connection")
	}
	return 1
}

// httpURL is the base URL of an --http address ("127.0.0.1:9180", or a
// URL already).
func httpURL(addr string) string {
	if u, err := url.Parse(addr); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		return addr
	}
	return "http://" + addr
}
