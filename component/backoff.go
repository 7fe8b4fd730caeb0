package component

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is jittered exponential backoff, for sources and sinks that
// retry on their own: each Next is between half and all of the current
// delay, which then doubles, up to Max. Reset starts again from Min.
// The zero value waits from 100ms up to 30s.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the wait before the next attempt and doubles the delay.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = 100 * time.Millisecond
	}
	if hi <= 0 {
		hi = 30 * time.Second
	}
	if b.cur < lo {
		b.cur = lo
	}
	d := b.cur
	b.cur = min(b.cur*2, hi)
	return d/2 + rand.N(d/2+1)
}

// Reset makes the next wait start again from Min.
func (b *Backoff) Reset() { b.cur = 0 }

// Sleep waits d, or until ctx is done, and then returns ctx.Err().
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
