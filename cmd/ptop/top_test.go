package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/creack/pty"
)

// screen is a small terminal emulator: enough of VT100 to follow what
// Bubble Tea draws (cursor moves, erasing, the alternate screen) and read
// the screen as a person would.
type screen struct {
	mu       sync.Mutex
	w, h     int
	cells    [][]rune
	row, col int
	pending  []byte
}

func newScreen(w, h int) *screen {
	s := &screen{w: w, h: h}
	s.clear()
	return s
}

func (s *screen) clear() {
	s.cells = make([][]rune, s.h)
	for i := range s.cells {
		s.cells[i] = []rune(strings.Repeat(" ", s.w))
	}
}

func (s *screen) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := append(s.pending, p...)
	i := 0
	for i < len(b) {
		c := b[i]
		switch {
		case c == 0x1b:
			n, ok := s.escape(b[i:])
			if !ok {
				s.pending = append([]byte(nil), b[i:]...)
				return len(p), nil
			}
			i += n
			continue
		case c == '\r':
			s.col = 0
		case c == '\n':
			s.lineFeed()
		case c == '\b':
			s.col = max(s.col-1, 0)
		case c < 0x20:
		default:
			if !utf8.FullRune(b[i:]) {
				s.pending = append([]byte(nil), b[i:]...)
				return len(p), nil
			}
			r, n := utf8.DecodeRune(b[i:])
			if s.col < s.w {
				s.cells[s.row][s.col] = r
			}
			s.col++
			i += n
			continue
		}
		i++
	}
	s.pending = nil
	return len(p), nil
}

func (s *screen) lineFeed() {
	if s.row == s.h-1 {
		copy(s.cells, s.cells[1:])
		s.cells[s.h-1] = []rune(strings.Repeat(" ", s.w))
		return
	}
	s.row++
}

// escape interprets the escape sequence at the start of b and returns its
// length, or false if b holds only part of it.
func (s *screen) escape(b []byte) (int, bool) {
	if len(b) < 2 {
		return 0, false
	}
	switch b[1] {
	case '[':
	case ']': // OSC, up to BEL or ST
		for j := 2; j < len(b); j++ {
			if b[j] == 0x07 {
				return j + 1, true
			}
			if b[j] == 0x1b && j+1 < len(b) && b[j+1] == '\\' {
				return j + 2, true
			}
		}
		return 0, false
	default:
		return 2, true
	}
	j := 2
	for j < len(b) && (b[j] < 0x40 || b[j] > 0x7e) {
		j++
	}
	if j == len(b) {
		return 0, false
	}
	params, final := string(b[2:j]), b[j]
	if strings.HasPrefix(params, "?") {
		if final == 'h' || final == 'l' {
			if params == "?1049" || params == "?47" { // alternate screen in or out
				s.clear()
			}
		}
		return j + 1, true
	}
	var ns []int
	for _, f := range strings.Split(params, ";") {
		n, _ := strconv.Atoi(f)
		ns = append(ns, n)
	}
	arg := func(i, def int) int {
		if i < len(ns) && ns[i] > 0 {
			return ns[i]
		}
		return def
	}
	switch final {
	case 'A':
		s.row = max(s.row-arg(0, 1), 0)
	case 'B':
		s.row = min(s.row+arg(0, 1), s.h-1)
	case 'C':
		s.col = min(s.col+arg(0, 1), s.w-1)
	case 'D':
		s.col = max(s.col-arg(0, 1), 0)
	case 'G':
		s.col = min(arg(0, 1)-1, s.w-1)
	case 'H', 'f':
		s.row, s.col = min(arg(0, 1)-1, s.h-1), min(arg(1, 1)-1, s.w-1)
	case 'J':
		if arg(0, 0) == 2 {
			s.clear()
		} else { // from the cursor down
			for c := s.col; c < s.w; c++ {
				s.cells[s.row][c] = ' '
			}
			for r := s.row + 1; r < s.h; r++ {
				s.cells[r] = []rune(strings.Repeat(" ", s.w))
			}
		}
	case 'K':
		from, to := s.col, s.w
		switch arg(0, 0) {
		case 1:
			from, to = 0, s.col+1
		case 2:
			from = 0
		}
		for c := from; c < min(to, s.w); c++ {
			s.cells[s.row][c] = ' '
		}
	}
	return j + 1, true
}

// text is the screen's lines, right-trimmed, without trailing blank lines.
func (s *screen) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ls []string
	for _, r := range s.cells {
		ls = append(ls, strings.TrimRight(string(r), " "))
	}
	return strings.TrimRight(strings.Join(ls, "\n"), "\n")
}

// rowOrder is the order in which pillow names begin the screen's lines.
func rowOrder(text string, names ...string) string {
	var order []string
	for _, l := range strings.Split(text, "\n") {
		for _, n := range names {
			if strings.HasPrefix(l, n+" ") {
				order = append(order, n)
			}
		}
	}
	return strings.Join(order, " ")
}

// TestTop drives ptop top in a pseudo-terminal against a running ptop: rows
// sorted by pending changes, refreshed as they change, the reasons of the
// unhealthy ones, and q quits.
func TestTop(t *testing.T) {
	lr := startLiveRun(t)
	bin, err := buildPtop()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "top", "--http", lr.addr)
	cmd.Env = append(os.Environ(), "TERM=xterm-256color")
	const cols, rows = 110, 16
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: cols, Rows: rows})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	scr := newScreen(cols, rows)
	copied := make(chan struct{})
	go func() { io.Copy(scr, tty); close(copied) }()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	})

	waitScreen := func(what string, ok func(string) bool) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			text := scr.text()
			if ok(text) {
				return text
			}
			if time.Now().After(deadline) {
				t.Fatalf("the screen never showed %s:\n%s", what, text)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	names := []string{"backlog", "stuck", "cases"}
	text := waitScreen("the three pillows", func(s string) bool { return rowOrder(s, names...) == "backlog stuck cases" })
	for _, want := range []string{"PILLOW", "PENDING", "CHANGES/S", "UNHEALTHY", "↳ sink tcp: sending a batch to 127.0.0.1:", "q quits"} {
		if !strings.Contains(text, want) {
			t.Errorf("the screen lacks %q:\n%s", want, text)
		}
	}
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && f[0] == "backlog" && (f[2] != "UNHEALTHY" || f[4] != "40") ||
			len(f) >= 5 && f[0] == "cases" && (f[2] != "ok" || f[4] != "0") {
			t.Errorf("row %q", l)
		}
	}

	// stuck falls further behind than backlog: it moves to the top.
	var docs []map[string]any
	for i := 0; i < 30; i++ {
		docs = append(docs, map[string]any{"_id": fmt.Sprintf("more-%02d", i), "type": "case"})
	}
	lr.couch.BulkDocs(t, "stuck", docs)
	text = waitScreen("stuck first with 45 pending", func(s string) bool {
		return rowOrder(s, names...) == "stuck backlog cases" && strings.Contains(s, " 45 ")
	})
	if *updateDocs {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "top.txt"), []byte(text+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := tty.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("ptop top after q: %v\n%s", err, scr.text())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("ptop top did not quit on q:\n%s", scr.text())
	}
}
