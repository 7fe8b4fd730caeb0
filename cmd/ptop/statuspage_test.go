package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/dimagi/ptop/internal/testenv"
)

// chromium is Debian's browser, which scripts/test.sh installs.
const chromium = "/usr/bin/chromium"

// browser starts a headless chromium for the test, or skips under -short.
func browser(t *testing.T) context.Context {
	t.Helper()
	testenv.Integration(t, "starts chromium")
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s not found: run scripts/test.sh prepare (it installs Debian's chromium: apt-get install chromium)", chromium)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // tests may run as root
		chromedp.Flag("disable-gpu", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// pageRowView is what the browser shows of a pillow's row.
type pageRowView struct {
	Pillow, State, Health, Rate, Pending, Age, Errors string
	Reasons                                           []string
	Charts                                            int     // svg charts drawn with a size
	Lines                                             []int   // points in each chart's line
	Width                                             float64 // of the row, as laid out
}

const readRowsJS = `[...document.querySelectorAll("tr.pillow")].map(tr => ({
	Pillow: tr.dataset.pillow,
	State: tr.querySelector(".state").textContent.trim(),
	Health: tr.querySelector(".health > span").textContent.trim(),
	Rate: tr.querySelector(".rate").textContent.trim(),
	Pending: tr.querySelector(".pending").textContent.trim(),
	Age: tr.querySelector(".age").textContent.trim(),
	Errors: tr.querySelector(".errors").textContent.trim(),
	Reasons: [...tr.querySelectorAll(".reasons li")].map(li => li.textContent),
	Charts: [...tr.querySelectorAll("svg.spark")].filter(s => s.getBoundingClientRect().width > 100 && s.getBoundingClientRect().height > 20).length,
	Lines: [...tr.querySelectorAll("svg.spark")].map(s => { const p = s.querySelector("polyline"); return p ? p.points.numberOfItems : 0 }),
	Width: tr.getBoundingClientRect().width,
}))`

// readPage reads the page's render number and rows.
func readPage(t *testing.T, ctx context.Context) (string, []pageRowView) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.WaitVisible("#pillows")); err != nil {
		t.Fatal(err)
	}
	render, err := chromedp.Run(ctx, chromedp.AttributeValue("#rendered", "data-render"))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[[]pageRowView](readRowsJS))
	if err != nil {
		t.Fatal(err)
	}
	return render.Value, rows
}

// TestStatusPage loads the status page of a running ptop in chromium and
// checks what it shows: a row per pillow with its state, health and
// reasons, pending changes and charts; that it refreshes itself with new
// figures; and that on a phone's width it needs no sideways scrolling.
func TestStatusPage(t *testing.T) {
	lr := startLiveRun(t)
	ctx := browser(t)
	url := "http://" + lr.addr + "/?refresh=1"
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible("#pillows")); err != nil {
		t.Fatal(err)
	}
	render, rows := readPage(t, ctx)
	if len(rows) != 3 {
		t.Fatalf("%d rows: %+v", len(rows), rows)
	}
	byName := map[string]pageRowView{}
	for _, r := range rows {
		byName[r.Pillow] = r
		if r.State != "running" || r.Charts != 2 {
			t.Errorf("row %s: state %q, %d charts drawn; want running and 2", r.Pillow, r.State, r.Charts)
		}
	}
	if r := byName["backlog"]; r.Health != "unhealthy" || r.Pending != "40" || len(r.Reasons) != 1 ||
		!strings.HasPrefix(r.Reasons[0], "sink tcp: sending a batch to 127.0.0.1:") || !strings.Contains(r.Reasons[0], "connection refused") {
		t.Errorf("backlog row: %+v", r)
	}
	if r := byName["stuck"]; r.Health != "unhealthy" || r.Pending != "15" || len(r.Reasons) != 1 {
		t.Errorf("stuck row: %+v", r)
	}
	if r := byName["cases"]; r.Health != "healthy" || r.Pending != "0" || r.Errors != "0" || len(r.Reasons) != 0 || r.Age == "" {
		t.Errorf("cases row: %+v", r)
	}
	// The history has a few samples by now: lines, not dots.
	for _, r := range rows {
		if len(r.Lines) != 2 || r.Lines[0] < 2 || r.Lines[1] < 2 {
			t.Errorf("row %s: chart lines of %v points", r.Pillow, r.Lines)
		}
	}

	// More changes arrive; the page shows them without being reloaded by us.
	var docs []map[string]any
	for i := 0; i < 7; i++ {
		docs = append(docs, map[string]any{"_id": "late-" + string(rune('a'+i)), "type": "case"})
	}
	lr.couch.BulkDocs(t, "stuck", docs)
	deadline := time.Now().Add(30 * time.Second)
	for {
		now, rows := readPage(t, ctx)
		pending := ""
		for _, r := range rows {
			if r.Pillow == "stuck" {
				pending = r.Pending
			}
		}
		if now != render && pending == "22" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page did not refresh to 22 pending for stuck: render %s→%s, pending %s", render, now, pending)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if *updateDocs {
		// Some traffic for the picture: cases takes 20 changes a beat.
		for i := 0; i < 15; i++ {
			var docs []map[string]any
			for j := 0; j < 20; j++ {
				docs = append(docs, map[string]any{"_id": fmt.Sprintf("pic-%02d-%02d", i, j), "type": "case"})
			}
			lr.couch.BulkDocs(t, "cases", docs)
			time.Sleep(300 * time.Millisecond) // pacing, not waiting for anything
		}
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 560), chromedp.Navigate("http://"+lr.addr+"/?refresh=60"),
			chromedp.WaitVisible("#pillows")); err != nil {
			t.Fatal(err)
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "status-page.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// A phone: the rows become cards as wide as the screen.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile), chromedp.Navigate(url), chromedp.WaitVisible("#pillows")); err != nil {
		t.Fatal(err)
	}
	_, rows = readPage(t, ctx)
	scrollWidth, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`document.documentElement.scrollWidth`))
	if err != nil {
		t.Fatal(err)
	}
	if scrollWidth > 390 || len(rows) != 3 {
		t.Fatalf("on a 390px screen the page is %vpx wide with %d rows", scrollWidth, len(rows))
	}
	for _, r := range rows {
		if r.Width > 390 || r.Width < 300 || r.Charts != 2 {
			t.Errorf("on a phone, row %s is %vpx wide with %d charts", r.Pillow, r.Width, r.Charts)
		}
	}
}
