package postgres

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	json "github.com/goccy/go-json"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/jsonx"
)

// kind is how a record's value is turned into a column's text: Postgres
// then parses that text with the column type's input function, as a cast
// from text would (so "2026-01-31" and "Jan 31 2026" both make a date).
type kind int

const (
	kindScalar   kind = iota // strings as they are, numbers and booleans as text, objects as JSON
	kindJSON                 // jsonb: any value as JSON
	kindJSONText             // json: the same, keys in order (json keeps the text)
	kindArray                // T[]: a list as an array literal
)

// kindOf classifies a type as format_type writes it.
func kindOf(typ string) kind {
	t := strings.ToLower(strings.TrimSpace(typ))
	switch {
	case strings.HasSuffix(t, "[]"):
		return kindArray
	case t == "jsonb":
		return kindJSON
	case t == "json":
		return kindJSONText
	}
	return kindScalar
}

// value is a column's value as text; !ok is SQL NULL.
type value struct {
	s  string
	ok bool
}

// row is a record ready to write.
type row struct {
	index int     // in the batch given to Write
	key   string  // the record id
	vals  []value // one per data column, then doc when the sink keeps it
	rev   value   // the revision, NULL when the record has none
	pos   int64   // the change's feed position (component.SeqPosition)
	hasP  bool    // false: no position, no ordering
	docID value   // the id of the record's document, NULL when unknown
	del   bool
}

// replaces reports whether record r, coming after w in a batch, takes its
// place: the same rule as against the table, so an earlier change never
// wins. Records without a position always replace.
func (r *row) replaces(w *row) bool {
	return !r.hasP || !w.hasP || r.pos >= w.pos
}

// fold keeps one record per id, in the order of their first appearance:
// the last one, unless an earlier one comes from a later change.
func fold(rows []row) []row {
	pos := make(map[string]int, len(rows))
	out := rows[:0:0]
	for i := range rows {
		r := rows[i]
		if j, ok := pos[r.key]; ok {
			if r.replaces(&out[j]) {
				out[j] = r
			}
			continue
		}
		pos[r.key] = len(out)
		out = append(out, r)
	}
	return out
}

// encoder turns records into rows for one table's columns. It is not safe
// for concurrent use.
type encoder struct {
	columns []string // data columns, in order
	kinds   []kind   // and their kinds
	doc     bool     // keep the other fields in doc
	docJSON bool     // doc is a json column (keeps key order), not jsonb
	skip    map[string]bool
	scratch []byte
	keys    []string
}

func newEncoder(key string, columns []string, kinds []kind, doc, docJSON bool) *encoder {
	e := &encoder{
		columns: columns, kinds: kinds, doc: doc, docJSON: docJSON,
		skip: map[string]bool{"_id": true, "_rev": true, key: true},
	}
	for _, c := range columns {
		e.skip[c] = true
	}
	return e
}

// head makes the row of record i without its values, or says why it
// cannot be written.
func head(i int, r *component.Record) (row, error) {
	out := row{index: i, key: r.ID, del: r.Delete}
	if r.ID == "" {
		return out, errors.New("the record has no id")
	}
	if strings.IndexByte(r.ID, 0) >= 0 {
		return out, errors.New("the record id contains a NUL character, which Postgres text cannot hold")
	}
	out.pos = component.SeqPosition(r.Seq)
	out.hasP = out.pos >= 0
	if r.Rev != "" {
		if strings.IndexByte(r.Rev, 0) >= 0 {
			return out, errors.New("the revision contains a NUL character")
		}
		out.rev = value{s: r.Rev, ok: true}
	}
	if r.DocID != "" {
		if strings.IndexByte(r.DocID, 0) >= 0 {
			return out, errors.New("the document id contains a NUL character")
		}
		out.docID = value{s: r.DocID, ok: true}
	}
	return out, nil
}

// fields returns a record's fields.
func fields(r *component.Record) (map[string]any, error) {
	if raw, ok := r.Doc.(json.RawMessage); ok {
		// A document passed through as sent: its numbers stay exact
		// (json.Number) for numeric, bigint and json columns.
		var doc map[string]any
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		if err := d.Decode(&doc); err != nil || doc == nil {
			return nil, fmt.Errorf("the record is not a JSON object: %v", err)
		}
		return doc, nil
	}
	doc, ok := r.Doc.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("the record is %s, not an object", describe(r.Doc))
	}
	return doc, nil
}

// values converts a record's fields for the columns (and doc), appending
// to vals.
func (e *encoder) values(r *component.Record, vals []value) ([]value, error) {
	doc, err := fields(r)
	if err != nil {
		return nil, err
	}
	for c, name := range e.columns {
		v := doc[name]
		if s, ok := v.(string); ok && e.kinds[c] == kindScalar {
			if strings.IndexByte(s, 0) >= 0 {
				return nil, fmt.Errorf("field %q: %w", name, errNUL)
			}
			vals = append(vals, value{s: s, ok: true})
			continue
		}
		text, null, err := e.appendValue(e.scratch[:0], v, e.kinds[c])
		e.scratch = text
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", name, err)
		}
		vals = append(vals, value{s: string(text), ok: !null})
	}
	if e.doc {
		text, err := e.appendDoc(e.scratch[:0], doc)
		e.scratch = text
		if err != nil {
			return nil, fmt.Errorf("doc: %w", err)
		}
		vals = append(vals, value{s: string(text), ok: true})
	}
	return vals, nil
}

// appendCopy appends record r's line in COPY's text format: key, columns,
// doc, revision and position. On error buf is returned as it was.
func (e *encoder) appendCopy(buf []byte, r *component.Record, rw *row) ([]byte, error) {
	doc, err := fields(r)
	if err != nil {
		return buf, err
	}
	start := len(buf)
	buf = copyText(buf, rw.key)
	for c, name := range e.columns {
		buf = append(buf, '\t')
		v := doc[name]
		if s, ok := v.(string); ok && e.kinds[c] == kindScalar {
			if strings.IndexByte(s, 0) >= 0 {
				return buf[:start], fmt.Errorf("field %q: %w", name, errNUL)
			}
			buf = copyText(buf, s)
			continue
		}
		text, null, err := e.appendValue(e.scratch[:0], v, e.kinds[c])
		e.scratch = text
		if err != nil {
			return buf[:start], fmt.Errorf("field %q: %w", name, err)
		}
		if null {
			buf = append(buf, `\N`...)
		} else {
			buf = copyText(buf, text)
		}
	}
	if e.doc {
		text, err := e.appendDoc(e.scratch[:0], doc)
		e.scratch = text
		if err != nil {
			return buf[:start], fmt.Errorf("doc: %w", err)
		}
		buf = append(buf, '\t')
		buf = copyText(buf, text)
	}
	buf = append(buf, '\t')
	buf = copyValue(buf, rw.rev)
	buf = append(buf, '\t')
	if rw.hasP {
		buf = strconv.AppendInt(buf, rw.pos, 10)
	} else {
		buf = append(buf, `\N`...)
	}
	buf = append(buf, '\t')
	buf = copyValue(buf, rw.docID)
	return append(buf, '\n'), nil
}

var errNUL = errors.New("contains a NUL character, which Postgres text cannot hold")

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "a list"
	case string:
		return "a string"
	}
	return fmt.Sprintf("a %T", v)
}

// appendDoc appends the fields that are not columns as a JSON object.
func (e *encoder) appendDoc(dst []byte, doc map[string]any) ([]byte, error) {
	dst = append(dst, '{')
	n := 0
	field := func(k string, v any) error {
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		dst = appendJSONString(dst, k)
		dst = append(dst, ':')
		var err error
		dst, err = appendJSON(dst, v, e.docJSON)
		return err
	}
	if e.docJSON { // a json column keeps the text: make it stable
		e.keys = e.keys[:0]
		for k := range doc {
			if !e.skip[k] {
				e.keys = append(e.keys, k)
			}
		}
		sort.Strings(e.keys)
		for _, k := range e.keys {
			if err := field(k, doc[k]); err != nil {
				return dst, err
			}
		}
	} else { // jsonb orders keys itself
		for k, v := range doc {
			if e.skip[k] {
				continue
			}
			if err := field(k, v); err != nil {
				return dst, err
			}
		}
	}
	return append(dst, '}'), nil
}

// appendValue appends the text of v for a column of kind k: strings as they
// are, numbers in full, objects and lists as JSON; any value as JSON for
// json and jsonb; a list as an array literal for an array. null is SQL
// NULL (a missing field or JSON null).
func (e *encoder) appendValue(dst []byte, v any, k kind) (out []byte, null bool, err error) {
	if v == nil {
		return dst, true, nil
	}
	start := len(dst)
	switch k {
	case kindJSON, kindJSONText:
		dst, err = appendJSON(dst, v, k == kindJSONText)
	case kindArray:
		if list, ok := v.([]any); ok {
			dst, err = appendArray(dst, list)
		} else {
			dst, err = appendScalar(dst, v)
		}
	default:
		dst, err = appendScalar(dst, v)
	}
	if err == nil && bytes.IndexByte(dst[start:], 0) >= 0 {
		err = errNUL
	}
	return dst, false, err
}

// appendScalar appends the text of a value for a column that is neither
// JSON nor an array.
func appendScalar(dst []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return append(dst, x...), nil
	case bool:
		return strconv.AppendBool(dst, x), nil
	case float64:
		return appendFloat(dst, x), nil
	case int64:
		return strconv.AppendInt(dst, x, 10), nil
	case int:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case json.Number:
		return append(dst, x...), nil
	case time.Time:
		return x.AppendFormat(dst, time.RFC3339Nano), nil
	case map[string]any, []any: // as text: keys in order, for a stable text
		return appendJSON(dst, x, true)
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(dst, rv.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.AppendUint(dst, rv.Uint(), 10), nil
	case reflect.Float32:
		return appendFloat(dst, rv.Float()), nil
	case reflect.String:
		return append(dst, rv.String()...), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return dst, err
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if json.Unmarshal(b, &s) == nil {
			return append(dst, s...), nil
		}
	}
	return append(dst, b...), nil
}

// appendFloat writes a number in full, without an exponent where it is an
// integer Postgres integer types can read ("3", not "3e+00").
func appendFloat(dst []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(dst, "NaN"...)
	case math.IsInf(f, 1):
		return append(dst, "Infinity"...)
	case math.IsInf(f, -1):
		return append(dst, "-Infinity"...)
	case f == math.Trunc(f) && math.Abs(f) < 1e21:
		return strconv.AppendFloat(dst, f, 'f', -1, 64)
	}
	return strconv.AppendFloat(dst, f, 'g', -1, 64)
}

// appendJSON appends v as JSON, as encoding/json would (without HTML
// escaping); sorted orders object keys.
func appendJSON(dst []byte, v any, sorted bool) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case string:
		return appendJSONString(dst, x), nil
	case bool:
		return strconv.AppendBool(dst, x), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return dst, fmt.Errorf("%v cannot be written in JSON", x)
		}
		abs := math.Abs(x)
		if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
			dst = strconv.AppendFloat(dst, x, 'e', -1, 64)
			if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
				dst[n-2] = dst[n-1] // e-07 → e-7, as encoding/json writes it
				dst = dst[:n-1]
			}
			return dst, nil
		}
		return strconv.AppendFloat(dst, x, 'f', -1, 64), nil
	case int64:
		return strconv.AppendInt(dst, x, 10), nil
	case int:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case json.Number:
		return append(dst, x...), nil
	case []any:
		dst = append(dst, '[')
		for i, item := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendJSON(dst, item, sorted); err != nil {
				return dst, err
			}
		}
		return append(dst, ']'), nil
	case map[string]any:
		dst = append(dst, '{')
		i := 0
		each := func(k string, item any) error {
			if i > 0 {
				dst = append(dst, ',')
			}
			i++
			dst = appendJSONString(dst, k)
			dst = append(dst, ':')
			var err error
			dst, err = appendJSON(dst, item, sorted)
			return err
		}
		if sorted {
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				if err := each(k, x[k]); err != nil {
					return dst, err
				}
			}
		} else {
			for k, item := range x {
				if err := each(k, item); err != nil {
					return dst, err
				}
			}
		}
		return append(dst, '}'), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

// appendJSONString appends s as a JSON string (see jsonx.AppendString).
func appendJSONString(dst []byte, s string) []byte { return jsonx.AppendString(dst, s) }

// appendArray appends a list as a Postgres array literal: {"a","b",NULL},
// lists inside lists as nested arrays.
func appendArray(dst []byte, list []any) ([]byte, error) {
	dst = append(dst, '{')
	for i, v := range list {
		if i > 0 {
			dst = append(dst, ',')
		}
		switch x := v.(type) {
		case nil:
			dst = append(dst, "NULL"...)
		case []any:
			var err error
			if dst, err = appendArray(dst, x); err != nil {
				return dst, err
			}
		default:
			s, err := appendScalar(nil, x)
			if err != nil {
				return dst, err
			}
			dst = append(dst, '"')
			for _, c := range s {
				if c == '"' || c == '\\' {
					dst = append(dst, '\\')
				}
				dst = append(dst, c)
			}
			dst = append(dst, '"')
		}
	}
	return append(dst, '}'), nil
}

// copyText appends s in COPY's text format: backslash, tab, newline and
// carriage return escaped.
func copyText[S string | []byte](buf []byte, s S) []byte {
	start := 0
	for i := 0; i < len(s); i++ {
		var esc string
		switch s[i] {
		case '\\':
			esc = `\\`
		case '\t':
			esc = `\t`
		case '\n':
			esc = `\n`
		case '\r':
			esc = `\r`
		default:
			continue
		}
		buf = append(buf, s[start:i]...)
		buf = append(buf, esc...)
		start = i + 1
	}
	return append(buf, s[start:]...)
}

// copyValue appends a value in COPY's text format, \N for NULL.
func copyValue(buf []byte, v value) []byte {
	if !v.ok {
		return append(buf, `\N`...)
	}
	return copyText(buf, v.s)
}
