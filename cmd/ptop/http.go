package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
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

// serveHTTP serves /metrics, /healthz and /status on addr until the
// returned server is closed.
func serveHTTP(addr string, runner *engine.Runner, reg *prometheus.Registry, log *slog.Logger) (*http.Server, net.Addr, error) {
	reg.MustRegister(runner.Collector())
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
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		body := struct {
			Pillows    []engine.PillowStatus `json:"pillows"`
			LastReload *reloadJSON           `json:"last_reload,omitempty"`
		}{Pillows: runner.Status(5 * time.Second), LastReload: toReloadJSON(runner.LastReload())}
		if body.Pillows == nil {
			body.Pillows = []engine.PillowStatus{}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(body)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Error("http listener stopped", "error", err)
		}
	}()
	return srv, ln.Addr(), nil
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
