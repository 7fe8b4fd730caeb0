package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample named exactly name{labels}.
func metric(t *testing.T, body, sample string) string {
	t.Helper()
	re := regexp.MustCompile("(?m)^" + regexp.QuoteMeta(sample) + " (.+)$")
	m := re.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no sample %s in /metrics", sample)
	}
	return m[1]
}

// TestHTTPEndpoints runs ptop with its HTTP listener against a real
// pouchdb-server: metrics after a known run, /status, and /healthz turning
// 503 while the source is down and 200 once it is back.
func TestHTTPEndpoints(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{DataDir: t.TempDir()})
	couch.CreateDB(t, "obs")
	var docs []map[string]any
	for i := 0; i < 30; i++ {
		typ := "case"
		if i%3 == 0 {
			typ = "other"
		}
		docs = append(docs, map[string]any{"_id": "d" + string(rune('a'+i%26)) + string(rune('0'+i/26)), "type": typ, "v": i})
	}
	docs = append(docs, map[string]any{"_id": "bad", "type": "case", "boom": true})
	couch.BulkDocs(t, "obs", docs)
	dir := t.TempDir()
	out := filepath.Join(dir, "out.jsonl")
	write(t, filepath.Join(dir, "p", "obs.yaml"), `name: obs
source:
  couchdb: {url: "${COUCH_URL}", db: obs, heartbeat: 300ms}
filter: doc.type == "case"
transform: |
  function transform(doc) { if (doc.boom) throw new Error("boom"); return { v: doc.v }; }
batch: {size: 10, wait: 50ms}
errors: {backoff: 1h}
sinks:
  - file: {path: "${OUT}"}
`)
	t.Setenv("COUCH_URL", couch.URL)
	t.Setenv("OUT", out)
	p := startPtop(t, "run", filepath.Join(dir, "p"), "--http", "127.0.0.1:0")
	waitLines(t, p, out, 20)
	m := regexp.MustCompile(`msg="serving /metrics, /healthz and /status" addr=(\S+)`).FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no listener address in the log:\n%s", p.stderr)
	}
	base := "http://" + m[1]

	var body string
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body = get(t, base+"/metrics")
		if strings.Contains(body, `ptop_changes_total{outcome="failed",pillow="obs"} 1`) &&
			strings.Contains(body, `ptop_error_store_entries{pillow="obs"} 1`) &&
			strings.Contains(body, `ptop_pending_changes{pillow="obs"} 0`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed the run:\n%s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for sample, want := range map[string]string{
		`ptop_changes_total{outcome="seen",pillow="obs"}`:      "31",
		`ptop_changes_total{outcome="filtered",pillow="obs"}`:  "10",
		`ptop_changes_total{outcome="processed",pillow="obs"}`: "20",
		`ptop_records_written_total{pillow="obs",sink="file"}`: "20",
		`ptop_pillow_healthy{pillow="obs"}`:                    "1",
		`ptop_pending_changes{pillow="obs"}`:                   "0",
	} {
		if got := metric(t, body, sample); got != want {
			t.Errorf("%s = %s, want %s", sample, got, want)
		}
	}
	for _, name := range []string{"ptop_sink_write_seconds_count", "ptop_batch_changes_count", "ptop_checkpoint_age_seconds", "process_resident_memory_bytes"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	code, st := get(t, base+"/status")
	var status struct {
		Pillows []struct {
			Pillow     string `json:"pillow"`
			Healthy    bool   `json:"healthy"`
			Checkpoint string `json:"checkpoint"`
			ErrorStore int    `json:"error_store"`
			Written    int    `json:"written"`
		} `json:"pillows"`
	}
	if err := json.Unmarshal([]byte(st), &status); err != nil || code != 200 || len(status.Pillows) != 1 {
		t.Fatalf("/status: %d %s (%v)", code, st, err)
	}
	if ps := status.Pillows[0]; ps.Pillow != "obs" || !ps.Healthy || ps.Checkpoint != "31" || ps.ErrorStore != 1 || ps.Written != 20 {
		t.Fatalf("/status: %s", st)
	}
	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz with everything up: %d %q", code, body)
	}

	// The source goes away: the pillow is unhealthy, and says why.
	couch.Stop(t)
	deadline = time.Now().Add(20 * time.Second)
	for {
		code, body := get(t, base+"/healthz")
		if code == 503 && strings.Contains(body, fmt.Sprintf("obs: couchdb %s/obs: cannot reach 127.0.0.1:%d: ", couch.URL, couch.Port)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz stayed %d %q with the source down", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	couch.Restart(t)
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, _ := get(t, base+"/healthz")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz did not recover after the source came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.stop(t)

	// ptop status reads the same figures from the servers, without ptop.
	for i := 0; i < 5; i++ {
		couch.Put(t, "obs", "late-"+string(rune('a'+i)), map[string]any{"type": "case"})
	}
	code, out2, errOut := ptop(t, "status", filepath.Join(dir, "p"))
	if code != 0 {
		t.Fatalf("ptop status: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out2), "\n")
	if len(lines) != 2 || !regexp.MustCompile(`^obs\s+31\s+5\s+1\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+s ago\)\s+-$`).MatchString(lines[1]) {
		t.Fatalf("ptop status:\n%s", out2)
	}
}

// TestHealthzTellsWhy runs three pillows, each kept from progress in its
// own way, and requires /healthz to name each cause: a source server that
// refuses connections, a TCP sink that cannot open, a feed trickling
// slower than documents arrive. The first recovers when its server
// answers again.
func TestHealthzTellsWhy(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	for _, db := range []string{"down", "nosink", "slow"} {
		couch.CreateDB(t, db)
	}
	target := fmt.Sprintf("127.0.0.1:%d", couch.Port)
	refuse := testenv.StartFaultProxy(t, target)
	refuse.Set(t, testenv.Refuse)
	trickle := testenv.StartFaultProxy(t, target)
	trickle.SetTrickle(32, 50*time.Millisecond)
	trickle.Set(t, testenv.Trickle)
	closed, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pillow := func(name, url, sink string) {
		write(t, filepath.Join(dir, "p", name+".yaml"), fmt.Sprintf(`name: %s
source:
  couchdb: {url: "%s", db: %s, heartbeat: 200ms}
batch: {size: 10, wait: 20ms}
sinks:
  - %s
`, name, url, name, sink))
	}
	pillow("down", refuse.URL, `file: {path: "`+filepath.Join(dir, "down.jsonl")+`"}`)
	pillow("nosink", couch.URL, fmt.Sprintf("tcp: {address: \"127.0.0.1:%d\"}", closed))
	pillow("slow", trickle.URL, `file: {path: "`+filepath.Join(dir, "slow.jsonl")+`"}`)
	couch.Put(t, "slow", "first", nil)
	w := startWriter(t, couch.URL, "slow")
	defer w.halt()
	p := startPtop(t, "run", filepath.Join(dir, "p"), "--lag-window", "2s")
	waitLog(t, p, "serving /metrics", 1)
	base := "http://" + regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(p.stderr.String())[1]

	want := []string{
		// the lease in the same server, or the feed
		"cannot reach " + refuse.Addr + ": ",
		"nosink: sink tcp: not open: ",
		"slow: falling behind: ",
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get(t, base+"/healthz")
		missing := 0
		for _, s := range want {
			if !strings.Contains(body, s) {
				missing++
			}
		}
		if code == 503 && missing == 0 && strings.HasPrefix(body, "down: ") {
			if strings.Contains(body, "feed silent") {
				t.Fatalf("/healthz says a silent feed where it knows better:\n%s", body)
			}
			t.Logf("/healthz:\n%s", body)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz %d, want 503 with %q:\n%s", code, want, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	refuse.Set(t, testenv.Pass)
	deadline = time.Now().Add(30 * time.Second)
	for {
		_, body := get(t, base+"/healthz")
		if !strings.Contains(body, "down: ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pillow down still unhealthy with its server back:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.stop(t)
}
