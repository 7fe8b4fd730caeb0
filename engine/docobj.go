package engine

import (
	"encoding/json"
	"slices"
	"sort"

	"github.com/dimagi/ptop/internal/jsonx"
	"github.com/dop251/goja"
)

// docObject presents a decoded document (a Go map) to the transform as a
// JavaScript object whose keys are in the document's own order, the same on
// every call: Object.keys(doc), for…in and JSON.stringify(doc) follow it.
// Values are converted when read, as goja's map wrapper does, so a
// transform that reads a few fields pays for those only; the key order is
// found in the document's JSON text only when asked for. Without the text
// (a source that gave the map), keys are in sorted order.
type docObject struct {
	vm   *goja.Runtime
	m    map[string]any
	raw  func() []byte // the object's JSON text, or nil
	keys []string      // in order, once asked for
	kids map[string]goja.Value
}

func newDocObject(vm *goja.Runtime, m map[string]any, raw func() []byte) *goja.Object {
	return vm.NewDynamicObject(&docObject{vm: vm, m: m, raw: raw})
}

func (d *docObject) Get(key string) goja.Value {
	if v, ok := d.kids[key]; ok {
		return v
	}
	v, ok := d.m[key]
	if !ok {
		return nil
	}
	switch v.(type) {
	case map[string]any, []any:
	default:
		return d.vm.ToValue(v)
	}
	var raw func() []byte
	if d.raw != nil {
		raw = func() []byte { return member(d.raw(), key) }
	}
	jv, nested := docValue(d.vm, v, raw)
	if nested {
		if d.kids == nil {
			d.kids = map[string]goja.Value{}
		}
		d.kids[key] = jv
	}
	return jv
}

// docValue converts a decoded JSON value; nested reports an object or
// array, kept so that it is the same object on each read.
func docValue(vm *goja.Runtime, v any, raw func() []byte) (goja.Value, bool) {
	switch x := v.(type) {
	case map[string]any:
		return newDocObject(vm, x, raw), true
	case []any:
		return vm.NewDynamicArray(&docArray{vm: vm, s: x, raw: raw}), true
	}
	return vm.ToValue(v), false
}

func (d *docObject) Set(key string, val goja.Value) bool {
	if _, ok := d.m[key]; !ok && d.keys == nil {
		d.Keys()
	}
	if _, ok := d.m[key]; !ok {
		d.keys = append(d.keys, key)
	}
	delete(d.kids, key)
	d.m[key] = export(val)
	return true
}

func (d *docObject) Has(key string) bool {
	_, ok := d.m[key]
	return ok
}

func (d *docObject) Delete(key string) bool {
	if _, ok := d.m[key]; ok {
		d.Keys()
		delete(d.m, key)
		delete(d.kids, key)
		d.keys = slices.DeleteFunc(d.keys, func(k string) bool { return k == key })
	}
	return true
}

func (d *docObject) Keys() []string {
	if d.keys != nil {
		return d.keys
	}
	keys := make([]string, 0, len(d.m))
	ok := false
	if d.raw != nil {
		if raw := d.raw(); raw != nil {
			seen := make(map[string]bool, len(d.m))
			ok = jsonx.Members(raw, func(k, _ []byte) bool {
				s := unquote(k)
				if _, in := d.m[s]; in && !seen[s] {
					seen[s] = true
					keys = append(keys, s)
				}
				return true
			})
			ok = ok && len(keys) == len(d.m)
		}
	}
	if !ok {
		keys = keys[:0]
		for k := range d.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
	}
	d.keys = keys
	return keys
}

// docArray is an array of a document, its objects keeping their order.
type docArray struct {
	vm   *goja.Runtime
	s    []any
	raw  func() []byte
	kids map[int]goja.Value
}

func (a *docArray) Len() int { return len(a.s) }

func (a *docArray) Get(i int) goja.Value {
	if i < 0 || i >= len(a.s) {
		return nil
	}
	if v, ok := a.kids[i]; ok {
		return v
	}
	switch a.s[i].(type) {
	case map[string]any, []any:
	default:
		return a.vm.ToValue(a.s[i])
	}
	var raw func() []byte
	if a.raw != nil {
		raw = func() []byte {
			if a.raw == nil {
				return nil
			}
			return element(a.raw(), i)
		}
	}
	jv, nested := docValue(a.vm, a.s[i], raw)
	if nested {
		if a.kids == nil {
			a.kids = map[int]goja.Value{}
		}
		a.kids[i] = jv
	}
	return jv
}

func (a *docArray) Set(i int, val goja.Value) bool {
	if i < 0 {
		return false
	}
	if i >= len(a.s) {
		a.SetLen(i + 1)
	}
	delete(a.kids, i)
	a.s[i] = export(val)
	return true
}

func (a *docArray) SetLen(n int) bool {
	if n < 0 {
		return false
	}
	if n <= len(a.s) {
		a.s = a.s[:n]
	} else {
		a.s = append(a.s, make([]any, n-len(a.s))...)
	}
	for i := range a.kids {
		if i >= n {
			delete(a.kids, i)
		}
	}
	a.raw = nil // the text no longer matches
	return true
}

// export converts a value the transform stores into the document to plain
// Go values, parts of the document included.
func export(v goja.Value) any {
	return unwrap(v.Export())
}

func unwrap(x any) any {
	switch x := x.(type) {
	case *docObject:
		return x.m
	case *docArray:
		return x.s
	case map[string]any:
		for k, v := range x {
			x[k] = unwrap(v)
		}
	case []any:
		for i, v := range x {
			x[i] = unwrap(v)
		}
	}
	return x
}

func unquote(k []byte) string {
	if len(k) >= 2 && !slices.Contains(k, '\\') {
		return string(k[1 : len(k)-1])
	}
	var s string
	_ = json.Unmarshal(k, &s)
	return s
}

// member returns the value of key in obj's text (the last, as a decoder
// keeps), or nil.
func member(obj []byte, key string) []byte {
	var out []byte
	if obj != nil {
		jsonx.Members(obj, func(k, v []byte) bool {
			if unquote(k) == key {
				out = v
			}
			return true
		})
	}
	return out
}

// element returns the i-th element of arr's text, or nil.
func element(arr []byte, i int) []byte {
	var out []byte
	if arr != nil {
		n := 0
		jsonx.Elements(arr, func(v []byte) bool {
			if n == i {
				out = v
				return false
			}
			n++
			return true
		})
	}
	return out
}
