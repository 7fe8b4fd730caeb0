package engine

// What `ptop test` needs from the engine besides LoadWith (load.go):
// running one change through a pillow exactly as a running pillow does, and
// decoding a test file with the pillow files' decoder (and its positions).

import (
	"os"
)

// Process runs one change through the pillow as a running pillow does —
// the source's error, the design-document and deletion rules,
// max_doc_bytes (of RawDoc, the document as the feed sends it), decoding,
// the filter, the transform and the records' ids — with the same code,
// and touches neither source nor sinks. It returns the records the change
// makes (a deletion makes one Delete record), or filtered when it makes
// none because the filter was false, it is a design document, or it is a
// deletion and the pillow skips deletes; or the error that would send the
// change to the error store. A transform returning null makes no record
// and is not filtered. Each call runs the transform in a fresh runtime.
func (s *Spec) Process(c Change) (records []Record, filtered bool, err error) {
	one := *s
	one.Workers = 1
	p := &Pillow{Spec: &one}
	ws, err := p.newWorkers()
	if err != nil {
		return nil, false, err
	}
	recs, _, fails, n := p.processChunk(ws[0], []Change{c})
	if len(fails) > 0 {
		return nil, false, fails[0].Err
	}
	return recs, n > 0, nil
}

// DecodeFile decodes a YAML file into v, a pointer to a struct, the way
// pillow files are decoded: strictly (an unknown key is an error), with
// `yaml:"key"` and `ptop:"required"` tags, Defaulter and Validator, but
// with no ${VAR} expansion. Every problem is returned, as Errors with the
// file, line and column.
func DecodeFile(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return &Error{Pos: Pos{File: path}, Msg: unwrapPathErr(err).Error()}
	}
	return DecodeYAML(path, data, v)
}

// DecodeYAML is DecodeFile of data; path names it in messages.
func DecodeYAML(path string, data []byte, v any) error {
	doc, err := parseYAML(path, data, "file")
	if err != nil {
		return err
	}
	var errs Errors
	d := newDecoder(path, &errs)
	d.decode(doc, reflectValue(v), false)
	return errs.Err()
}
