package main

import (
	"sync"
	"time"

	"github.com/dimagi/ptop/engine"
)

// historySpan is how far back the status page's charts go.
const historySpan = time.Hour

// history keeps, per pillow, a sample of its rate (changes/s) and pending
// changes every interval over the last hour, in a ring of fixed size: its
// memory does not grow with the run.
type history struct {
	every time.Duration
	size  int

	mu      sync.Mutex
	pillows map[string]*series
}

type sample struct {
	at      time.Time
	rate    float64
	pending int64 // -1: the source cannot tell
}

// series is a ring of samples, oldest first from head.
type series struct {
	ring     []sample
	head, n  int
	lastSeen int64
	lastAt   time.Time
}

func newHistory(every time.Duration) *history {
	if every <= 0 {
		every = 5 * time.Second
	}
	size := int(historySpan/every) + 1
	size = min(max(size, 2), 7200)
	return &history{every: every, size: size, pillows: map[string]*series{}}
}

// run samples status every interval until stop is closed.
func (h *history) run(status func() []engine.PillowStatus, stop <-chan struct{}) {
	h.add(time.Now(), status())
	t := time.NewTicker(h.every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			h.add(now, status())
		}
	}
}

// add records one sample of every pillow; pillows no longer running are
// forgotten.
func (h *history) add(now time.Time, sts []engine.PillowStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	keep := make(map[string]*series, len(sts))
	for _, st := range sts {
		s := h.pillows[st.Pillow]
		if s == nil {
			s = &series{ring: make([]sample, h.size), lastSeen: st.Seen, lastAt: now}
		}
		keep[st.Pillow] = s
		rate := 0.0
		if dt := now.Sub(s.lastAt).Seconds(); dt > 0 {
			d := st.Seen - s.lastSeen
			if d < 0 { // restarted: its counters began again
				d = st.Seen
			}
			rate = float64(d) / dt
		}
		s.lastSeen, s.lastAt = st.Seen, now
		s.push(sample{at: now, rate: rate, pending: st.Pending})
	}
	h.pillows = keep
}

func (s *series) push(x sample) {
	if s.n < len(s.ring) {
		s.ring[(s.head+s.n)%len(s.ring)] = x
		s.n++
		return
	}
	s.ring[s.head] = x
	s.head = (s.head + 1) % len(s.ring)
}

// samples returns a copy of pillow's samples, oldest first.
func (h *history) samples(pillow string) []sample {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.pillows[pillow]
	if s == nil {
		return nil
	}
	out := make([]sample, s.n)
	for i := range out {
		out[i] = s.ring[(s.head+i)%len(s.ring)]
	}
	return out
}

// rate is the pillow's last sampled rate in changes/s.
func (h *history) rate(pillow string) float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.pillows[pillow]
	if s == nil || s.n == 0 {
		return 0
	}
	return s.ring[(s.head+s.n-1)%len(s.ring)].rate
}
