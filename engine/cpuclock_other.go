//go:build !linux

package engine

import "time"

// threadClock falls back to wall time where the thread's CPU clock cannot
// be read from another thread.
type threadClock struct{}

func lockThreadClock() threadClock { return threadClock{} }

func unlockThreadClock() {}

var clockStart = time.Now()

func (threadClock) now() time.Duration { return time.Since(clockStart) }
