package engine

// Linux has a thread CPU clock (cpuclock_linux.go): the limit is CPU time
// there, and this test runs wherever CI runs.

import (
	"testing"
	"time"
)

// The limit counts the CPU time of the call, not time the thread did not
// run (a stopped process, a loaded host): a call whose thread sleeps past
// the limit is not interrupted.
func TestTransformTimeIsCPUTime(t *testing.T) {
	r := newTestRunner(t, `function transform(doc) { return { ok: true }; }`, 20*time.Millisecond)
	r.guard.begin()
	time.Sleep(100 * time.Millisecond) // the thread is off CPU, as if the process were stopped
	_, err := r.fn(nil, r.vm.ToValue(map[string]any{}))
	r.guard.end()
	if err != nil {
		t.Fatalf("a call that used no CPU time was interrupted: %v", err)
	}
}
