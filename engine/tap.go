package engine

import (
	"sync"
	"sync/atomic"
)

// Event is what a tap sees of one change once its batch is done: written
// to every sink (or deleted from them), dropped by the filter, or recorded
// in the error store.
type Event struct {
	Seq     string
	ID      string
	Rev     string
	Deleted bool
	// Outcome is "written", "deleted", "filtered" or "failed".
	Outcome string
	// Records are what the change became (for a failure in a sink, the
	// records the other sinks took).
	Records []Record
	// Stage ("transform", "sink:NAME", …) and Error say why, when Outcome
	// is "failed".
	Stage, Error string
}

// Tap receives the events of a pillow's changes as they pass; see
// Pillow.Tap. A tap that does not keep up loses events rather than slowing
// the pillow: Dropped counts them.
type Tap struct {
	ch      chan Event
	dropped atomic.Int64
	taps    *taps
	once    sync.Once
}

// Events is where the events arrive. It is closed by Close.
func (t *Tap) Events() <-chan Event { return t.ch }

// Dropped is the number of events lost so far because the channel was full.
func (t *Tap) Dropped() int64 { return t.dropped.Load() }

// Close detaches the tap from its pillow and closes Events.
func (t *Tap) Close() {
	t.once.Do(func() {
		t.taps.remove(t)
		close(t.ch)
	})
}

// taps are a pillow's taps. The pillow checks active, an atomic load, after
// each batch: with no tap, nothing is built or copied.
type taps struct {
	active atomic.Bool
	mu     sync.Mutex
	set    map[*Tap]struct{}
}

// Tap attaches a tap to the pillow: every change that passes from now on
// is sent to it as an Event, in feed order, through a channel of buffer
// events. When the channel is full the event is dropped and counted.
func (p *Pillow) Tap(buffer int) *Tap {
	t := &Tap{ch: make(chan Event, max(buffer, 1)), taps: &p.taps}
	p.taps.mu.Lock()
	defer p.taps.mu.Unlock()
	if p.taps.set == nil {
		p.taps.set = map[*Tap]struct{}{}
	}
	p.taps.set[t] = struct{}{}
	p.taps.active.Store(true)
	return t
}

func (ts *taps) remove(t *Tap) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	delete(ts.set, t)
	ts.active.Store(len(ts.set) > 0)
}

// send gives every tap the events of a batch that is done.
func (ts *taps) send(b *batch) {
	evs := batchEvents(b)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for t := range ts.set {
		for _, e := range evs {
			select {
			case t.ch <- e:
			default:
				t.dropped.Add(1)
			}
		}
	}
}

// batchEvents tells what became of each change of a written batch.
func batchEvents(b *batch) []Event {
	type key struct{ id, rev string }
	recs := map[key][]Record{}
	for _, r := range b.records {
		k := key{r.DocID, r.Rev}
		recs[k] = append(recs[k], r)
	}
	fails := map[key]Failure{}
	for _, f := range b.failures {
		fails[key{f.Change.ID, f.Change.Rev}] = f
	}
	evs := make([]Event, len(b.changes))
	for i, c := range b.changes {
		k := key{c.ID, c.Rev}
		e := Event{Seq: c.Seq, ID: c.ID, Rev: c.Rev, Deleted: c.Deleted, Records: recs[k]}
		f, failed := fails[k]
		switch {
		case failed:
			e.Outcome = "failed"
			e.Stage, e.Error = f.Stage, f.Err.Error()
		case len(e.Records) == 0:
			e.Outcome = "filtered"
		case c.Deleted:
			e.Outcome = "deleted"
		default:
			e.Outcome = "written"
		}
		evs[i] = e
	}
	return evs
}
