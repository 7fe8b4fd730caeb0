package component

import (
	"context"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	for i, hi := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		hi *= time.Millisecond
		if hi > time.Second {
			hi = time.Second
		}
		d := b.Next()
		if d < hi/2 || d > hi {
			t.Errorf("wait %d: %v, want between %v and %v", i, d, hi/2, hi)
		}
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Errorf("after Reset: %v", d)
	}
	var zero Backoff
	if d := zero.Next(); d < 50*time.Millisecond || d > 100*time.Millisecond {
		t.Errorf("zero Backoff's first wait: %v", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); err != context.Canceled {
		t.Errorf("Sleep on a done context: %v", err)
	}
}
