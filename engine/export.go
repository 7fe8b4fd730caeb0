package engine

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"

	"github.com/dimagi/ptop/internal/jsonx"
	"github.com/dop251/goja"
)

// maxRecordDepth bounds the nesting of a record (a circular one would be
// endless).
const maxRecordDepth = 1000

// recordWriter encodes a transform's return value as JSON, as
// JSON.stringify would: keys in the order the transform gave them, numbers
// as JavaScript writes them (NaN and Infinity as null), strings with lone
// surrogates as U+FFFD, a Date as its ISO string. undefined is null (so a
// field the transform left undefined is written, as before). A value JSON
// cannot hold (BigInt, Symbol, a function, a typed array, a Map or Set,
// a RegExp…) is an error naming where it is, not a silent conversion.
type recordWriter struct {
	buf []byte
}

var (
	typeInt64     = reflect.TypeOf(int64(0))
	typeFloat64   = reflect.TypeOf(float64(0))
	typeString    = reflect.TypeOf("")
	typeBool      = reflect.TypeOf(false)
	typeMap       = reflect.TypeOf(map[string]any(nil))
	typeDocObject = reflect.TypeOf(&docObject{})
)

// pathErr is an unsupported value at a path inside the record.
type pathErr struct {
	path []string // innermost first
	what string
}

func (e *pathErr) Error() string {
	var b strings.Builder
	for i := len(e.path) - 1; i >= 0; i-- {
		b.WriteString(e.path[i])
	}
	p := strings.TrimPrefix(b.String(), ".")
	if p == "" {
		return fmt.Sprintf("the record is %s, which JSON cannot hold", e.what)
	}
	return fmt.Sprintf("%s is %s, which JSON cannot hold", p, e.what)
}

func (w *recordWriter) value(v goja.Value, depth int) error {
	if v == nil || goja.IsUndefined(v) || goja.IsNull(v) {
		w.buf = append(w.buf, "null"...)
		return nil
	}
	if o, ok := v.(*goja.Object); ok {
		return w.object(o, depth)
	}
	if _, ok := v.(*goja.Symbol); ok {
		return &pathErr{what: "a Symbol"}
	}
	switch v.ExportType() {
	case typeString:
		w.buf = jsonx.AppendString(w.buf, v.String())
	case typeInt64:
		w.buf = strconv.AppendInt(w.buf, v.ToInteger(), 10)
	case typeFloat64:
		f := v.ToFloat()
		switch {
		case math.IsNaN(f) || math.IsInf(f, 0):
			w.buf = append(w.buf, "null"...)
		case f == 0:
			w.buf = append(w.buf, '0') // -0 too, as JavaScript writes it
		case f == math.Trunc(f) && math.Abs(f) < 1e21:
			w.buf = strconv.AppendFloat(w.buf, f, 'f', -1, 64)
		default:
			w.buf = append(w.buf, v.String()...) // JavaScript's Number::toString
		}
	case typeBool:
		w.buf = strconv.AppendBool(w.buf, v.ToBoolean())
	default:
		if t := v.ExportType(); t != nil && t.String() == "*big.Int" {
			return &pathErr{what: "a BigInt"}
		}
		return &pathErr{what: "a " + fmt.Sprint(v.ExportType())}
	}
	return nil
}

func (w *recordWriter) object(o *goja.Object, depth int) error {
	if depth > maxRecordDepth {
		return &pathErr{what: fmt.Sprintf("nested more than %d deep (circular?)", maxRecordDepth)}
	}
	switch c := o.ClassName(); c {
	case "Object":
		if t := o.ExportType(); t != typeMap && t != typeDocObject {
			return &pathErr{what: objectKind(t)}
		}
		w.buf = append(w.buf, '{')
		for i, k := range o.Keys() {
			if i > 0 {
				w.buf = append(w.buf, ',')
			}
			w.buf = jsonx.AppendString(w.buf, k)
			w.buf = append(w.buf, ':')
			if err := w.value(o.Get(k), depth+1); err != nil {
				if pe, ok := err.(*pathErr); ok {
					pe.path = append(pe.path, "."+k)
				}
				return err
			}
		}
		w.buf = append(w.buf, '}')
	case "Array":
		n := o.Get("length").ToInteger()
		w.buf = append(w.buf, '[')
		for i := int64(0); i < n; i++ {
			if i > 0 {
				w.buf = append(w.buf, ',')
			}
			if err := w.value(o.Get(strconv.FormatInt(i, 10)), depth+1); err != nil {
				if pe, ok := err.(*pathErr); ok {
					pe.path = append(pe.path, fmt.Sprintf("[%d]", i))
				}
				return err
			}
		}
		w.buf = append(w.buf, ']')
	case "Date":
		toJSON, ok := goja.AssertFunction(o.Get("toJSON"))
		if !ok {
			return &pathErr{what: "a Date without toJSON"}
		}
		s, err := toJSON(o)
		if err != nil {
			return err
		}
		return w.value(s, depth+1)
	case "Function":
		return &pathErr{what: "a function"}
	default:
		return &pathErr{what: "a " + c}
	}
	return nil
}

// objectKind names an object of class Object that is not a plain object,
// by the Go type goja exports it as.
func objectKind(t reflect.Type) string {
	switch {
	case t == nil:
		return "an exotic object"
	case t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Interface && t.Elem().Kind() != reflect.Array:
		return "a typed array"
	case t.String() == "[][2]interface {}":
		return "a Map"
	case t.String() == "[]interface {}":
		return "a Set"
	case t.String() == "goja.ArrayBuffer":
		return "an ArrayBuffer"
	case t.String() == "*goja.Promise":
		return "a Promise"
	case t.String() == "goja.Proxy":
		return "a Proxy"
	}
	return "a " + t.String()
}

// record encodes o, a record the transform returned, and finds its _id.
func (w *recordWriter) record(o *goja.Object) (doc json.RawMessage, id string, hasID bool, err error) {
	w.buf = w.buf[:0]
	if err := w.value(o, 0); err != nil {
		return nil, "", false, err
	}
	doc = json.RawMessage(append([]byte(nil), w.buf...))
	v := o.Get("_id")
	if v == nil || goja.IsUndefined(v) || goja.IsNull(v) {
		return doc, "", false, nil
	}
	switch v.ExportType() {
	case typeString:
		return doc, v.String(), true, nil
	case typeInt64, typeFloat64:
		return doc, v.String(), true, nil
	}
	return nil, "", false, fmt.Errorf("_id is %s; it must be a string", jsTypeOf(v))
}

func jsTypeOf(v goja.Value) string {
	if o, ok := v.(*goja.Object); ok {
		switch o.ClassName() {
		case "Array":
			return "an array"
		case "Object":
			return "an object"
		}
		return "a " + o.ClassName()
	}
	switch v.ExportType() {
	case typeString:
		return "a string"
	case typeInt64, typeFloat64:
		return "a number"
	case typeBool:
		return "a boolean"
	}
	if _, ok := v.(*goja.Symbol); ok {
		return "a Symbol"
	}
	if t := v.ExportType(); t != nil && t.String() == "*big.Int" {
		return "a BigInt"
	}
	return "a " + fmt.Sprint(v.ExportType())
}
