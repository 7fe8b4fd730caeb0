package engine

import (
	"errors"
	"fmt"
	"strconv"

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
	consts []string // top-level const and class names, frozen after load
	limits jsLimits
}

// The sandbox has only the language's built-ins: no require, no file,
// network or process access. After the script has run once, every object
// reachable from its globals is frozen, so nothing a call does can be seen
// by the next one.
const freezeJS = `(function () {
  const seen = new Set();
  function freeze(o) {
    if (o === null || (typeof o !== "object" && typeof o !== "function") || seen.has(o)) return;
    seen.add(o);
    Object.freeze(o);
    for (const k of Reflect.ownKeys(o)) {
      const d = Object.getOwnPropertyDescriptor(o, k);
      if (d && "value" in d) freeze(d.value);
    }
    freeze(Object.getPrototypeOf(o));
  }
  return freeze;
})()`

// compileTransform parses and compiles src, written in file at loc (and
// padded to the file's lines), runs it once in a scratch runtime and checks
// that it defines transform().
func compileTransform(file string, loc scriptLoc, src string, limits jsLimits) (*Transform, error) {
	prg, err := parser.ParseFile(nil, file, src, 0)
	if err != nil {
		var el parser.ErrorList
		if errors.As(err, &el) && len(el) > 0 {
			e := el[0]
			return nil, &scriptErr{Line: e.Position.Line, Col: e.Position.Column, Msg: "transform: " + e.Message}
		}
		return nil, &scriptErr{Line: 1, Col: 1, Msg: "transform: " + err.Error()}
	}
	t := &Transform{file: file, loc: loc, limits: limits}
	for _, st := range prg.Body {
		switch st := st.(type) {
		case *ast.LexicalDeclaration:
			if st.Token == token.LET {
				p := prg.File.Position(int(st.Idx) - 1)
				return nil, &scriptErr{Line: p.Line, Col: p.Column, Msg: "transform: a top-level let would carry state from one document to the next; use const, or declare it inside transform()"}
			}
			for _, b := range st.List {
				if id, ok := b.Target.(*ast.Identifier); ok {
					t.consts = append(t.consts, id.Name.String())
				}
			}
		case *ast.ClassDeclaration:
			if st.Class.Name != nil {
				t.consts = append(t.consts, st.Class.Name.Name.String())
			}
		}
	}
	t.prog, err = goja.CompileAST(prg, true)
	if err != nil {
		var ce *goja.CompilerSyntaxError
		if errors.As(err, &ce) && ce.File != nil {
			p := ce.File.Position(ce.Offset)
			return nil, &scriptErr{Line: p.Line, Col: p.Column, Msg: "transform: " + ce.Message}
		}
		return nil, &scriptErr{Line: 1, Col: 1, Msg: "transform: " + err.Error()}
	}
	if _, err := t.newRunner(); err != nil {
		return nil, err
	}
	return t, nil
}

// jsRunner calls the transform in a runtime of its own; one per worker.
type jsRunner struct {
	t     *Transform
	vm    *goja.Runtime
	fn    goja.Callable
	guard *callGuard
}

func (t *Transform) newRunner() (*jsRunner, error) {
	vm := goja.New()
	vm.SetFieldNameMapper(goja.TagFieldNameMapper("json", true))
	if err := installGuards(vm, t.limits); err != nil {
		return nil, fmt.Errorf("transform: sandbox: %v", err)
	}
	guard := newCallGuard(vm, t.limits)
	guard.begin()
	_, err := vm.RunProgram(t.prog)
	guard.end()
	if err != nil {
		return nil, errors.New("transform: the script failed when loaded: " + t.jsError(err))
	}
	fn, ok := goja.AssertFunction(vm.Get("transform"))
	if !ok {
		return nil, errors.New("transform: the script must define function transform(doc, change)")
	}
	freezeV, err := vm.RunString(freezeJS)
	if err != nil {
		return nil, fmt.Errorf("transform: sandbox: %v", err)
	}
	freeze, _ := goja.AssertFunction(freezeV)
	roots := []goja.Value{vm.GlobalObject()}
	for _, name := range t.consts {
		v, err := vm.RunString(name)
		if err == nil {
			roots = append(roots, v)
		}
	}
	for _, r := range roots {
		if _, err := freeze(goja.Undefined(), r); err != nil {
			return nil, fmt.Errorf("transform: sandbox: %v", err)
		}
	}
	return &jsRunner{t: t, vm: vm, fn: fn, guard: guard}, nil
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
func (r *jsRunner) run(c *Change, out []Record) ([]Record, error) {
	r.guard.begin()
	res, err := r.fn(goja.Undefined(), r.vm.ToValue(c.Doc), r.vm.ToValue(changeInfo{ID: c.ID, Seq: c.Seq, Rev: c.Rev, Deleted: c.Deleted}))
	r.guard.end()
	if err != nil {
		return out, fmt.Errorf("transform: %s", r.t.jsError(err))
	}
	if res == nil || goja.IsUndefined(res) || goja.IsNull(res) {
		return out, nil
	}
	switch x := res.Export().(type) {
	case map[string]any:
		return appendRecord(out, c, x, "")
	case []any:
		for i, item := range x {
			if item == nil {
				continue
			}
			m, ok := item.(map[string]any)
			if !ok {
				return out, fmt.Errorf("transform: item %d of the returned array is %s; return objects", i, jsTypeName(item))
			}
			var err error
			if out, err = appendRecord(out, c, m, fmt.Sprintf("item %d: ", i)); err != nil {
				return out, err
			}
		}
		return out, nil
	default:
		return out, fmt.Errorf("transform: returned %s; return an object, an array of objects, or null", jsTypeName(x))
	}
}

func appendRecord(out []Record, c *Change, m map[string]any, where string) ([]Record, error) {
	rec := Record{ID: c.ID, DocID: c.ID, Rev: c.Rev, Seq: c.Seq, Doc: m}
	switch id := m["_id"].(type) {
	case nil:
	case string:
		rec.ID = id
	case int64:
		rec.ID = strconv.FormatInt(id, 10)
	case float64:
		rec.ID = strconv.FormatFloat(id, 'f', -1, 64)
	default:
		return out, fmt.Errorf("transform: %s_id is %s; it must be a string", where, jsTypeName(id))
	}
	if rec.ID == "" {
		return out, fmt.Errorf("transform: %s_id is empty", where)
	}
	return append(out, rec), nil
}

func jsTypeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64, float64:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	case nil:
		return "null"
	}
	return fmt.Sprintf("a %T", v)
}
