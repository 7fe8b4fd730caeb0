package engine

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Runner runs a set of pillows, one goroutine each, and applies new
// definitions of the set (a reload) without touching the pillows that did
// not change.
type Runner struct {
	opts RunOptions
	log  *slog.Logger

	mu      sync.Mutex // serialises Apply and Stop
	running map[string]*instance
	ended   chan struct{} // a pillow ended; see Wait
	stopped bool
	last    *Reload
}

// instance is one run of a pillow.
type instance struct {
	spec   *Spec
	pillow *Pillow
	cancel context.CancelFunc
	done   chan struct{}
	err    error        // set before done closes
	lease  *leaseKeeper // nil: the pillow runs without a lease
	lag    lagWatch
}

// Reload is the outcome of applying a set of pillows.
type Reload struct {
	Time                                   time.Time
	Err                                    error // the load errors when the set was refused
	Started, Stopped, Restarted, Unchanged []string
}

// NewRunner makes a runner; opts apply to every pillow.
func NewRunner(opts RunOptions) *Runner {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	if opts.Holder == "" {
		opts.Holder = NewHolder()
	}
	return &Runner{opts: opts, log: opts.Log, running: map[string]*instance{}, ended: make(chan struct{}, 1)}
}

// Apply makes specs the running set: pillows whose definition (Spec.Hash)
// did not change keep running untouched; changed ones are stopped (they
// drain and checkpoint) and then started again from their checkpoint with
// the new definition, so that there are never two copies of one pillow;
// removed ones are stopped; new ones are started. A pillow that had ended
// with an error is started again.
func (r *Runner) Apply(specs []*Spec) *Reload {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := &Reload{Time: time.Now()}
	if r.stopped {
		return res
	}
	want := map[string]*Spec{}
	for _, s := range specs {
		want[s.Name] = s
	}
	var stop []*instance
	for name, in := range r.running {
		s, keep := want[name]
		switch {
		case !keep:
			res.Stopped = append(res.Stopped, name)
			stop = append(stop, in)
			delete(r.running, name)
		case s.Hash != in.spec.Hash || in.failed():
			res.Restarted = append(res.Restarted, name)
			stop = append(stop, in)
			delete(r.running, name)
		default:
			res.Unchanged = append(res.Unchanged, name)
			delete(want, name)
		}
	}
	for _, in := range stop {
		in.cancel()
	}
	for _, in := range stop {
		<-in.done
	}
	restarted := map[string]bool{}
	for _, n := range res.Restarted {
		restarted[n] = true
	}
	for name, s := range want {
		if !restarted[name] {
			res.Started = append(res.Started, name)
		}
		r.start(s)
	}
	for _, l := range [][]string{res.Started, res.Stopped, res.Restarted, res.Unchanged} {
		sort.Strings(l)
	}
	r.last = res
	r.opts.Metrics.reload(res)
	return res
}

// Refused records a reload whose directory did not load: nothing changes.
func (r *Runner) Refused(err error) *Reload {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := &Reload{Time: time.Now(), Err: err}
	for name := range r.running {
		res.Unchanged = append(res.Unchanged, name)
	}
	sort.Strings(res.Unchanged)
	r.last = res
	r.opts.Metrics.reload(res)
	return res
}

// LastReload is the outcome of the last Apply or Refused.
func (r *Runner) LastReload() *Reload {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

func (in *instance) failed() bool {
	select {
	case <-in.done:
		return in.err != nil
	default:
		return false
	}
}

func (r *Runner) start(s *Spec) {
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{spec: s, pillow: NewPillow(s, r.opts), cancel: cancel, done: make(chan struct{})}
	if ls, ok := in.pillow.cps.(LeaseStore); ok && r.opts.LeaseTTL > 0 {
		in.lease = newLeaseKeeper(ls, s.Name, r.opts.Holder, r.opts.LeaseTTL, in.pillow.log)
		in.pillow.lease = in.lease
	}
	r.running[s.Name] = in
	go func() {
		in.err = in.run(ctx)
		if in.err != nil {
			r.log.Error("pillow failed", "pillow", s.Name, "error", in.err)
		}
		close(in.done)
		select {
		case r.ended <- struct{}{}:
		default:
		}
	}()
}

// run runs the pillow; under a lease, each time the process holds it,
// going back to standby when it is lost.
func (in *instance) run(ctx context.Context) error {
	go in.watchLag(ctx)
	if in.lease == nil {
		return in.pillow.Run(ctx)
	}
	for {
		release, err := in.lease.hold(ctx, true)
		if err != nil {
			return nil // stopped while waiting
		}
		runCtx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(in.lease.lost, cancel)
		err = in.pillow.Run(runCtx)
		stop()
		cancel()
		lost := in.lease.lost.Err() != nil
		release()
		if ctx.Err() != nil || !lost {
			if errors.Is(err, ErrLeaseLost) {
				err = nil
			}
			return err
		}
		in.pillow.log.Warn("back to standby: this process no longer holds the lease")
	}
}

// Pillows returns the running pillows by name.
func (r *Runner) Pillows() map[string]*Pillow {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]*Pillow, len(r.running))
	for n, in := range r.running {
		m[n] = in.pillow
	}
	return m
}

// Wait blocks until every pillow has ended (their sources ended, or they
// failed) or ctx is done, and returns the errors of the failed ones.
func (r *Runner) Wait(ctx context.Context) error {
	for {
		r.mu.Lock()
		var errs []error
		live := 0
		for _, in := range r.running {
			select {
			case <-in.done:
				if in.err != nil {
					errs = append(errs, in.err)
				}
			default:
				live++
			}
		}
		r.mu.Unlock()
		if live == 0 {
			return errors.Join(errs...)
		}
		select {
		case <-r.ended:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Stop stops every pillow (each drains and checkpoints) and waits for
// them; it returns the errors of those that failed.
func (r *Runner) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	for _, in := range r.running {
		in.cancel()
	}
	var errs []error
	for _, in := range r.running {
		<-in.done
		if in.err != nil {
			errs = append(errs, in.err)
		}
	}
	return errors.Join(errs...)
}
