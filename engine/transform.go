package engine

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"github.com/dop251/goja"
	"github.com/dop251/goja/ast"
	"github.com/dop251/goja/parser"
	"github.com/dop251/goja/token"
)

// Transform is a compiled JavaScript transform, shared by the workers of a
// pillow; each worker runs it in a runtime of its own.
type Transform struct {
	file   string
	loc    scriptLoc // where the script stands in file
	prog   *goja.Program
	consts []constDecl // top-level consts and classes, frozen after load
	limits jsLimits
	// quiet: the script comes from a file that may not be JavaScript at
	// all (a secret named by mistake), so load errors quote none of it.
	quiet bool
}

// The sandbox has only the language's built-ins: no require, no file,
// network or process access. After the script has run once, every object
// reachable from its globals and top-level constants is frozen, and so is
// every intrinsic, the hidden ones too (iterator, generator and typed-array
// prototypes, which goja creates lazily: they are touched first). The
// script runs in strict mode, so an assignment to a frozen object throws
// and fails that change: nothing a call does can be seen by the next one.
// A top-level Map, Set, WeakMap, WeakSet, Date or typed array cannot be
// frozen (its contents stay mutable): the freezer reports it instead.
const freezeJS = `(function () {
  "use strict";
  const seen = new Set();
  // Brand checks, taken before the script runs: each throws unless its
  // argument has the internal slots of its kind.
  const getter = (c, k) => Object.getOwnPropertyDescriptor(c.prototype, k).get;
  const mutable = [[Map.prototype.has, "a Map"], [Set.prototype.has, "a Set"], [WeakMap.prototype.has, "a WeakMap"],
    [WeakSet.prototype.has, "a WeakSet"], [Date.prototype.getTime, "a Date"], [getter(ArrayBuffer, "byteLength"), "an ArrayBuffer"],
    [getter(DataView, "byteLength"), "a DataView"], [getter(Object.getPrototypeOf(Uint8Array), "length"), "a typed array"]];
  const apply = Reflect.apply;
  const kind = (o) => {
    for (const [f, what] of mutable) {
      try { apply(f, o, []); return what; } catch (e) {}
    }
    return "";
  };
  function freeze(o, check) {
    if (o === null || (typeof o !== "object" && typeof o !== "function") || seen.has(o)) return "";
    seen.add(o);
    const what = check ? kind(o) : "";
    if (what) return what;
    Object.freeze(o);
    const keys = Reflect.ownKeys(o);
    for (let i = 0; i < keys.length; i++) {
      const d = Object.getOwnPropertyDescriptor(o, keys[i]);
      if (!d) continue;
      const m = freeze(d.value, check) || freeze(d.get, check) || freeze(d.set, check);
      if (m) return m;
    }
    return freeze(Object.getPrototypeOf(o), check);
  }
  const intrinsics = [
    "Object", "Function", "Array", "String", "Number", "BigInt", "RegExp", "Date", "Boolean", "Proxy", "Reflect",
    "Error", "AggregateError", "TypeError", "ReferenceError", "SyntaxError", "RangeError", "EvalError", "URIError",
    "Math", "JSON", "ArrayBuffer", "DataView", "Uint8Array", "Uint8ClampedArray", "Int8Array", "Uint16Array",
    "Int16Array", "Uint32Array", "Int32Array", "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array",
    "Symbol", "WeakSet", "WeakMap", "Map", "Set", "Promise", "globalThis", "eval", "isNaN", "parseInt", "parseFloat",
    "isFinite", "decodeURI", "decodeURIComponent", "encodeURI", "encodeURIComponent", "escape", "unescape",
  ].filter((n) => typeof globalThis[n] !== "undefined").map((n) => {
    // goja creates the global object's built-ins lazily and Object.freeze
    // misses them: pin each one now, before the script runs.
    const v = globalThis[n];
    if (n !== "globalThis") Object.defineProperty(globalThis, n, { value: v, writable: false, enumerable: false, configurable: false });
    return v;
  }).filter((v) => v !== globalThis);
  const proto = Object.getPrototypeOf;
  const hidden = [
    () => proto([][Symbol.iterator]()), () => proto(new Map()[Symbol.iterator]()), () => proto(new Set()[Symbol.iterator]()),
    () => proto(""[Symbol.iterator]()), () => proto("a".matchAll(/a/g)), () => proto(function* () {}),
    () => proto(function* () {}).prototype, () => proto(async function () {}),
    () => proto(Uint8Array), () => proto(Promise.resolve()),
    () => proto((function () { return arguments; })()),
  ];
  return function (root) {
    for (const o of intrinsics) freeze(o, false);
    for (const f of hidden) { try { freeze(f(), false); } catch (e) {} }
    return freeze(root, true);
  };
})()`

// compileTransform parses and compiles src, written in file at loc (and
// padded to the file's lines), runs it once in a scratch runtime and checks
// that it defines transform().
//
// With quiet (a transform_file), load errors give their position and kind
// but no text of the script: a file that is not JavaScript would have its
// first word echoed ("ReferenceError: sk_live_… is not defined").
func compileTransform(file string, loc scriptLoc, src string, limits jsLimits, quiet bool) (*Transform, error) {
	prg, err := parser.ParseFile(nil, file, src, 0)
	if err != nil {
		var el parser.ErrorList
		if errors.As(err, &el) && len(el) > 0 {
			e := el[0]
			e.Position.Line, e.Position.Column = unexpectedAt(src, e.Position.Line, e.Position.Column, e.Message)
			msg := e.Message
			if quiet && !safeParseMessage(msg) {
				msg = "syntax error (the file is not valid JavaScript here)"
			}
			return nil, &scriptErr{Line: e.Position.Line, Col: e.Position.Column, Msg: "transform: " + msg}
		}
		if quiet {
			return nil, &scriptErr{Line: 1, Col: 1, Msg: "transform: the file is not valid JavaScript"}
		}
		return nil, &scriptErr{Line: 1, Col: 1, Msg: "transform: " + err.Error()}
	}
	t := &Transform{file: file, loc: loc, limits: limits, quiet: quiet}
	for _, st := range prg.Body {
		switch st := st.(type) {
		case *ast.LexicalDeclaration:
			if st.Token == token.LET {
				p := prg.File.Position(int(st.Idx) - 1)
				return nil, &scriptErr{Line: p.Line, Col: p.Column, Msg: "transform: a top-level let would carry state from one document to the next; use const, or declare it inside transform()"}
			}
			for _, b := range st.List {
				if id, ok := b.Target.(*ast.Identifier); ok {
					p := prg.File.Position(int(id.Idx) - 1)
					t.consts = append(t.consts, constDecl{id.Name.String(), p.Line, p.Column})
				}
			}
		case *ast.ClassDeclaration:
			if st.Class.Name != nil {
				p := prg.File.Position(int(st.Class.Name.Idx) - 1)
				t.consts = append(t.consts, constDecl{st.Class.Name.Name.String(), p.Line, p.Column})
			}
		}
	}
	t.prog, err = goja.CompileAST(prg, true)
	if err != nil {
		var ce *goja.CompilerSyntaxError
		msg := "transform: " + err.Error()
		if quiet {
			msg = "transform: syntax error (the file is not valid JavaScript here)"
		}
		if errors.As(err, &ce) && ce.File != nil {
			p := ce.File.Position(ce.Offset)
			if !quiet {
				msg = "transform: " + ce.Message
			}
			return nil, &scriptErr{Line: p.Line, Col: p.Column, Msg: msg}
		}
		return nil, &scriptErr{Line: 1, Col: 1, Msg: msg}
	}
	if _, err := t.newRunner(); err != nil {
		return nil, err
	}
	// Once it has loaded and defines transform(), it is JavaScript: errors
	// thrown while transforming documents are shown whole.
	t.quiet = false
	return t, nil
}

// unexpectedAt moves an "Unexpected token X" error that goja's parser
// places at the token after X (as in `{a: 1,, b}`, reported at b, perhaps
// on the next line) back to X itself.
func unexpectedAt(src string, line, col int, msg string) (int, int) {
	tok, ok := strings.CutPrefix(msg, "Unexpected token ")
	if !ok || tok == "" || line < 1 || col < 1 {
		return line, col
	}
	lines := strings.SplitAfter(src, "\n")
	if line > len(lines) {
		return line, col
	}
	off := col - 1
	for _, l := range lines[:line-1] {
		off += len(l)
	}
	if off > len(src) || strings.HasPrefix(src[off:], tok) {
		return line, col
	}
	before := strings.TrimRight(src[:off], " \t\r\n")
	if !strings.HasSuffix(before, tok) {
		return line, col
	}
	at := len(before) - len(tok)
	l := strings.Count(src[:at], "\n") + 1
	return l, at - (strings.LastIndexByte(src[:at], '\n') + 1) + 1
}

// safeParseMessage reports whether a parser message names token kinds
// only ("Unexpected token }", "Unexpected identifier"), never a script's
// words.
func safeParseMessage(msg string) bool {
	return strings.HasPrefix(msg, "Unexpected ") && !strings.ContainsAny(msg, "'\"`")
}

// constDecl is a top-level const or class of the script, where declared.
type constDecl struct {
	name      string
	line, col int
}

// jsRunner calls the transform in a runtime of its own; one per worker.
type jsRunner struct {
	t     *Transform
	vm    *goja.Runtime
	fn    goja.Callable
	guard *callGuard
	w     recordWriter
}

func (t *Transform) newRunner() (*jsRunner, error) {
	vm := goja.New()
	vm.SetFieldNameMapper(goja.TagFieldNameMapper("json", true))
	if err := installGuards(vm, t.limits); err != nil {
		return nil, fmt.Errorf("transform: sandbox: %v", err)
	}
	freezeV, err := vm.RunString(freezeJS)
	if err != nil {
		return nil, fmt.Errorf("transform: sandbox: %v", err)
	}
	freeze, _ := goja.AssertFunction(freezeV)
	guard := newCallGuard(vm, t.limits)
	guard.begin()
	_, err = vm.RunProgram(t.prog)
	guard.end()
	if err != nil {
		return nil, errors.New("transform: the script failed when loaded: " + t.jsError(err))
	}
	fn, ok := goja.AssertFunction(vm.Get("transform"))
	if !ok {
		return nil, errors.New("transform: the script must define function transform(doc, change)")
	}
	type root struct {
		v goja.Value
		c *constDecl
	}
	roots := []root{{v: vm.GlobalObject()}}
	for i, c := range t.consts {
		v, err := vm.RunString(c.name)
		if err == nil {
			roots = append(roots, root{v, &t.consts[i]})
		}
	}
	for _, r := range roots {
		m, err := freeze(goja.Undefined(), r.v)
		if err != nil {
			return nil, fmt.Errorf("transform: sandbox: %v", err)
		}
		if what := m.String(); what != "" {
			msg := fmt.Sprintf("transform: a top-level value holds %s, which cannot be frozen and would carry state from one document to the next; create it inside transform()", what)
			if r.c == nil {
				return nil, errors.New(msg)
			}
			return nil, &scriptErr{Line: r.c.line, Col: r.c.col, Msg: fmt.Sprintf("transform: const %s holds %s, which cannot be frozen and would carry state from one document to the next; create it inside transform()", r.c.name, what)}
		}
	}
	return &jsRunner{t: t, vm: vm, fn: fn, guard: guard}, nil
}

// reset replaces the runtime of a call the guard stopped: the stopped
// call's values (a huge string) stay referenced from the runtime's stack,
// so that no GC could free them while the runtime lives.
func (r *jsRunner) reset() {
	nr, err := r.t.newRunner()
	if err != nil {
		return // it loaded before; keep the old runtime
	}
	*r = *nr
	runtime.GC()
}

// jsError describes an error thrown by the script, at the position in the
// pillow file (or transform file) where it was thrown.
func (t *Transform) jsError(err error) string {
	var ie *goja.InterruptedError
	if errors.As(err, &ie) {
		switch ie.Value() {
		case stopTimeout:
			return fmt.Sprintf("timed out after %s of CPU time", t.limits.Timeout)
		case stopMemory:
			return memoryMessage(t.limits.Memory)
		}
		return "interrupted"
	}
	var so *goja.StackOverflowError
	if errors.As(err, &so) {
		return fmt.Sprintf("call stack exceeded %d frames (runaway recursion?)", t.limits.Stack)
	}
	var ex *goja.Exception
	if !errors.As(err, &ex) {
		return err.Error()
	}
	msg := "uncaught exception"
	if v := ex.Value(); v != nil {
		msg = v.String()
		if t.quiet {
			msg = "an exception"
			if o, ok := v.(*goja.Object); ok {
				if name := o.Get("name"); name != nil && !goja.IsUndefined(name) {
					msg = "a " + name.String()
				}
			}
		}
	}
	for _, fr := range ex.Stack() {
		if p := fr.Position(); p.Line > 0 && p.Filename == t.file {
			return fmt.Sprintf("%s (at %s)", msg, t.loc.pos(t.file, p.Line, p.Column, true))
		}
	}
	return msg
}

// changeInfo is the transform's second argument.
type changeInfo struct {
	ID      string `json:"id"`
	Seq     string `json:"seq"`
	Rev     string `json:"rev"`
	Deleted bool   `json:"deleted"`
}

// run calls transform(doc, change) and returns the records it made: none
// (null or undefined), one (an object) or several (an array of objects).
//
// doc presents c.Doc with its keys in the order of raw, the document's JSON
// text (sorted when raw is nil).
func (r *jsRunner) run(c *Change, raw []byte, out []Record) ([]Record, error) {
	doc := goja.Value(goja.Null())
	if c.Doc != nil {
		doc = newDocObject(r.vm, c.Doc, func() []byte { return raw })
	}
	r.guard.begin()
	res, err := r.fn(goja.Undefined(), doc, r.vm.ToValue(changeInfo{ID: c.ID, Seq: c.Seq, Rev: c.Rev, Deleted: c.Deleted}))
	r.guard.end()
	if err != nil {
		if r.guard.stopped != 0 {
			r.reset()
		}
		return out, fmt.Errorf("transform: %s", r.t.jsError(err))
	}
	if res == nil || goja.IsUndefined(res) || goja.IsNull(res) {
		return out, nil
	}
	o, ok := res.(*goja.Object)
	if !ok || (o.ClassName() != "Object" && o.ClassName() != "Array") {
		return out, fmt.Errorf("transform: returned %s; return an object, an array of objects, or null", jsTypeOf(res))
	}
	if o.ClassName() == "Object" {
		return r.appendRecord(out, c, o, "")
	}
	n := o.Get("length").ToInteger()
	for i := int64(0); i < n; i++ {
		item := o.Get(strconv.FormatInt(i, 10))
		if item == nil || goja.IsUndefined(item) || goja.IsNull(item) {
			continue
		}
		io, ok := item.(*goja.Object)
		if !ok || io.ClassName() != "Object" {
			return out, fmt.Errorf("transform: item %d of the returned array is %s; return objects", i, jsTypeOf(item))
		}
		var err error
		if out, err = r.appendRecord(out, c, io, fmt.Sprintf("item %d: ", i)); err != nil {
			return out, err
		}
	}
	return out, nil
}

// appendRecord encodes o, one record, and appends it to out.
func (r *jsRunner) appendRecord(out []Record, c *Change, o *goja.Object, where string) ([]Record, error) {
	doc, id, hasID, err := r.w.record(o)
	if err != nil {
		return out, fmt.Errorf("transform: %s%v", where, err)
	}
	rec := Record{ID: c.ID, DocID: c.ID, Rev: c.Rev, Seq: c.Seq, Doc: doc}
	if hasID {
		rec.ID = id
	}
	if rec.ID == "" {
		return out, fmt.Errorf("transform: %s_id is empty", where)
	}
	return append(out, rec), nil
}
