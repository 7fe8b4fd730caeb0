package engine

import (
	"context"
	"log/slog"
	"time"
)

// loadFailed reads which documents have an entry in the error store.
func (p *Pillow) loadFailed(ctx context.Context) error {
	p.failed = map[string]bool{}
	var entries []ErrorEntry
	err := p.tracked(ctx, p.log, "error store", "read the error store", func() error {
		var err error
		entries, err = p.errs.List(ctx, p.Spec.Name)
		return err
	})
	if err != nil {
		return err
	}
	for _, e := range entries {
		p.failed[e.DocID] = true
	}
	p.errCount.Store(int64(len(entries)))
	if len(entries) > 0 {
		p.log.Info("failed changes waiting in the error store", "count", len(entries))
	}
	return nil
}

// recordFailure stores f in the error store, retrying until it is stored:
// the checkpoint must not pass a change whose failure is not recorded.
func (p *Pillow) recordFailure(ctx context.Context, f Failure) error {
	return p.tracked(ctx, p.log, "error store", "record failure", func() error { return p.tryRecord(ctx, f) })
}

// tryRecord stores f in the error store once.
func (p *Pillow) tryRecord(ctx context.Context, f Failure) error {
	e, err := p.errs.Record(ctx, f, p.Spec.Errors.Next)
	if err != nil {
		return err
	}
	if _, logged := p.errs.(LogErrorStore); !logged {
		p.failed[f.Change.ID] = true
		p.errCount.Store(int64(len(p.failed)))
		if e.NextAttempt.IsZero() {
			p.log.Error("change failed; giving up after the last attempt", ClipAttr("id", f.Change.ID), "attempts", e.Attempts, "stage", f.Stage, slog.String("error", ClipWords(f.Err.Error())))
		} else {
			p.log.Warn("change failed; stored for a retry", ClipAttr("id", f.Change.ID), "attempts", e.Attempts, "next_attempt", e.NextAttempt.Format(time.RFC3339), "stage", f.Stage, slog.String("error", ClipWords(f.Err.Error())))
		}
	}
	return nil
}

// clearSucceeded removes the error store's entries of documents that went
// through this batch without failing: a fixed document, or a retry that
// worked.
func (p *Pillow) clearSucceeded(ctx context.Context, b *batch) error {
	if len(p.failed) == 0 {
		return nil
	}
	bad := map[string]bool{}
	for _, f := range b.failures {
		bad[f.Change.ID] = true
	}
	for _, c := range b.changes {
		if !p.failed[c.ID] || bad[c.ID] {
			continue
		}
		err := p.tracked(ctx, p.log, "error store", "clear error", func() error { return p.errs.Clear(ctx, p.Spec.Name, c.ID) })
		if err != nil {
			return err
		}
		delete(p.failed, c.ID)
		p.errCount.Store(int64(len(p.failed)))
		p.log.Info("failed change now processed; error cleared", ClipAttr("id", c.ID))
	}
	return nil
}

// retrier sends the documents whose retry is due, read again from the
// source, to the batcher. Entries recorded under another definition of the
// pillow are retried at once, even those it had given up on: the new
// definition may have fixed them.
func (p *Pillow) retrier(ctx context.Context, out chan<- []Change) {
	tried := map[string]bool{} // entries of older definitions tried in this run
	tick := time.NewTicker(p.Spec.Errors.Poll.D())
	defer tick.Stop()
	for {
		// A retry in flight when the list is read may have been recorded
		// after the store answered: its entry may still look due.
		inFlight := map[string]bool{}
		p.retrying.Range(func(k, _ any) bool { inFlight[k.(string)] = true; return true })
		entries, err := p.errs.List(ctx, p.Spec.Name)
		if err != nil && ctx.Err() == nil {
			p.log.Warn("reading the error store for retries", "error", err)
		} else if err == nil {
			p.errCount.Store(int64(len(entries)))
		}
		now := time.Now()
		var due []string
		for _, e := range entries {
			if e.DocID == "" {
				continue // an unreadable row: there is no document to read again
			}
			if _, busy := p.retrying.Load(e.DocID); busy || inFlight[e.DocID] {
				continue // its last retry is still being processed
			}
			switch {
			case e.Hash != p.Spec.Hash && !tried[e.DocID]:
				tried[e.DocID] = true
			case !e.NextAttempt.IsZero() && !e.NextAttempt.After(now):
			default:
				continue
			}
			due = append(due, e.DocID)
		}
		for len(due) > 0 && ctx.Err() == nil {
			n := min(len(due), p.Spec.Batch.Size)
			var cs []Change
			for _, id := range due[:n] {
				c, err := p.reader.ReadDoc(ctx, id)
				if err != nil {
					p.log.Warn("reading a document to retry it", ClipAttr("id", id), "error", err)
					continue
				}
				cs = append(cs, c)
			}
			due = due[n:]
			if len(cs) == 0 {
				continue
			}
			for _, c := range cs {
				p.retrying.Store(c.ID, true)
			}
			select {
			case out <- cs:
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
