package main

import (
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dimagi/ptop/engine"
)

//go:embed web
var webFS embed.FS

// assets are the status page's static files, served under /assets/.
var assets, _ = fs.Sub(webFS, "web/assets")

var pageTmpl = template.Must(template.New("status.html").
	Funcs(template.FuncMap{"join": func(s []string) string { return strings.Join(s, ", ") }}).
	ParseFS(webFS, "web/status.html"))

// Chart geometry, in SVG user units.
const chartW, chartH = 240, 48

type pageData struct {
	Refresh  int
	Render   int64
	Now      string
	Pillows  []pageRow
	Reload   *reloadJSON
	Interval string
}

type pageRow struct {
	engine.PillowStatus
	State         string // running, standby, stopped or failed
	Rate          string
	PendingText   string
	CheckpointAge string
	RateChart     chart
	PendingChart  chart
}

// chart is a sparkline of one figure over the history's span.
type chart struct {
	Points string // polyline points, "x,y x,y …"
	Max    string
	Last   string
}

// statusPage renders the page at /: one row per pillow, with charts of the
// last hour. ?refresh=N reloads it every N seconds (default 5).
func (s *httpServer) statusPage(w http.ResponseWriter, r *http.Request) {
	refresh := 5
	if n, err := strconv.Atoi(r.URL.Query().Get("refresh")); err == nil && n >= 1 {
		refresh = n
	}
	now := time.Now()
	d := pageData{
		Refresh: refresh, Render: s.renders.Add(1), Now: now.UTC().Format("2006-01-02 15:04:05 UTC"),
		Reload: toReloadJSON(s.runner.LastReload()), Interval: s.hist.every.String(),
	}
	for _, st := range s.runner.Status(5 * time.Second) {
		row := pageRow{PillowStatus: st, State: "running", PendingText: "?", CheckpointAge: age(st.CheckpointAge)}
		if !st.Running {
			row.State = "stopped"
			if !st.Healthy {
				row.State = "failed"
			}
		} else if st.Role == "standby" {
			row.State = "standby"
		}
		if st.Pending >= 0 {
			row.PendingText = strconv.FormatInt(st.Pending, 10)
		}
		samples := s.hist.samples(st.Pillow)
		row.Rate = rateText(s.hist.rate(st.Pillow))
		row.RateChart = sparkline(now, samples, func(x sample) float64 { return x.rate }, rateText)
		row.PendingChart = sparkline(now, samples, func(x sample) float64 { return float64(x.pending) }, func(v float64) string { return strconv.FormatInt(int64(v), 10) })
		d.Pillows = append(d.Pillows, row)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := pageTmpl.Execute(w, d); err != nil {
		s.log.Warn("status page", "error", err)
	}
}

// sparkline draws value from the oldest sample (at most an hour ago) to
// now; points where value is negative (unknown) are left out.
func sparkline(now time.Time, samples []sample, value func(sample) float64, format func(float64) string) chart {
	var c chart
	top := 0.0
	last := math.NaN()
	for _, x := range samples {
		if v := value(x); v >= 0 {
			top = max(top, v)
			last = v
		}
	}
	if math.IsNaN(last) {
		c.Max, c.Last = "?", "?"
		return c
	}
	c.Max, c.Last = format(top), format(last)
	scale := top
	if scale == 0 {
		scale = 1
	}
	var b strings.Builder
	from := now.Add(-historySpan)
	if first := samples[0].at; first.After(from) {
		from = first
	}
	span := max(now.Sub(from), time.Second)
	for _, x := range samples {
		v := value(x)
		if v < 0 {
			continue
		}
		px := float64(chartW) * x.at.Sub(from).Seconds() / span.Seconds()
		py := chartH - 2 - (chartH-4)*v/scale
		fmt.Fprintf(&b, "%.1f,%.1f ", min(max(px, 0), chartW), py)
	}
	c.Points = strings.TrimSpace(b.String())
	return c
}

func rateText(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// age is a short duration for people: 4s, 3m20s, 2h5m.
func age(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Hour:
		return d.Round(time.Second).String()
	}
	return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
}
