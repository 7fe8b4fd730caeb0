package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/dop251/goja"
)

// jsDoc builds the transform's doc argument from the document's JSON text:
// a plain JavaScript object whose keys are in the document's order (so
// Object.keys(doc) and JSON.stringify(doc) follow it), as JSON.parse
// would make it. Numbers become JavaScript numbers (integers beyond 2^53
// lose precision, as in CouchDB's view server); strings with invalid
// UTF-8 or lone surrogates get U+FFFD.
type jsDoc struct {
	vm   *goja.Runtime
	b    []byte
	i    int
	vals []goja.Value // scratch for arrays
}

var errBadJSON = errors.New("invalid JSON")

func (d *jsDoc) build(raw []byte) (goja.Value, error) {
	d.b, d.i = raw, 0
	v, err := d.value(0)
	if err == nil {
		d.space()
		if d.i != len(d.b) {
			err = errBadJSON
		}
	}
	d.b = nil
	return v, err
}

func (d *jsDoc) space() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *jsDoc) value(depth int) (goja.Value, error) {
	d.space()
	if d.i >= len(d.b) || depth > maxRecordDepth {
		return nil, errBadJSON
	}
	switch c := d.b[d.i]; {
	case c == '{':
		d.i++
		o := d.vm.NewObject()
		d.space()
		if d.i < len(d.b) && d.b[d.i] == '}' {
			d.i++
			return o, nil
		}
		for {
			d.space()
			k, err := d.str()
			if err != nil {
				return nil, err
			}
			d.space()
			if d.i >= len(d.b) || d.b[d.i] != ':' {
				return nil, errBadJSON
			}
			d.i++
			v, err := d.value(depth + 1)
			if err != nil {
				return nil, err
			}
			if k == "__proto__" {
				o.DefineDataProperty(k, v, goja.FLAG_TRUE, goja.FLAG_TRUE, goja.FLAG_TRUE)
			} else {
				o.Set(k, v)
			}
			d.space()
			if d.i >= len(d.b) {
				return nil, errBadJSON
			}
			if d.b[d.i] == '}' {
				d.i++
				return o, nil
			}
			if d.b[d.i] != ',' {
				return nil, errBadJSON
			}
			d.i++
		}
	case c == '[':
		d.i++
		start := len(d.vals)
		d.space()
		if d.i < len(d.b) && d.b[d.i] == ']' {
			d.i++
			return d.vm.NewArray(), nil
		}
		for {
			v, err := d.value(depth + 1)
			if err != nil {
				return nil, err
			}
			d.vals = append(d.vals, v)
			d.space()
			if d.i >= len(d.b) {
				return nil, errBadJSON
			}
			if d.b[d.i] == ']' {
				d.i++
				items := make([]any, len(d.vals)-start)
				for j, v := range d.vals[start:] {
					items[j] = v
				}
				d.vals = d.vals[:start]
				return d.vm.NewArray(items...), nil
			}
			if d.b[d.i] != ',' {
				return nil, errBadJSON
			}
			d.i++
		}
	case c == '"':
		s, err := d.str()
		if err != nil {
			return nil, err
		}
		return d.vm.ToValue(s), nil
	case c == 't' && bytes.HasPrefix(d.b[d.i:], []byte("true")):
		d.i += 4
		return d.vm.ToValue(true), nil
	case c == 'f' && bytes.HasPrefix(d.b[d.i:], []byte("false")):
		d.i += 5
		return d.vm.ToValue(false), nil
	case c == 'n' && bytes.HasPrefix(d.b[d.i:], []byte("null")):
		d.i += 4
		return goja.Null(), nil
	case c == '-' || (c >= '0' && c <= '9'):
		j := d.i
		for j < len(d.b) && (d.b[j] == '-' || d.b[j] == '+' || d.b[j] == '.' || d.b[j] == 'e' || d.b[j] == 'E' || (d.b[j] >= '0' && d.b[j] <= '9')) {
			j++
		}
		num := d.b[d.i:j]
		d.i = j
		if n, err := strconv.ParseInt(string(num), 10, 64); err == nil && n > -1<<53 && n < 1<<53 {
			return d.vm.ToValue(n), nil
		}
		f, err := strconv.ParseFloat(string(num), 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return nil, errBadJSON
		}
		return d.vm.ToValue(f), nil
	}
	return nil, errBadJSON
}

// str reads a JSON string.
func (d *jsDoc) str() (string, error) {
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return "", errBadJSON
	}
	start := d.i
	esc, high := false, false
	for j := d.i + 1; j < len(d.b); j++ {
		switch c := d.b[j]; {
		case c == '\\':
			esc = true
			j++
		case c == '"':
			d.i = j + 1
			if !esc {
				s := string(d.b[start+1 : j])
				if high && !utf8.ValidString(s) {
					s = strings.ToValidUTF8(s, "\uFFFD")
				}
				return s, nil
			}
			var s string
			if err := json.Unmarshal(d.b[start:j+1], &s); err != nil {
				return "", errBadJSON
			}
			return s, nil
		case c < 0x20:
			return "", errBadJSON
		case c >= 0x80:
			high = true
		}
	}
	return "", errBadJSON
}
