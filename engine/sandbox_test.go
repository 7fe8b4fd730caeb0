package engine

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// newTestRunner compiles src with the given time limit and returns a
// runner, as one worker would have.
func newTestRunner(t *testing.T, src string, timeout time.Duration) *jsRunner {
	t.Helper()
	tr, err := compileTransform("test.js", scriptLoc{}, src, jsLimits{Timeout: timeout, Memory: 256 << 20, Stack: 1000}, false)
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
		_, err := r.run(&slow, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "timed out after 50ms of CPU time") {
			t.Fatalf("slow document: %v", err)
		}
		for i := 0; i < 200; i++ {
			c := doc("fast")
			recs, err := r.run(&c, nil, nil)
			if err != nil || len(recs) != 1 {
				t.Fatalf("round %d, fast document %d after a slow one: %v", round, i, err)
			}
		}
	}
}

// Each hostile transform fails its own change with a clear reason, and
// the same runtime goes on with the next document.
func TestTransformLimits(t *testing.T) {
	const mem = "transform used more than 64 MiB"
	for _, tc := range []struct{ name, body, want string }{
		{"repeat", `"x".repeat(2 ** 33)`, mem},
		{"repeat of a long string", `"x".repeat(1048576).repeat(1 << 10)`, mem},
		{"padStart", `"x".padStart(2 ** 31)`, mem},
		{"padEnd", `"x".padEnd(2 ** 31, "ab")`, mem},
		{"concat", `const s = "x".repeat(1 << 25); s.concat(s, s)`, mem},
		{"Array(n).fill", `new Array(2 ** 31).fill(0)`, mem},
		{"Array(n) without new", `Array(2 ** 31)`, mem},
		{"constructor of a literal", `new ([].constructor)(2 ** 31)`, mem},
		{"fill after length", `const a = []; a.length = 2 ** 31; a.fill(0)`, mem},
		{"Array.from", `Array.from({ length: 2 ** 32 - 1 })`, mem},
		{"join", `new Array(1 << 16).fill("x".repeat(1 << 12)).join("")`, mem},
		{"Uint8Array", `new Uint8Array(2 ** 32)`, mem},
		{"Float64Array", `new Float64Array(2 ** 28)`, mem},
		{"typed array from array-like", `new Int32Array({ length: 2 ** 30 })`, mem},
		{"ArrayBuffer", `new ArrayBuffer(2 ** 32)`, mem},
		{"string doubled in a loop", `let s = "x"; for (;;) s += s;`, mem},
		{"array grown in a loop", `const a = [], s = "x".repeat(1048576); for (;;) a.push(s + a.length);`, mem},
		{"recursion through a built-in callback", `function f() { return [0].map(f); } f()`, "call stack exceeded 1000 frames"},
		{"plain recursion", `function f() { return f() + 1; } f()`, "call stack exceeded 1000 frames"},
		{"subclass of Array", `class A extends Array { constructor() { super(2 ** 31); } } new A()`, mem},
		{"endless loop", `for (;;) {}`, "timed out after 2s of CPU time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := compileTransform("test.js", scriptLoc{}, `function transform(doc) {
				if (doc.hostile) { `+tc.body+` }
				return { ok: doc._id };
			}`, jsLimits{Timeout: 2 * time.Second, Memory: 64 << 20, Stack: 1000}, false)
			if err != nil {
				t.Fatal(err)
			}
			r, err := tr.newRunner()
			if err != nil {
				t.Fatal(err)
			}
			bad := doc("bad", "hostile", true)
			if _, err := r.run(&bad, nil, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			ok := doc("ok")
			recs, err := r.run(&ok, nil, nil)
			if err != nil || len(recs) != 1 {
				t.Fatalf("the next document: %v %v", recs, err)
			}
		})
	}
}

// The guarded built-ins behave as the originals below the budget.
func TestTransformGuardsKeepBuiltins(t *testing.T) {
	r := newTestRunner(t, `function transform(doc) {
		class L extends Array {}
		const l = new L(); l.push(1, 2);
		return { checks: [
			[] instanceof Array, new Array(3).length === 3, Array(1, 2).length === 2, Array.isArray(new Array(2)),
			Array.from("abc").join("-") === "a-b-c", Array.of(7)[0] === 7, [].constructor === Array,
			l instanceof L && l instanceof Array && l.length === 2, Array.name === "Array", Array.length === 1,
			new Uint8Array(4).length === 4, new Uint8Array([1, 2]) instanceof Uint8Array, new Uint8Array(new ArrayBuffer(8)).length === 8,
			new ArrayBuffer(3).byteLength === 3, Uint8Array.BYTES_PER_ELEMENT === 1, Object.getPrototypeOf(Int8Array) === Object.getPrototypeOf(Uint8Array),
			"ab".repeat(3) === "ababab", "1".padStart(3, "0") === "001", "1".padEnd(3) === "1  ", "a".concat("b", 1) === "ab1",
			[1, null, "x"].join() === "1,,x", [[1, 2], 3].join(";") === "1,2;3", [0, 0].fill(5)[1] === 5, String.prototype.repeat.length === 1,
		] };
	}`, time.Second)
	c := doc("x")
	recs, err := r.run(&c, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, ok := range docOf(t, recs[0])["checks"].([]any) {
		if ok != true {
			t.Errorf("check %d failed", i)
		}
	}
}

// A filter cannot build a string larger than the budget; ordinary string
// operations and arithmetic still work, and an unknown name is still a
// compile error.
func TestFilterLimits(t *testing.T) {
	const mem = "filter: a string would be longer than 64 MiB"
	for _, tc := range []struct {
		src  string
		doc  map[string]any
		want string // error, or "true"/"false"
	}{
		{`len(reduce(1..34, #acc + #acc, "x")) > 0`, nil, mem},
		{`len(repeat("x", 1099511627776)) > 0`, nil, mem},
		{`len(join(map(1..100, repeat("x", 1048576)), "")) > 0`, nil, mem},
		{`len(replace(repeat("x", 1048576), "x", repeat("y", 100))) > 0`, nil, mem},
		{`doc.a + "-" + id == "x-1"`, map[string]any{"a": "x"}, "true"},
		{`doc.n + 1 == 3.0 && doc.n * 2 == 4.0`, map[string]any{"n": 2.0}, "true"},
		{`1 + 2 == 3 && "a" + "b" == "ab"`, nil, "true"},
		{`repeat("ab", 2) == "abab" && join(["a", "b"], "-") == "a-b" && join(["a", "b"]) == "ab" && replace("aXa", "X", "Y") == "aYa"`, nil, "true"},
		{`upper(doc.a + "b") == "XB" && (doc.a + "b") startsWith "x"`, map[string]any{"a": "x"}, "true"},
		{`len(reduce(1..10, #acc + #acc, "x")) == 1024`, nil, "true"},
	} {
		t.Run(tc.src, func(t *testing.T) {
			f, err := compileFilter(tc.src, 64<<20)
			if err != nil {
				t.Fatal(err)
			}
			r := &filterRunner{f: f}
			c := Change{ID: "1", Doc: tc.doc}
			ok, err := r.match(&c)
			got := fmt.Sprint(ok)
			if err != nil {
				got = err.Error()
			}
			if !strings.Contains(got, tc.want) {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
	if _, err := compileFilter(`doc.a + nosuch`, 64<<20); err == nil {
		t.Error("an unknown name compiled")
	}
}

// Nothing one call does to the built-ins reaches the next call: every
// intrinsic is frozen (the hidden ones too), so each attempt fails its own
// change and a later document sees the original.
func TestTransformCannotChangeBuiltins(t *testing.T) {
	for _, tc := range []struct{ name, attack string }{
		{"Math.max", `Math.max = () => "HACKED"`},
		{"JSON.stringify", `JSON.stringify = () => "HACKED"`},
		{"parseInt", `globalThis.parseInt = () => "HACKED"`},
		{"a new global", `globalThis.leak = 1`},
		{"Array.prototype", `Array.prototype.leak = 1`},
		{"String.prototype", `String.prototype.leak = 1`},
		{"Object.prototype", `Object.prototype.leak = 1`},
		{"Function.prototype", `Function.prototype.leak = 1`},
		{"array iterator prototype", `Object.getPrototypeOf([][Symbol.iterator]()).leak = 1`},
		{"iterator prototype", `Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]())).leak = 1`},
		{"map iterator prototype", `Object.getPrototypeOf(new Map().entries()).leak = 1`},
		{"set iterator prototype", `Object.getPrototypeOf(new Set().values()).leak = 1`},
		{"string iterator prototype", `Object.getPrototypeOf(""[Symbol.iterator]()).leak = 1`},
		{"regexp string iterator prototype", `Object.getPrototypeOf("a".matchAll(/a/g)).leak = 1`},
		{"generator function prototype", `Object.getPrototypeOf(function* () {}).leak = 1`},
		{"generator prototype", `Object.getPrototypeOf(function* () {}).prototype.leak = 1`},
		{"async function prototype", `Object.getPrototypeOf(async function () {}).leak = 1`},
		{"typed array constructor", `Object.getPrototypeOf(Uint8Array).leak = 1`},
		{"typed array prototype", `Object.getPrototypeOf(Uint8Array.prototype).leak = 1`},
		{"Promise.prototype", `Promise.prototype.leak = 1`},
		{"Date.prototype", `Date.prototype.leak = 1`},
		{"RegExp.prototype", `RegExp.prototype.leak = 1`},
		{"Map.prototype", `Map.prototype.leak = 1`},
		{"Error.prototype", `Error.prototype.leak = 1`},
		{"Reflect", `Reflect.leak = 1`},
		{"Symbol", `Symbol.leak = 1`},
		{"guarded Array", `Array.leak = 1`},
		{"helper function", `helper.leak = 1`},
		{"top-level object", `config.list.push(1)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRunner(t, `
				const config = { list: [1, 2] };
				function helper() { return 1; }
				function transform(doc) {
					if (doc.attack) { `+tc.attack+` }
					const probes = [Math.max(1, 2), JSON.stringify([1]), parseInt("7"), globalThis.leak, [].leak, "".leak, ({}).leak,
						helper.leak, (function () {}).leak, [][Symbol.iterator]().leak, new Map().entries().leak, new Set().values().leak,
						""[Symbol.iterator]().leak, "a".matchAll(/a/g).leak, (function* () {}).leak, (function* () {})().leak,
						(async function () {}).leak, Uint8Array.leak, new Uint8Array(1).leak, Promise.resolve().leak, new Date(0).leak,
						/a/.leak, new Map().leak, new Error().leak, Reflect.leak, Symbol.leak, Array.leak, config.list.length];
					return { probes: JSON.stringify(probes) };
				}`, time.Second)
			bad := doc("bad", "attack", true)
			if _, err := r.run(&bad, nil, nil); err == nil || !strings.Contains(err.Error(), "TypeError") {
				t.Errorf("the attack did not fail its change: %v", err)
			}
			c := doc("next")
			recs, err := r.run(&c, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			const want = `[2,"[1]",7,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,2]`
			if got := docOf(t, recs[0])["probes"]; got != want {
				t.Errorf("the next document saw %s", got)
			}
		})
	}
}

// A top-level value that cannot be frozen is a load error at its
// declaration; frozen constants and regular expressions are fine.
func TestTransformRejectsMutableTopLevel(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"const seen = new Set();\nfunction transform(doc) { seen.add(doc._id); return null; }", "1:7: transform: const seen holds a Set"},
		{"const m = new Map();\nfunction transform(doc) { return null; }", "1:7: transform: const m holds a Map"},
		{"const cfg = { since: new Date() };\nfunction transform(doc) { return null; }", "1:7: transform: const cfg holds a Date"},
		{"\n  const buf = [new Uint8Array(4)];\nfunction transform(doc) { return null; }", "2:9: transform: const buf holds a typed array"},
		{"const w = new WeakMap();\nfunction transform(doc) { return null; }", "1:7: transform: const w holds a WeakMap"},
		{"var v = new Map();\nfunction transform(doc) { return null; }", "transform: a top-level value holds a Map"},
	} {
		_, err := compileTransform("test.js", scriptLoc{}, tc.src, jsLimits{Timeout: time.Second, Memory: 1 << 28, Stack: 1000}, false)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.src, err, tc.want)
		}
	}
	r := newTestRunner(t, "const RE = /^case-(\\d+)$/;\nconst TYPES = ['a', 'b'];\nclass P { constructor(x) { this.x = x; } }\nfunction transform(doc) { return { n: RE.exec(doc._id)[1], t: TYPES.includes('a'), p: new P(1).x }; }", time.Second)
	c := doc("case-12")
	recs, err := r.run(&c, nil, nil)
	if err != nil || docOf(t, recs[0])["n"] != "12" {
		t.Fatalf("%v %v", recs, err)
	}
}

// docOf decodes a record's JSON text.
func docOf(t *testing.T, r Record) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Doc.(json.RawMessage), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// A record keeps the transform's key order and is written as
// JSON.stringify would write it; a value JSON cannot hold fails the change
// with where it is.
func TestTransformRecordsAsJSON(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`return { z: 1, a: { y: [1, 2.5, "s"], b: null }, m: true, _id: "k" }`, `{"z":1,"a":{"y":[1,2.5,"s"],"b":null},"m":true,"_id":"k"}`},
		{`const o = {}; o.b = 1; o.a = 2; delete o.b; o.b = 3; return o`, `{"a":2,"b":3}`},
		{`return { big: 2 ** 53 + 1, f: 0.1 + 0.2, e: 1e21, neg: -0, nan: NaN, inf: -Infinity, tiny: 5e-7 }`, `{"big":9007199254740992,"f":0.30000000000000004,"e":1e+21,"neg":0,"nan":null,"inf":null,"tiny":5e-7}`},
		{`return { d: new Date(0), u: undefined, s: "\ud800x\u2028" }`, `{"d":"1970-01-01T00:00:00.000Z","u":null,"s":"` + "\uFFFDx\\u2028" + `"}`},
		{`class P { constructor() { this.x = 1; } } return new P()`, `{"x":1}`},
		{`return { a: 10n }`, "transform: a is a BigInt, which JSON cannot hold"},
		{`return { a: [1, { s: Symbol("x") }] }`, "transform: a[1].s is a Symbol, which JSON cannot hold"},
		{`return { bytes: new Uint8Array(2) }`, "transform: bytes is a typed array, which JSON cannot hold"},
		{`return { m: new Map() }`, "transform: m is a Map, which JSON cannot hold"},
		{`return { s: new Set([1]) }`, "transform: s is a Set, which JSON cannot hold"},
		{`return { b: new ArrayBuffer(1) }`, "transform: b is an ArrayBuffer, which JSON cannot hold"},
		{`return { f: function () {} }`, "transform: f is a function, which JSON cannot hold"},
		{`return [{ ok: 1 }, { r: /x/ }]`, "transform: item 1: r is a RegExp, which JSON cannot hold"},
		{`const o = {}; o.self = o; return o`, "nested more than 1000 deep (circular?)"},
		{`return { _id: {} }`, "transform: _id is an object; it must be a string"},
		{`return 10n`, "transform: returned a BigInt; return an object"},
	} {
		r := newTestRunner(t, `function transform(doc) { `+tc.body+` }`, time.Second)
		c := doc("x")
		recs, err := r.run(&c, nil, nil)
		got := ""
		if err != nil {
			got = err.Error()
		} else if len(recs) == 1 {
			got = string(recs[0].Doc.(json.RawMessage))
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("%s:\n got %s\nwant %s", tc.body, got, tc.want)
		}
	}
}

// Inside a transform, doc follows the document's own key order, the same
// on every call, nested objects too; keys a transform adds come last.
func TestTransformDocKeepsKeyOrder(t *testing.T) {
	r := newTestRunner(t, `function transform(doc) {
		const before = JSON.stringify(doc);
		doc.added = 1; delete doc.z;
		return { keys: Object.keys(doc).join(","), json: before, nested: Object.keys(doc.n).join(","), inArray: Object.keys(doc.a[1]).join(","),
			same: doc.n === doc.n, proto: Object.getPrototypeOf(doc) === Object.prototype, arr: Array.isArray(doc.a), forin: (() => { const ks = []; for (const k in doc.n) ks.push(k); return ks.join(","); })() };
	}`, time.Second)
	raw := `{"z":1,"_id":"x","a":[1,{"q":true,"b":null}],"n":{"y":1.5,"b":"\u00e9"},"big":9007199254740993,"m":"s"}`
	for i := 0; i < 20; i++ {
		c := Change{ID: "x"}
		if err := json.Unmarshal([]byte(raw), &c.Doc); err != nil {
			t.Fatal(err)
		}
		recs, err := r.run(&c, []byte(raw), nil)
		if err != nil {
			t.Fatal(err)
		}
		d := docOf(t, recs[0])
		if d["keys"] != "_id,a,n,big,m,added" || d["nested"] != "y,b" || d["inArray"] != "q,b" || d["forin"] != "y,b" ||
			d["json"] != `{"z":1,"_id":"x","a":[1,{"q":true,"b":null}],"n":{"y":1.5,"b":"é"},"big":9007199254740992,"m":"s"}` ||
			d["same"] != true || d["proto"] != true || d["arr"] != true {
			t.Fatalf("call %d: %v", i, d)
		}
	}
	// Without the text (a source that gave the map), keys are sorted.
	c := Change{ID: "x", Doc: map[string]any{"z": 1.0, "_id": "x", "a": []any{1.0, map[string]any{"q": true, "b": nil}}, "n": map[string]any{"y": 1.0, "b": 2.0}}}
	recs, err := r.run(&c, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := docOf(t, recs[0]); d["json"] != `{"_id":"x","a":[1,{"b":null,"q":true}],"n":{"b":2,"y":1},"z":1}` {
		t.Fatalf("without text: %v", d)
	}
}

// A transform may return doc itself, or parts of it, keeping their order.
func TestTransformReturnsDoc(t *testing.T) {
	r := newTestRunner(t, `function transform(doc) { doc.extra = [doc.n]; return [doc, doc.n]; }`, time.Second)
	raw := `{"_id":"x","z":[1,{"b":1,"a":2}],"n":{"y":1,"_id":"n"}}`
	c := Change{ID: "x"}
	if err := json.Unmarshal([]byte(raw), &c.Doc); err != nil {
		t.Fatal(err)
	}
	recs, err := r.run(&c, []byte(raw), nil)
	if err != nil || len(recs) != 2 {
		t.Fatal(recs, err)
	}
	if got := string(recs[0].Doc.(json.RawMessage)); got != `{"_id":"x","z":[1,{"b":1,"a":2}],"n":{"y":1,"_id":"n"},"extra":[{"_id":"n","y":1}]}` { // a stored copy is a Go map: sorted
		t.Errorf("doc: %s", got)
	}
	if got := string(recs[1].Doc.(json.RawMessage)); got != `{"y":1,"_id":"n"}` || recs[1].ID != "n" {
		t.Errorf("doc.n: %s %s", recs[1].ID, got)
	}
}
