package engine

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// PillowStatus is what /status, /healthz and the metrics say of a pillow.
type PillowStatus struct {
	Pillow  string `json:"pillow"`
	Running bool   `json:"running"`
	Healthy bool   `json:"healthy"`
	// Role is "active" when this process holds the pillow's lease and runs
	// it, "standby" when another process (LeaseHolder) does; "" when the
	// pillow runs without a lease.
	Role        string   `json:"role,omitempty"`
	LeaseHolder string   `json:"lease_holder,omitempty"`
	Reasons     []string `json:"reasons,omitempty"`
	// Checkpoint is the last position saved (or read at start).
	Checkpoint           string        `json:"checkpoint"`
	CheckpointAge        time.Duration `json:"-"`
	CheckpointAgeSeconds float64       `json:"checkpoint_age_seconds"`
	// Pending is the number of changes after the checkpoint, -1 if the
	// source cannot tell.
	Pending      int64     `json:"pending"`
	ErrorStore   int64     `json:"error_store"`
	Seen         int64     `json:"seen"`
	Filtered     int64     `json:"filtered"`
	Written      int64     `json:"written"`
	Failed       int64     `json:"failed"`
	LastActivity time.Time `json:"last_activity,omitzero"`
}

// Status reports on every pillow of the runner; sources are asked for
// pending changes within timeout.
func (r *Runner) Status(timeout time.Duration) []PillowStatus {
	r.mu.Lock()
	ins := make([]*instance, 0, len(r.running))
	for _, in := range r.running {
		ins = append(ins, in)
	}
	r.mu.Unlock()
	sort.Slice(ins, func(i, j int) bool { return ins[i].spec.Name < ins[j].spec.Name })
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out := make([]PillowStatus, len(ins))
	for i, in := range ins {
		out[i] = in.status(ctx)
	}
	return out
}

// Healthy reports whether every pillow is healthy, with the reasons of
// those that are not.
func (r *Runner) Healthy() (bool, []string) {
	var reasons []string
	for _, st := range r.Status(2 * time.Second) {
		for _, why := range st.Reasons {
			reasons = append(reasons, st.Pillow+": "+why)
		}
	}
	return len(reasons) == 0, reasons
}

func (in *instance) status(ctx context.Context) PillowStatus {
	p := in.pillow
	st := PillowStatus{Pillow: in.spec.Name, Running: true, Pending: -1}
	select {
	case <-in.done:
		st.Running = false
		if in.err != nil {
			st.Reasons = append(st.Reasons, "failed: "+in.err.Error())
		}
	default:
		if in.lease != nil {
			active, holder, storeErr := in.lease.state()
			st.Role, st.LeaseHolder = "active", holder
			if !active {
				st.Role = "standby"
				if storeErr != nil {
					st.Reasons = append(st.Reasons, "cannot read the lease: "+storeErr.Error())
				}
				break // else healthy: it waits as it should
			}
		}
		_, why := p.Health()
		st.Reasons = append(st.Reasons, why...)
		if fs, ok := in.spec.source.(FeedStatus); ok {
			st.LastActivity = fs.LastActivity()
			// The feed is judged once the pillow reads it (its sinks
			// are open).
			if reading := p.reading(); !reading.IsZero() {
				if why := feedProblem(fs, reading); why != "" {
					st.Reasons = append(st.Reasons, why)
				}
			}
		}
		if w := in.lagWindow(); w > 0 {
			if why := in.lag.behind(time.Now(), w); why != "" {
				st.Reasons = append(st.Reasons, why)
			}
		}
	}
	st.Healthy = len(st.Reasons) == 0
	st.Checkpoint, _ = p.Stats.Checkpoint.Load().(string)
	saved := p.checkpointed()
	if saved.IsZero() {
		saved = p.started()
	}
	if !saved.IsZero() {
		st.CheckpointAge = time.Since(saved)
		st.CheckpointAgeSeconds = st.CheckpointAge.Seconds()
	}
	st.ErrorStore = p.errCount.Load()
	st.Seen, st.Filtered = p.Stats.Seen.Load(), p.Stats.Filtered.Load()
	st.Written, st.Failed = p.Stats.Written.Load(), p.Stats.Failed.Load()
	if pc, ok := in.spec.source.(PendingCounter); ok && st.Checkpoint != "" {
		if n, err := pc.Pending(ctx, st.Checkpoint); err == nil {
			st.Pending = n
		}
	}
	return st
}

// lagWatch keeps samples of a pillow's pending changes, to tell a pillow
// that falls behind from one that catches up.
type lagWatch struct {
	mu      sync.Mutex
	samples []lagSample
}

type lagSample struct {
	at      time.Time
	pending int64
}

// lagWindow is how long pending changes may grow; 0: never checked.
func (in *instance) lagWindow() time.Duration {
	w := in.pillow.opts.LagWindow
	switch {
	case w < 0:
		return 0
	case w == 0:
		return 3 * time.Minute
	}
	return w
}

// watchLag samples the pending changes six times per lag window while the
// pillow runs, until ctx is done.
func (in *instance) watchLag(ctx context.Context) {
	window := in.lagWindow()
	pc, ok := in.spec.source.(PendingCounter)
	if window == 0 || !ok {
		return
	}
	tick := time.NewTicker(max(window/6, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cp, _ := in.pillow.Stats.Checkpoint.Load().(string)
		active := in.lease == nil
		if !active {
			active, _, _ = in.lease.state()
		}
		if cp == "" || !active {
			in.lag.reset()
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, max(window/6, time.Second))
		n, err := pc.Pending(qctx, cp)
		cancel()
		if err != nil {
			continue
		}
		in.lag.add(time.Now(), n, window)
	}
}

func (w *lagWatch) reset() {
	w.mu.Lock()
	w.samples = nil
	w.mu.Unlock()
}

func (w *lagWatch) add(at time.Time, pending int64, window time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.samples = append(w.samples, lagSample{at, pending})
	// Keep one sample at least a window old, and those after it.
	for len(w.samples) > 2 && !w.samples[1].at.After(at.Add(-window)) {
		w.samples = w.samples[1:]
	}
}

// behind returns a reason when the pending changes grew over the whole
// window without ever reaching zero.
func (w *lagWatch) behind(now time.Time, window time.Duration) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.samples) < 2 {
		return ""
	}
	first, last := w.samples[0], w.samples[len(w.samples)-1]
	if first.at.After(now.Add(-window)) || last.pending <= first.pending {
		return ""
	}
	for _, s := range w.samples[1:] {
		if s.pending == 0 {
			return ""
		}
	}
	return fmt.Sprintf("falling behind: %d changes pending, up from %d %s ago",
		last.pending, first.pending, last.at.Sub(first.at).Round(time.Second))
}

// feedProblem says why a live feed is not delivering, or "".
func feedProblem(fs FeedStatus, started time.Time) string {
	last, limit := fs.LastActivity(), fs.StallAfter()
	var down error
	var since time.Time
	if fe, ok := fs.(FeedErrorer); ok {
		since, down = fe.FeedError()
	}
	// A server that cannot be reached is said at once, give or take a
	// retry: waiting for the stall limit would only hide it.
	if down != nil && time.Since(since) > min(limit, unreachableAfter) {
		return down.Error()
	}
	silent := time.Since(last)
	if last.IsZero() || last.Before(started) {
		silent = time.Since(started)
	}
	if silent <= limit {
		return ""
	}
	why := fmt.Sprintf("feed silent for %s", silent.Round(time.Second))
	switch {
	case down != nil:
		why += ": " + down.Error()
	case last.IsZero():
		why = fmt.Sprintf("feed not connected after %s", silent.Round(time.Second))
	default:
		why += " (heartbeats stopped)"
	}
	return why
}

// unreachableAfter is how long a source may fail to connect before the
// pillow is unhealthy.
const unreachableAfter = 3 * time.Second
