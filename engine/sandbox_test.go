package engine

import (
	"strings"
	"testing"
	"time"
)

// newTestRunner compiles src with the given time limit and returns a
// runner, as one worker would have.
func newTestRunner(t *testing.T, src string, timeout time.Duration) *jsRunner {
	t.Helper()
	tr, err := compileTransform("test.js", scriptLoc{}, src, timeout)
	if err != nil {
		t.Fatal(err)
	}
	r, err := tr.newRunner()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A fast document right after a slow one is never failed by the slow
// one's interrupt (the old timer.Stop/ClearInterrupt race did).
func TestTransformTimeoutDoesNotReachNextCall(t *testing.T) {
	r := newTestRunner(t, `function transform(doc) {
		if (doc.slow) { for (;;) {} }
		let s = 0; for (let i = 0; i < 1000; i++) s += i;
		return { s: s };
	}`, 50*time.Millisecond)
	for round := 0; round < 3; round++ {
		slow := doc("slow", "slow", true)
		_, err := r.run(&slow, nil)
		if err == nil || !strings.Contains(err.Error(), "timed out after 50ms of CPU time") {
			t.Fatalf("slow document: %v", err)
		}
		for i := 0; i < 200; i++ {
			c := doc("fast")
			recs, err := r.run(&c, nil)
			if err != nil || len(recs) != 1 {
				t.Fatalf("round %d, fast document %d after a slow one: %v", round, i, err)
			}
		}
	}
}

// The limit counts the CPU time of the call, not time the thread did not
// run (a stopped process, a loaded host): a call whose thread sleeps past
// the limit is not interrupted.
func TestTransformTimeIsCPUTime(t *testing.T) {
	if !cpuClock {
		t.Skip("no thread CPU clock on this system")
	}
	r := newTestRunner(t, `function transform(doc) { return { ok: true }; }`, 20*time.Millisecond)
	r.guard.begin()
	time.Sleep(100 * time.Millisecond) // the thread is off CPU, as if the process were stopped
	_, err := r.fn(nil, r.vm.ToValue(map[string]any{}))
	r.guard.end()
	if err != nil {
		t.Fatalf("a call that used no CPU time was interrupted: %v", err)
	}
}
