package engine

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// threadClock reads the CPU time used by one OS thread, from any thread.
// The goroutine that runs a transform call is locked to its thread for the
// call, so the clock counts the time the call used and nothing else: not
// the time the process was stopped (SIGSTOP) or waited for a CPU.
type threadClock struct{ id int32 }

// lockThreadClock locks the calling goroutine to its thread and returns
// that thread's clock; unlock with unlockThreadClock.
func lockThreadClock() threadClock {
	runtime.LockOSThread()
	// Linux's MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED).
	return threadClock{id: int32(^uint32(unix.Gettid())<<3 | 6)}
}

func unlockThreadClock() { runtime.UnlockOSThread() }

func (c threadClock) now() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(c.id, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
