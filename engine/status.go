package engine

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// PillowStatus is what /status, /healthz and the metrics say of a pillow.
type PillowStatus struct {
	Pillow  string   `json:"pillow"`
	Running bool     `json:"running"`
	Healthy bool     `json:"healthy"`
	Reasons []string `json:"reasons,omitempty"`
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
		_, why := p.Health()
		st.Reasons = append(st.Reasons, why...)
		if fs, ok := in.spec.source.(FeedStatus); ok {
			last, limit := fs.LastActivity(), fs.StallAfter()
			st.LastActivity = last
			switch {
			case last.IsZero() && time.Since(p.started()) > limit:
				st.Reasons = append(st.Reasons, fmt.Sprintf("feed not connected after %s", time.Since(p.started()).Round(time.Second)))
			case !last.IsZero() && time.Since(last) > limit:
				st.Reasons = append(st.Reasons, fmt.Sprintf("feed silent for %s (heartbeats stopped)", time.Since(last).Round(time.Second)))
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
