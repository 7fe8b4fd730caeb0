package main

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
)

// holderOf returns the lease holder a ptop process logged at start.
func holderOf(t *testing.T, p *proc) string {
	t.Helper()
	waitLog(t, p, "ptop starting", 1)
	m := regexp.MustCompile(`msg="ptop starting".* holder=(\S+)`).FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no holder in the log:\n%s", p.stderr)
	}
	return m[1]
}

// statusOf reads /status of a running ptop.
func statusOf(t *testing.T, p *proc) (role, holder string, healthy bool) {
	t.Helper()
	waitLog(t, p, "serving /metrics", 1)
	m := regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(p.stderr.String())
	_, body := get(t, "http://"+m[1]+"/status")
	var st struct {
		Pillows []struct {
			Role        string `json:"role"`
			LeaseHolder string `json:"lease_holder"`
			Healthy     bool   `json:"healthy"`
		} `json:"pillows"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil || len(st.Pillows) != 1 {
		t.Fatalf("/status: %v: %s", err, body)
	}
	ps := st.Pillows[0]
	return ps.Role, ps.LeaseHolder, ps.Healthy
}

// counts is how many lines each id has.
func counts(ls []line) map[string]int {
	c := map[string]int{}
	for _, l := range ls {
		c[l.ID]++
	}
	return c
}

// TestLeaseOneRunnerPerPillow runs two `ptop run` processes on one pillow
// while documents are written: the second waits as a standby (in its log,
// /status and `ptop status`) and writes nothing; killed with SIGKILL, the
// holder is replaced at once and nothing is lost; stopped cleanly, it hands
// over to the next standby.
func TestLeaseOneRunnerPerPillow(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "leased")
	dir := t.TempDir()
	out := filepath.Join(dir, "out.jsonl")
	pdir := filepath.Join(dir, "p")
	write(t, filepath.Join(pdir, "leased.yaml"), pillowYAML("leased", "leased", out, "function transform(doc) { return { v: doc.v }; }"))
	t.Setenv("COUCH_URL", couch.URL)
	w := startWriter(t, couch.URL, "leased")

	a := startPtop(t, "run", pdir, "--lease-ttl", "3s")
	holderA := holderOf(t, a)
	waitLog(t, a, "lease acquired", 1)
	waitLines(t, a, out, 20)
	b := startPtop(t, "run", pdir, "--lease-ttl", "3s")
	waitLog(t, b, "standby: another process holds the lease", 1)
	if !strings.Contains(b.stderr.String(), "holder="+holderA) {
		t.Fatalf("the standby does not say whom it waits for (%s):\n%s", holderA, b.stderr)
	}
	if role, holder, healthy := statusOf(t, b); role != "standby" || holder != holderA || !healthy {
		t.Fatalf("standby's /status: role %q holder %q healthy %v", role, holder, healthy)
	}
	if role, _, healthy := statusOf(t, a); role != "active" || !healthy {
		t.Fatalf("holder's /status: role %q healthy %v", role, healthy)
	}
	for p, want := range map[*proc]string{a: "1", b: "0"} {
		m := regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(p.stderr.String())
		_, body := get(t, "http://"+m[1]+"/metrics")
		if got := metric(t, body, `ptop_pillow_active{pillow="leased"}`); got != want {
			t.Errorf("ptop_pillow_active %s, want %s", got, want)
		}
	}
	code, stdout, stderr := ptop(t, "status", pdir)
	if code != 0 || !strings.Contains(stdout, "LEASE HELD BY") || !strings.Contains(stdout, holderA) {
		t.Fatalf("ptop status (exit %d) does not name the holder %s:\n%s%s", code, holderA, stdout, stderr)
	}
	// Both live for a while: every document is written once.
	n := w.count()
	for w.count() < n+200 {
		time.Sleep(20 * time.Millisecond)
	}
	live := w.count()
	ls := waitLines(t, a, out, live)
	for id, c := range counts(ls) {
		if c != 1 {
			t.Fatalf("%s written %d times while two processes ran the pillow", id, c)
		}
	}
	if strings.Contains(b.stderr.String(), "pillow started") {
		t.Fatalf("the standby started the pillow while the holder lived:\n%s", b.stderr)
	}

	// kill -9 the holder mid-run: the standby takes over.
	killed := time.Now()
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.done
	afterKill := w.count()
	waitLog(t, b, "took over the lease", 1)
	takeover := time.Since(killed)
	atKill := len(readLines(t, out))
	t.Logf("takeover after kill -9: %s (ttl 3s; %d lines written before)", takeover.Round(time.Millisecond), atKill)
	if !strings.Contains(b.stderr.String(), "has exited") {
		t.Errorf("the takeover was not by the dead-pid check:\n%s", b.stderr)
	}

	// A third process waits; a clean stop of the second hands over.
	c := startPtop(t, "run", pdir, "--lease-ttl", "3s")
	waitLog(t, c, "standby: another process holds the lease", 1)
	n = w.count()
	for w.count() < n+100 {
		time.Sleep(20 * time.Millisecond)
	}
	stopped := time.Now()
	b.stop(t)
	waitLog(t, c, "lease acquired", 1)
	handover := time.Since(stopped)
	t.Logf("handover after a clean stop: %s (including the drain)", handover.Round(time.Millisecond))

	// The holder freezes (SIGSTOP): alive, but it renews nothing. A
	// fourth process takes over once the ttl has passed on its own clock;
	// the frozen one, thawed, finds its lease gone and writes nothing more.
	d := startPtop(t, "run", pdir, "--lease-ttl", "3s")
	waitLog(t, d, "standby: another process holds the lease", 1)
	beforeFreeze := w.count()
	frozen := time.Now()
	c.cmd.Process.Signal(syscall.SIGSTOP)
	waitLog(t, d, "took over the lease", 1)
	t.Logf("takeover from a frozen holder: %s (ttl 3s)", time.Since(frozen).Round(time.Millisecond))
	c.cmd.Process.Signal(syscall.SIGCONT)
	waitLog(t, c, "back to standby", 1)
	holderD := holderOf(t, d)
	for deadline := time.Now().Add(10 * time.Second); ; {
		role, holder, _ := statusOf(t, c)
		if role == "standby" && holder == holderD {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the thawed process: role %q, holder %q, want standby for %s", role, holder, holderD)
		}
		time.Sleep(20 * time.Millisecond)
	}

	ids := w.halt()
	ls = waitLines(t, d, out, len(ids))
	got := counts(ls)
	replayed := 0
	for _, id := range ids {
		if got[id] == 0 {
			t.Errorf("%s lost", id)
		}
		replayed += got[id] - 1
	}
	t.Logf("%d documents, %d lines, %d written again after the kill (at least once)", len(ids), len(ls), replayed)
	// Documents put after the kill and before the freeze were written by
	// one process each, the clean handover included: exactly once. (A
	// holder frozen between its lease check and its write may write its
	// batch once more when thawed: at least once.)
	for _, id := range ids[afterKill:beforeFreeze] {
		if got[id] != 1 {
			t.Errorf("%s, put after the kill, written %d times", id, got[id])
		}
	}
	c.stop(t)
	d.stop(t)
}
