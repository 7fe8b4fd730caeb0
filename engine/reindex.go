package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// ReindexOptions tune Reindex.
type ReindexOptions struct {
	Log *slog.Logger
	// KeepOld keeps the destinations that the rebuilt ones replace.
	KeepOld bool
	// Progress, when set, is called about every Every with the reindex's
	// progress (default every second).
	Progress func(ReindexProgress)
	Every    time.Duration
	Metrics  *Metrics
	// Resume says how to go on after a reindex that stopped while
	// flipping: "flipped" (the flips happened: catch up) or "restart"
	// (rebuild from the start).
	Resume string
	// LeaseTTL, when positive and the checkpoint store keeps leases, makes
	// the reindex hold the lease NAME.reindex while it runs: a second
	// reindex of the pillow refuses to start rather than share the
	// reindex's checkpoints and shadow destinations.
	LeaseTTL time.Duration
	// Holder names this process in the lease; default NewHolder().
	Holder string

	lease *leaseKeeper
}

// flipping marked the catch-up checkpoint while the flips were under way,
// before NAME.reindex-flipping.
const flipping = "flipping:"

// ReindexProgress is how far a reindex is.
type ReindexProgress struct {
	Phase  string // "rebuild" (into the new destinations) or "catch-up" (after the flip)
	Done   int64  // the checkpoint's sequence number
	Target int64  // the sequence number the phase runs to
	Seen   int64  // changes read in this run
	Rate   float64
	ETA    time.Duration // -1 when unknown
}

// Reindex rebuilds a pillow's rebuildable sinks (see Rebuildable) from the
// start of its feed while the live pillow keeps running: it fills new
// destinations up to the feed's position when it started, flips them live
// (alias, table rename), then reads what the live pillow wrote into the old
// ones meanwhile again into the new ones, up to the feed's position after
// the flip. From the flip on, the live pillow's own writes go to the new
// destinations. It is resumable: interrupted, it goes on from its own
// checkpoints (NAME.reindex, then NAME.reindex-catchup). Failed changes go
// to the live pillow's error store, which retries them into the new
// destinations.
func Reindex(ctx context.Context, s *Spec, opts ReindexOptions) error {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Every == 0 {
		opts.Every = time.Second
	}
	log := opts.Log.With("pillow", s.Name)
	pc, ok := s.source.(PendingCounter)
	if !ok {
		return fmt.Errorf("pillow %s: its source cannot tell the feed's position, which a reindex needs", s.Name)
	}
	if s.cps == nil {
		return fmt.Errorf("pillow %s: no checkpoint store to keep the reindex's position in", s.Name)
	}
	var rebuild []Rebuildable
	var live []NamedSink
	for _, o := range s.outputs {
		if r, ok := o.Sink.(Rebuildable); ok {
			rebuild = append(rebuild, r)
			live = append(live, o)
		} else {
			log.Warn("sink is not rebuilt by a reindex; it keeps what the live pillow writes", "sink", o.Name)
		}
	}
	if len(rebuild) == 0 {
		var names []string
		for _, o := range s.outputs {
			names = append(names, o.Name)
		}
		return fmt.Errorf("pillow %s: none of its sinks (%s) can be rebuilt by a reindex; the README's reindex section says which can", s.Name, strings.Join(names, ", "))
	}
	rebuildName, catchupName := s.Name+".reindex", s.Name+".reindex-catchup"
	if ls, ok := s.cps.(LeaseStore); ok && opts.LeaseTTL > 0 {
		if opts.Holder == "" {
			opts.Holder = NewHolder()
		}
		k := newLeaseKeeper(ls, rebuildName, opts.Holder, opts.LeaseTTL, log)
		release, err := k.hold(ctx, false)
		if errors.Is(err, ErrLeaseHeld) {
			_, holder, _ := k.state()
			return fmt.Errorf("pillow %s: another reindex of it is running (%s); wait for it to end or stop it", s.Name, holder)
		}
		if err != nil {
			return fmt.Errorf("pillow %s: taking the reindex's lease: %w", s.Name, err)
		}
		defer release()
		opts.lease = k
	}
	catchupAt, err := s.cps.LoadCheckpoint(ctx, catchupName)
	if err != nil {
		return fmt.Errorf("pillow %s: %w", s.Name, err)
	}
	// A mark saved before the flips (the position the catch-up starts
	// from) tells a later run that it may have stopped halfway. It has a
	// checkpoint of its own, NAME.reindex-flipping, holding a sequence id
	// as any store takes; earlier versions prefixed the catch-up's.
	flipName := s.Name + ".reindex-flipping"
	flipAt, err := s.cps.LoadCheckpoint(ctx, flipName)
	if err != nil {
		return fmt.Errorf("pillow %s: %w", s.Name, err)
	}
	if at, ok := strings.CutPrefix(catchupAt, flipping); ok {
		flipAt = at
	}
	if flipAt != "" && flipAt != "0" {
		// Stopped while flipping: whether each flip happened is not known.
		switch opts.Resume {
		case "flipped":
			catchupAt = flipAt
		case "restart":
			catchupAt = "0"
			if err := s.cps.SaveCheckpoint(ctx, rebuildName, "0"); err != nil {
				return fmt.Errorf("pillow %s: %w", s.Name, err)
			}
		default:
			return fmt.Errorf("pillow %s: the last reindex stopped while flipping to the rebuilt destinations; "+
				"check them, then run it again with --resume flipped (the alias or table now is the rebuilt one) "+
				"or --resume restart (it is not: rebuild from the start)", s.Name)
		}
		for _, cp := range [][2]string{{catchupName, catchupAt}, {flipName, "0"}} {
			if err := s.cps.SaveCheckpoint(ctx, cp[0], cp[1]); err != nil {
				return fmt.Errorf("pillow %s: %w", s.Name, err)
			}
		}
	}
	if catchupAt == "" || catchupAt == "0" {
		targets, err := rebuildTargets(ctx, s, rebuild, live, log)
		if err != nil {
			return err
		}
		end, err := pc.Pending(ctx, "0")
		if err != nil {
			return fmt.Errorf("pillow %s: %w", s.Name, err)
		}
		log.Info("reindex: rebuilding from the start of the feed", "to", end)
		at, err := runUntil(ctx, s, targets, rebuildName, end, "rebuild", opts)
		if err != nil {
			return err
		}
		// The catch-up starts where the rebuild ended.
		if err := s.cps.SaveCheckpoint(ctx, flipName, at); err != nil {
			return fmt.Errorf("pillow %s: %w", s.Name, err)
		}
		// The flips are not interrupted by ctx: a half-done flip is worse
		// than a late exit.
		flipCtx := context.WithoutCancel(ctx)
		if err := opts.lease.check(); err != nil {
			return fmt.Errorf("pillow %s: %w", s.Name, err)
		}
		for i, r := range rebuild {
			what, err := r.Promote(flipCtx, opts.KeepOld)
			if err != nil {
				return fmt.Errorf("pillow %s: sink %s: flipping to the rebuilt destination: %w", s.Name, live[i].Name, err)
			}
			log.Info("reindex: flipped", "sink", live[i].Name, "what", what)
		}
		for _, cp := range [][2]string{{catchupName, at}, {flipName, "0"}} {
			if err := s.cps.SaveCheckpoint(flipCtx, cp[0], cp[1]); err != nil {
				return fmt.Errorf("pillow %s: %w", s.Name, err)
			}
		}
	} else {
		log.Info("reindex: resuming the catch-up after the flip", "from", catchupAt)
	}
	end, err := pc.Pending(ctx, "0")
	if err != nil {
		return fmt.Errorf("pillow %s: %w", s.Name, err)
	}
	caughtUp, err := runUntil(ctx, s, live, catchupName, end, "catch-up", opts)
	if err != nil {
		return err
	}
	// A live checkpoint past the feed's end belongs to a database that was
	// recreated since (the live pillow stopped when its feed went back):
	// the rebuilt sinks hold the new database; the live pillow goes on
	// from where the reindex ended.
	liveAt, err := s.cps.LoadCheckpoint(ctx, s.Name)
	if err != nil {
		return fmt.Errorf("pillow %s: %w", s.Name, err)
	}
	feedEnd, err := pc.Pending(ctx, "0")
	if err != nil {
		return fmt.Errorf("pillow %s: %w", s.Name, err)
	}
	if seqNumber(liveAt) > feedEnd && caughtUp != "" {
		if err := s.cps.SaveCheckpoint(ctx, s.Name, caughtUp); err != nil {
			return fmt.Errorf("pillow %s: %w", s.Name, err)
		}
		log.Warn("reindex: the live pillow's checkpoint was past the end of the feed (its database was recreated); it now goes on from where the reindex ended",
			"was", liveAt, "now", caughtUp)
	}
	for _, n := range []string{rebuildName, catchupName} {
		if err := s.cps.SaveCheckpoint(ctx, n, "0"); err != nil {
			return fmt.Errorf("pillow %s: %w", s.Name, err)
		}
	}
	log.Info("reindex: complete")
	return nil
}

// rebuildTargets returns the sinks that write into the rebuilt
// destinations. A rebuild checkpoint (NAME.reindex) is resumed only into
// the destinations, and under the definition, it was saved for: its
// identity (NAME.reindex-for, a digest of it) is the pillow's hash and
// each destination's creation id. Anything else (a shadow table dropped, a half-built index
// deleted, a changed mapping or transform) starts from the beginning, into
// destinations made anew.
func rebuildTargets(ctx context.Context, s *Spec, rebuild []Rebuildable, live []NamedSink, log *slog.Logger) ([]NamedSink, error) {
	rebuildName, forName := s.Name+".reindex", s.Name+".reindex-for"
	at, err := s.cps.LoadCheckpoint(ctx, rebuildName)
	if err != nil {
		return nil, fmt.Errorf("pillow %s: %w", s.Name, err)
	}
	saved, err := s.cps.LoadCheckpoint(ctx, forName)
	if err != nil {
		return nil, fmt.Errorf("pillow %s: %w", s.Name, err)
	}
	targetsFor := func(fresh bool) ([]NamedSink, string, error) {
		var targets []NamedSink
		identity := "definition " + s.Hash
		for i, r := range rebuild {
			t, id, err := r.RebuildTarget(ctx, fresh)
			if err != nil {
				return nil, "", fmt.Errorf("pillow %s: sink %s: %w", s.Name, live[i].Name, err)
			}
			targets = append(targets, NamedSink{Name: live[i].Name, Sink: t})
			identity += "; sink " + live[i].Name + ": " + id
		}
		return targets, identity, nil
	}
	// Kept in the checkpoint store in the form of a sequence id, which any
	// store takes.
	key := func(identity string) string {
		sum := sha256.Sum256([]byte(identity))
		return "0-" + hex.EncodeToString(sum[:16])
	}
	resume := at != "" && at != "0"
	targets, identity, err := targetsFor(!resume)
	if err != nil {
		return nil, err
	}
	if resume && key(identity) != saved {
		why := "it was saved for other destinations or another definition of the pillow"
		if saved == "" {
			why = "it names no destinations"
		}
		log.Warn("reindex: not resuming from the rebuild's checkpoint: "+why+"; rebuilding from the beginning into new destinations",
			"checkpoint", at, "destinations", identity)
		if targets, identity, err = targetsFor(true); err != nil {
			return nil, err
		}
		resume = false
	}
	if resume {
		log.Info("reindex: resuming the rebuild", "from", at)
		return targets, nil
	}
	// The identity first: a checkpoint saved from now on belongs to it.
	log.Info("reindex: rebuilding into", "destinations", identity)
	if err := s.cps.SaveCheckpoint(ctx, forName, key(identity)); err != nil {
		return nil, fmt.Errorf("pillow %s: %w", s.Name, err)
	}
	if err := s.cps.SaveCheckpoint(ctx, rebuildName, "0"); err != nil {
		return nil, fmt.Errorf("pillow %s: %w", s.Name, err)
	}
	return targets, nil
}

// runUntil runs the pillow's feed into sinks, keeping its position under
// cpName, until the checkpoint reaches target (a sequence number), and
// returns that checkpoint.
func runUntil(ctx context.Context, s *Spec, sinks []NamedSink, cpName string, target int64, phase string, opts ReindexOptions) (string, error) {
	rs := *s
	rs.outputs = sinks
	p := NewPillow(&rs, RunOptions{Log: opts.Log, Metrics: opts.Metrics, CheckpointName: cpName, Since: "0", NoRetries: true})
	p.lease = opts.lease
	p.txSink = ""
	for _, o := range sinks {
		if ts, ok := o.Sink.(TransactionalSink); ok && ts.SharesStore(p.cps) {
			p.txSink = o.Name
			break
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	start, startSeen := time.Now(), int64(-1)
	tick := time.NewTicker(opts.Every)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err == nil {
				err = ctx.Err()
			}
			if err == nil {
				err = errors.New("the feed ended before the reindex reached its end")
			}
			return "", fmt.Errorf("pillow %s: reindex %s: %w", s.Name, phase, err)
		case <-tick.C:
		}
		cp, _ := p.Stats.Checkpoint.Load().(string)
		at := seqNumber(cp)
		seen := p.Stats.Seen.Load()
		if startSeen < 0 {
			startSeen = 0
		}
		if opts.Progress != nil {
			rate := float64(seen-startSeen) / time.Since(start).Seconds()
			eta := time.Duration(-1)
			if rate > 0 && at >= 0 {
				eta = time.Duration(float64(max(target-at, 0)) / rate * float64(time.Second))
			}
			opts.Progress(ReindexProgress{Phase: phase, Done: max(at, 0), Target: target, Seen: seen, Rate: rate, ETA: eta})
		}
		if max(at, 0) >= target {
			stop()
			if err := <-done; err != nil {
				return "", fmt.Errorf("pillow %s: reindex %s: %w", s.Name, phase, err)
			}
			cp, _ = p.Stats.Checkpoint.Load().(string)
			return cp, nil
		}
	}
}
