package engine

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus metrics of a process's pillows. The values
// that are read when scraped (health, checkpoint age, error store size)
// come from the Runner, through Runner.Collector.
type Metrics struct {
	changes      *prometheus.CounterVec
	records      *prometheus.CounterVec
	writeSeconds *prometheus.HistogramVec
	batchSize    *prometheus.HistogramVec
	rewinds      *prometheus.CounterVec
	recordSets   *prometheus.CounterVec
	reloads      *prometheus.CounterVec
	reloadOK     prometheus.Gauge
	reloadTime   prometheus.Gauge
}

// NewMetrics makes the metrics and registers them with reg (nil: kept
// unregistered, so counting costs the same and shows nowhere).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ptop_changes_total",
			Help: "Changes read from the feed, by what became of them: seen (all), filtered (dropped by the filter, design documents, skipped deletions), processed (written or deleted), failed (sent to the error store).",
		}, []string{"pillow", "outcome"}),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ptop_records_written_total",
			Help: "Records (indexes and deletes) a sink acknowledged.",
		}, []string{"pillow", "sink"}),
		writeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ptop_sink_write_seconds",
			Help:    "Time a sink took to acknowledge a batch, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"pillow", "sink"}),
		batchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ptop_batch_changes",
			Help:    "Changes per batch.",
			Buckets: []float64{1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000},
		}, []string{"pillow"}),
		rewinds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ptop_sequence_rewinds_total",
			Help: "Times a feed's sequence went backwards by its numeric prefix (a CouchDB cluster failover, a restored database).",
		}, []string{"pillow"}),
		recordSets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ptop_record_sets_saved_total",
			Help: "Record sets saved: documents whose set of record ids changed (see engine/recordsets.go).",
		}, []string{"pillow"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ptop_reloads_total",
			Help: "Reloads (SIGHUP), by result: applied or refused.",
		}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ptop_last_reload_success",
			Help: "1 if the last reload was applied, 0 if it was refused.",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ptop_last_reload_timestamp_seconds",
			Help: "When the last reload happened (Unix time).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.changes, m.records, m.writeSeconds, m.batchSize, m.rewinds, m.recordSets, m.reloads, m.reloadOK, m.reloadTime)
	}
	return m
}

// reload records a reload's outcome.
func (m *Metrics) reload(r *Reload) {
	ok, result := 1.0, "applied"
	if r.Err != nil {
		ok, result = 0, "refused"
	}
	m.reloads.WithLabelValues(result).Inc()
	m.reloadOK.Set(ok)
	m.reloadTime.Set(float64(r.Time.UnixNano()) / 1e9)
}

// seqNumber is the numeric prefix of a sequence id ("42" or "42-g1AA…"),
// or -1 when it has none.
func seqNumber(seq string) int64 {
	end := strings.IndexFunc(seq, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(seq)
	}
	n, err := strconv.ParseInt(seq[:end], 10, 64)
	if err != nil || end == 0 {
		return -1
	}
	return n
}

// runnerCollector reports, when scraped, what the Runner's pillows know.
type runnerCollector struct {
	r                                           *Runner
	healthy, checkpointAge, errorStore, pending *prometheus.Desc
	active                                      *prometheus.Desc
}

// Collector returns a prometheus.Collector of the runner's pillows'
// health, checkpoint age, error store size and pending changes.
func (r *Runner) Collector() prometheus.Collector {
	return &runnerCollector{
		r:             r,
		healthy:       prometheus.NewDesc("ptop_pillow_healthy", "1 if the pillow's feed is alive and its sinks take its batches.", []string{"pillow"}, nil),
		checkpointAge: prometheus.NewDesc("ptop_checkpoint_age_seconds", "Seconds since the pillow last saved its checkpoint (since it started, before the first).", []string{"pillow"}, nil),
		errorStore:    prometheus.NewDesc("ptop_error_store_entries", "Failed changes in the pillow's error store, as last read.", []string{"pillow"}, nil),
		pending:       prometheus.NewDesc("ptop_pending_changes", "Changes in the feed after the pillow's checkpoint.", []string{"pillow"}, nil),
		active:        prometheus.NewDesc("ptop_pillow_active", "1 if this process runs the pillow, 0 if it waits as a standby for the process that holds its lease.", []string{"pillow"}, nil),
	}
}

func (c *runnerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.healthy
	ch <- c.checkpointAge
	ch <- c.errorStore
	ch <- c.pending
	ch <- c.active
}

func (c *runnerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.r.Status(2 * time.Second) {
		h := 0.0
		if st.Healthy {
			h = 1
		}
		ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, h, st.Pillow)
		a := 1.0
		if st.Role == "standby" {
			a = 0
		}
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, a, st.Pillow)
		ch <- prometheus.MustNewConstMetric(c.checkpointAge, prometheus.GaugeValue, st.CheckpointAge.Seconds(), st.Pillow)
		ch <- prometheus.MustNewConstMetric(c.errorStore, prometheus.GaugeValue, float64(st.ErrorStore), st.Pillow)
		if st.Pending >= 0 {
			ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(st.Pending), st.Pillow)
		}
	}
}
