package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dimagi/ptop/engine"
)

// newRegistry makes the registry /metrics serves: the process, the Go
// runtime, the pillows' counters and what the runner reports when scraped.
func newRegistry() (*prometheus.Registry, *engine.Metrics) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg, engine.NewMetrics(reg)
}

// httpOptions are the settings of ptop run's HTTP listener.
type httpOptions struct {
	// Token, when set, is required (Authorization: Bearer) by /tap, which
	// shows document contents; without it /tap answers only on a loopback
	// listener.
	Token string
	// HistoryEvery is how often the status page's charts take a sample.
	HistoryEvery time.Duration
}

// httpServer is ptop run's HTTP listener: /metrics, /healthz, /status,
// the status page at / and /tap/NAME.
type httpServer struct {
	srv      *http.Server
	addr     net.Addr
	runner   *engine.Runner
	hist     *history
	opts     httpOptions
	loopback bool
	log      *slog.Logger
	stop     chan struct{}
	renders  atomic.Int64 // status pages served, shown on the page
}

// serveHTTP serves on addr until the returned server is closed.
func serveHTTP(addr string, runner *engine.Runner, reg *prometheus.Registry, log *slog.Logger, opts httpOptions) (*httpServer, error) {
	reg.MustRegister(runner.Collector())
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &httpServer{addr: ln.Addr(), runner: runner, hist: newHistory(opts.HistoryEvery), opts: opts, log: log, stop: make(chan struct{})}
	if ta, ok := ln.Addr().(*net.TCPAddr); ok {
		s.loopback = ta.IP.IsLoopback()
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ok, reasons := runner.Healthy()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(reasons, "\n"))
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /status", s.status)
	mux.HandleFunc("GET /{$}", s.statusPage)
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(assets)))
	mux.HandleFunc("GET /tap/{name}", s.tap)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Error("http listener stopped", "error", err)
		}
	}()
	go s.hist.run(func() []engine.PillowStatus { return runner.Status(5 * time.Second) }, s.stop)
	return s, nil
}

// Close stops the listener and the history's sampling.
func (s *httpServer) Close() error {
	close(s.stop)
	return s.srv.Close()
}

// statusJSON is the body of /status, which ptop top reads.
type statusJSON struct {
	Pillows    []pillowJSON `json:"pillows"`
	LastReload *reloadJSON  `json:"last_reload,omitempty"`
}

type pillowJSON struct {
	engine.PillowStatus
	// Rate is changes/s over the history's last interval.
	Rate float64 `json:"changes_per_second"`
}

func (s *httpServer) status(w http.ResponseWriter, r *http.Request) {
	body := statusJSON{Pillows: []pillowJSON{}, LastReload: toReloadJSON(s.runner.LastReload())}
	for _, st := range s.runner.Status(5 * time.Second) {
		body.Pillows = append(body.Pillows, pillowJSON{PillowStatus: st, Rate: s.hist.rate(st.Pillow)})
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(body) // the client went away
}

type reloadJSON struct {
	Time      time.Time `json:"time"`
	Applied   bool      `json:"applied"`
	Error     string    `json:"error,omitempty"`
	Started   []string  `json:"started"`
	Stopped   []string  `json:"stopped"`
	Restarted []string  `json:"restarted"`
	Unchanged []string  `json:"unchanged"`
}

func toReloadJSON(r *engine.Reload) *reloadJSON {
	if r == nil {
		return nil
	}
	j := &reloadJSON{Time: r.Time, Applied: r.Err == nil, Started: r.Started, Stopped: r.Stopped, Restarted: r.Restarted, Unchanged: r.Unchanged}
	if r.Err != nil {
		j.Error = r.Err.Error()
	}
	return j
}
