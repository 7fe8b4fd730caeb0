package main

import (
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/dimagi/ptop/engine"
)

// TestHistoryBounded: the history keeps an hour of samples and no more,
// rates are changes/s between samples, a restarted pillow's counters
// beginning again are not a negative rate, and a stopped pillow is
// forgotten.
func TestHistoryBounded(t *testing.T) {
	h := newHistory(10 * time.Second)
	if h.size != 361 {
		t.Fatalf("size %d, want 361 (an hour of 10s samples, both ends)", h.size)
	}
	t0 := time.Unix(1_700_000_000, 0)
	seen := int64(0)
	for i := 0; i < 1000; i++ {
		seen += 50 // 5 changes/s
		h.add(t0.Add(time.Duration(i)*10*time.Second), []engine.PillowStatus{{Pillow: "a", Seen: seen, Pending: int64(i)}})
	}
	ss := h.samples("a")
	if len(ss) != 361 || ss[0].pending != 639 || ss[360].pending != 999 {
		t.Fatalf("%d samples, pending %d…%d; want 361, 639…999", len(ss), ss[0].pending, ss[len(ss)-1].pending)
	}
	if got := ss[len(ss)-1].at.Sub(ss[0].at); got != time.Hour {
		t.Fatalf("samples span %s", got)
	}
	if r := h.rate("a"); r != 5 {
		t.Fatalf("rate %v, want 5", r)
	}
	// Restarted: Seen starts again from 20.
	h.add(t0.Add(1000*10*time.Second), []engine.PillowStatus{{Pillow: "a", Seen: 20}, {Pillow: "b"}})
	if r := h.rate("a"); r != 2 {
		t.Fatalf("rate after a restart %v, want 2", r)
	}
	h.add(t0.Add(1001*10*time.Second), []engine.PillowStatus{{Pillow: "b"}})
	if h.samples("a") != nil || len(h.samples("b")) != 2 {
		t.Fatalf("a stopped pillow is kept, or a running one lost")
	}
}

func TestSparkline(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	ss := []sample{
		{at: now.Add(-40 * time.Second), pending: -1},
		{at: now.Add(-30 * time.Second), pending: 0},
		{at: now.Add(-20 * time.Second), pending: 100},
		{at: now, pending: 50},
	}
	c := sparkline(now, ss, func(x sample) float64 { return float64(x.pending) }, func(v float64) string { return "" })
	// From the oldest sample to now; the unknown one is left out; the
	// highest value at the top.
	if c.Points != "60.0,46.0 120.0,2.0 240.0,24.0" {
		t.Fatalf("points %q", c.Points)
	}
	if c := sparkline(now, ss[:1], func(x sample) float64 { return float64(x.pending) }, func(v float64) string { return "" }); c.Points != "" || c.Last != "?" {
		t.Fatalf("a chart of nothing known: %+v", c)
	}
}

func TestTopRowsSortedByPending(t *testing.T) {
	ps := []pillowJSON{
		{PillowStatus: engine.PillowStatus{Pillow: "a", Pending: -1}},
		{PillowStatus: engine.PillowStatus{Pillow: "b", Pending: 3}},
		{PillowStatus: engine.PillowStatus{Pillow: "c", Pending: 30}},
		{PillowStatus: engine.PillowStatus{Pillow: "d", Pending: 3}},
	}
	var names []string
	for _, p := range topRows(ps) {
		names = append(names, p.Pillow)
	}
	if got := strings.Join(names, " "); got != "c b d a" {
		t.Fatalf("order %s, want c b d a", got)
	}
}

// TestTopModel: the model shows what /status said, most pending first with
// the reasons under their pillow, and quits on q.
func TestTopModel(t *testing.T) {
	m := topModel{addr: "127.0.0.1:9180", every: time.Second}
	if v := m.View(); !strings.Contains(v, "waiting for /status") {
		t.Fatalf("before the first answer:\n%s", v)
	}
	st := &statusJSON{Pillows: []pillowJSON{
		{PillowStatus: engine.PillowStatus{Pillow: "quiet", Running: true, Healthy: true, Pending: 0}},
		{PillowStatus: engine.PillowStatus{Pillow: "behind", Running: true, Reasons: []string{"sink es: 503"}, Pending: 1200, ErrorStore: 3}, Rate: 250},
		{PillowStatus: engine.PillowStatus{Pillow: "waiting", Running: true, Healthy: true, Pending: -1, Role: "standby", LeaseHolder: "host-b:42:x"}},
	}}
	next, cmd := m.Update(topStatusMsg{status: st, at: time.Now()})
	if cmd == nil {
		t.Fatal("no refresh scheduled after an answer")
	}
	v := next.View()
	if rowOrder(v, "quiet", "behind") != "behind quiet" || !strings.Contains(v, "↳ sink es: 503") || !strings.Contains(v, "UNHEALTHY") ||
		!strings.Contains(v, "↳ lease held by host-b:42:x") || !regexp.MustCompile(`waiting +standby`).MatchString(v) {
		t.Fatalf("view:\n%s", v)
	}
	for _, l := range strings.Split(v, "\n") {
		if f := strings.Fields(l); len(f) == 7 && f[0] == "behind" && (f[3] != "250" || f[4] != "1200" || f[6] != "3") {
			t.Fatalf("row %q", l)
		}
	}
	if _, cmd := next.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("q")}); cmd == nil || cmd() != tea.Quit() {
		t.Fatal("q does not quit")
	}
}

// TestStatusPageRenders: the page and its stylesheet are served from the
// binary, with no pillow running too.
func TestStatusPageRenders(t *testing.T) {
	reg, metrics := newRegistry()
	runner := engine.NewRunner(engine.RunOptions{Metrics: metrics})
	srv, err := serveHTTP("127.0.0.1:0", runner, reg, slog.New(slog.NewTextHandler(io.Discard, nil)), httpOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	base := "http://" + srv.addr.String()
	if code, body := get(t, base+"/?refresh=2"); code != 200 || !strings.Contains(body, `<meta http-equiv="refresh" content="2">`) || !strings.Contains(body, "No pillow is running.") {
		t.Fatalf("/: %d\n%s", code, body)
	}
	if code, body := get(t, base+"/assets/status.css"); code != 200 || !strings.Contains(body, "svg.spark") {
		t.Fatalf("/assets/status.css: %d", code)
	}
	if code, _ := get(t, base+"/nothing"); code != 404 {
		t.Fatalf("/nothing: %d", code)
	}
}
