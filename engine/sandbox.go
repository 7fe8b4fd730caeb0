package engine

import (
	"fmt"
	"runtime/metrics"
	"sync"
	"time"

	"github.com/dop251/goja"
)

// jsLimits bound one transform call.
type jsLimits struct {
	Timeout time.Duration // CPU time of the call
	Memory  ByteSize      // heap the call may grow, and the largest value one built-in may make
	Stack   int           // call depth
}

// interrupt is why a guard stopped a call (the value of goja's
// InterruptedError).
type interrupt int

const (
	stopTimeout interrupt = iota + 1
	stopMemory
)

// watchEvery is how often a running call's heap growth and CPU time are
// looked at.
const watchEvery = 2 * time.Millisecond

// callGuard enforces the limits of one runtime's calls from outside it. A
// timer fires while a call runs: every watchEvery it samples the heap, and
// interrupts the runtime when the heap has grown by more than the memory
// budget over the least sample of the call (a string doubled in a loop).
// The heap is the process's, garbage included: other workers' garbage
// counts too, but it cannot grow the heap by the budget without a GC (which
// lowers the least sample) unless the live heap is larger than the budget.
// At the call's time limit it measures the CPU time the call's thread has used and
// interrupts only if the limit is used up, else it waits for the time left.
//
// A late interrupt never reaches the next call: a call clears the
// runtime's interrupt flag when it starts, and the guard interrupts only
// under the lock that ends a call.
type callGuard struct {
	vm     *goja.Runtime
	limits jsLimits
	timer  *time.Timer
	sample []metrics.Sample

	mu      sync.Mutex
	running bool
	clock   threadClock
	wall    time.Time     // when the call started
	start   time.Duration // thread CPU time at the call's start; -1 before the first tick
	heap0   uint64        // the least heap sampled during the call; 0 before the first sample
	stopped interrupt     // why the guard interrupted the call, if it did
}

const heapMetric = "/memory/classes/heap/objects:bytes"

func newCallGuard(vm *goja.Runtime, limits jsLimits) *callGuard {
	g := &callGuard{vm: vm, limits: limits, sample: []metrics.Sample{{Name: heapMetric}}}
	g.timer = time.AfterFunc(time.Hour, g.check)
	g.timer.Stop()
	return g
}

// begin is called on the goroutine that makes the call, right before it.
// The CPU clock is read only if the call is still running at the first
// tick: the CPU time it used before is taken as the wall time, at most
// watchEvery.
func (g *callGuard) begin() {
	g.vm.ClearInterrupt()
	// Locked per call, not per chunk of calls: a goroutine locked for
	// long makes every preemption and GC pause a thread hand-off (measured:
	// 20% slower end to end, against 8% per call).
	clk := lockThreadClock()
	g.mu.Lock()
	g.running, g.clock, g.wall, g.start, g.heap0, g.stopped = true, clk, time.Now(), -1, 0, 0
	g.timer.Reset(min(g.limits.Timeout, watchEvery))
	g.mu.Unlock()
}

// end is called on the same goroutine, right after the call returned.
func (g *callGuard) end() {
	g.mu.Lock()
	g.running = false
	g.timer.Stop()
	g.mu.Unlock()
	unlockThreadClock()
}

func (g *callGuard) heap() uint64 {
	metrics.Read(g.sample)
	if g.sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return g.sample[0].Value.Uint64()
}

func (g *callGuard) check() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.running {
		return
	}
	now := g.clock.now()
	if g.start < 0 {
		g.start = now - min(time.Since(g.wall), watchEvery)
	}
	used := now - g.start
	if used >= g.limits.Timeout {
		g.stopped = stopTimeout
		g.vm.Interrupt(stopTimeout)
		return
	}
	h := g.heap()
	if g.heap0 == 0 || h < g.heap0 {
		g.heap0 = h
	} else if g.limits.Memory > 0 && h-g.heap0 > uint64(g.limits.Memory) {
		g.stopped = stopMemory
		g.vm.Interrupt(stopMemory)
		return
	}
	g.timer.Reset(min(g.limits.Timeout-used, watchEvery))
}

// memoryMessage is the error of a call stopped for memory.
func memoryMessage(m ByteSize) string { return fmt.Sprintf("transform used more than %s", m) }

// guardJS replaces the built-ins that make a value of a size given by an
// argument in one step, which no interrupt can stop, by wrappers that first
// check the size against the budget and throw a RangeError beyond it.
// Values grown step by step (a string doubled in a loop) are caught by the
// heap watchdog instead.
const guardJS = `(function (budget, msg) {
  "use strict";
  const check = (n) => { if (n > budget) throw new RangeError(msg); };
  const num = (v) => { v = Math.trunc(Number(v)); return v > 0 ? v : 0; };
  const len = (v) => (v === null || v === undefined ? 0 : String(v).length);
  const ownLen = (o) => (o !== null && (typeof o === "object" || typeof o === "string") ? num(o.length) : 0);
  const method = (obj, name, size) => {
    const orig = obj[name];
    const d = Object.getOwnPropertyDescriptor(obj, name);
    d.value = { [name](...args) { check(size(this, args)); return Reflect.apply(orig, this, args); } }[name];
    Object.defineProperty(d.value, "length", { value: orig.length });
    Object.defineProperty(obj, name, d);
  };
  // A constructor is replaced by a function that checks, then constructs
  // with the original; it shares the original's prototype, so instanceof,
  // subclasses and literals' constructor all see it.
  const ctor = (name, size) => {
    const orig = globalThis[name];
    const g = function (...args) {
      check(size(args));
      return new.target ? Reflect.construct(orig, args, new.target === g ? orig : new.target) : Reflect.apply(orig, undefined, args);
    };
    Object.defineProperty(g, "name", { value: name });
    Object.defineProperty(g, "length", { value: orig.length });
    for (const k of Reflect.ownKeys(orig)) {
      if (k !== "prototype" && k !== "name" && k !== "length") Object.defineProperty(g, k, Object.getOwnPropertyDescriptor(orig, k));
    }
    Object.defineProperty(g, "prototype", { value: orig.prototype });
    Object.setPrototypeOf(g, Object.getPrototypeOf(orig));
    Object.defineProperty(orig.prototype, "constructor", { value: g, writable: true, configurable: true });
    Object.defineProperty(globalThis, name, { value: g, writable: true, configurable: true });
  };
  const S = String.prototype, A = Array.prototype;
  method(S, "repeat", (s, a) => len(s) * num(a[0]));
  method(S, "padStart", (s, a) => num(a[0]));
  method(S, "padEnd", (s, a) => num(a[0]));
  method(S, "concat", (s, a) => a.reduce((n, x) => n + len(x), len(s)));
  method(A, "fill", (o, a) => ownLen(o) * 16);
  method(A, "join", (o, a) => {
    const n = ownLen(o);
    const sep = a[0] === undefined ? 1 : len(a[0]);
    check(n * 16);
    let size = n > 0 ? (n - 1) * sep : 0;
    for (let i = 0; i < n; i++) {
      const x = o[i];
      if (x !== null && typeof x !== "object" && typeof x !== "function" && typeof x !== "symbol") size += len(x);
    }
    return size;
  });
  ctor("Array", (a) => (a.length === 1 && typeof a[0] === "number" ? num(a[0]) * 16 : 0));
  const from = Array.from;
  Object.defineProperty(Array, "from", { value: function from_(src, ...rest) { check(ownLen(Object(src)) * 16); return Reflect.apply(from, this, [src, ...rest]); }, writable: true, configurable: true });
  ctor("ArrayBuffer", (a) => num(a[0]));
  for (const [name, bpe] of [["Int8Array", 1], ["Uint8Array", 1], ["Uint8ClampedArray", 1], ["Int16Array", 2], ["Uint16Array", 2],
      ["Int32Array", 4], ["Uint32Array", 4], ["Float32Array", 4], ["Float64Array", 8], ["BigInt64Array", 8], ["BigUint64Array", 8]]) {
    if (typeof globalThis[name] !== "function") continue;
    ctor(name, (a) => {
      const x = a[0];
      if (typeof x === "number") return num(x) * bpe;
      if (x !== null && typeof x === "object" && !(x instanceof ArrayBuffer)) return ownLen(x) * bpe;
      return 0;
    });
  }
})`

// installGuards sets up the memory guards of vm before the script runs.
func installGuards(vm *goja.Runtime, l jsLimits) error {
	if l.Stack > 0 {
		vm.SetMaxCallStackSize(l.Stack)
	}
	if l.Memory <= 0 {
		return nil
	}
	v, err := vm.RunString(guardJS)
	if err != nil {
		return err
	}
	f, _ := goja.AssertFunction(v)
	_, err = f(goja.Undefined(), vm.ToValue(int64(l.Memory)), vm.ToValue(memoryMessage(l.Memory)))
	return err
}
