package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
)

// cmdTop shows a running ptop's pillows in the terminal, from its /status,
// refreshed every second and sorted by pending changes; q quits.
func cmdTop(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("top", "top [--http ADDR]", stderr)
	addr := fs.String("http", "127.0.0.1:9180", "the --http address of the running ptop")
	every := fs.Duration("every", time.Second, "how often to refresh")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 0 {
		fmt.Fprintln(stderr, "ptop top: no arguments, only flags")
		return 2
	}
	m := topModel{url: httpURL(*addr) + "/status", addr: *addr, every: max(*every, 100*time.Millisecond), client: &http.Client{Timeout: 10 * time.Second}}
	prog := tea.NewProgram(m, tea.WithAltScreen(), tea.WithInput(os.Stdin), tea.WithOutput(stdout))
	if _, err := prog.Run(); err != nil {
		fmt.Fprintln(stderr, "ptop top:", err)
		return 1
	}
	return 0
}

// topModel is the Bubble Tea model of ptop top.
type topModel struct {
	url, addr     string
	every         time.Duration
	client        *http.Client
	status        *statusJSON
	err           error
	at            time.Time
	width, height int
}

type topStatusMsg struct {
	status *statusJSON
	err    error
	at     time.Time
}

type topTickMsg struct{}

func (m topModel) fetch() tea.Msg {
	resp, err := m.client.Get(m.url)
	if err != nil {
		return topStatusMsg{err: err, at: time.Now()}
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return topStatusMsg{err: fmt.Errorf("%s: %s", m.url, resp.Status), at: time.Now()}
	}
	var st statusJSON
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return topStatusMsg{err: err, at: time.Now()}
	}
	return topStatusMsg{status: &st, at: time.Now()}
}

func (m topModel) Init() tea.Cmd { return m.fetch }

func (m topModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.KeyMsg:
		switch msg.String() {
		case "q", "Q", "esc", "ctrl+c":
			return m, tea.Quit
		}
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case topStatusMsg:
		m.at, m.err = msg.at, msg.err
		if msg.status != nil {
			m.status = msg.status
		}
		return m, tea.Tick(m.every, func(time.Time) tea.Msg { return topTickMsg{} })
	case topTickMsg:
		return m, m.fetch
	}
	return m, nil
}

// topRows sorts pillows for ptop top: most pending first, those whose
// pending count is unknown last, then by name.
func topRows(ps []pillowJSON) []pillowJSON {
	ps = slices.Clone(ps)
	slices.SortStableFunc(ps, func(a, b pillowJSON) int {
		if c := cmp.Compare(b.Pending, a.Pending); c != 0 {
			return c
		}
		return cmp.Compare(a.Pillow, b.Pillow)
	})
	return ps
}

func (m topModel) View() string {
	var b strings.Builder
	line := func(s string) {
		if m.width > 0 && len([]rune(s)) > m.width {
			s = string([]rune(s)[:m.width])
		}
		b.WriteString(s)
		b.WriteByte('\n')
	}
	head := fmt.Sprintf("ptop top · %s · every %s · q quits", m.addr, m.every)
	if !m.at.IsZero() {
		head += " · " + m.at.Format("15:04:05")
	}
	line(head)
	if m.err != nil {
		line("error: " + oneLine(m.err.Error(), 200))
	}
	if m.status == nil {
		line("waiting for /status…")
		return b.String()
	}
	line("")
	line(fmt.Sprintf("%-24s %-8s %-9s %10s %10s %9s %7s", "PILLOW", "STATE", "HEALTH", "CHANGES/S", "PENDING", "CP AGE", "ERRORS"))
	for _, p := range topRows(m.status.Pillows) {
		state, health, pending := "running", "ok", "?"
		if !p.Running {
			state = "stopped"
		} else if p.Role == "standby" {
			state = "standby"
		}
		if !p.Healthy {
			health = "UNHEALTHY"
		}
		if p.Pending >= 0 {
			pending = strconv.FormatInt(p.Pending, 10)
		}
		line(fmt.Sprintf("%-24s %-8s %-9s %10s %10s %9s %7d", trunc(p.Pillow, 24), state, health, rateText(p.Rate), pending,
			age(time.Duration(p.CheckpointAgeSeconds*float64(time.Second))), p.ErrorStore))
		if p.Role == "standby" && p.LeaseHolder != "" {
			line("    ↳ lease held by " + oneLine(p.LeaseHolder, 200))
		}
		for _, why := range p.Reasons {
			line("    ↳ " + oneLine(why, 200))
		}
	}
	if len(m.status.Pillows) == 0 {
		line("no pillow is running")
	}
	if r := m.status.LastReload; r != nil {
		line("")
		what := "applied"
		if !r.Applied {
			what = "refused: " + oneLine(r.Error, 120)
		}
		line(fmt.Sprintf("last reload %s: %s", r.Time.Local().Format("15:04:05"), what))
	}
	return b.String()
}

func trunc(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
