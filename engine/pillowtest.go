package engine

// What `ptop test` needs from the engine: loading pillows without the
// environment their sources and sinks need, running one change through a
// pillow exactly as a running pillow does, and decoding a test file with
// the pillow files' decoder (and its positions).

import (
	"os"
	"path/filepath"
	"sort"
)

// LoadOptions change how LoadWith loads pillows. The zero value loads as
// Load does.
type LoadOptions struct {
	// AllowUnsetEnv makes an unset environment variable without a default
	// no load error. The value it is written in is left as if its key were
	// not written (its default, or the zero value), and the pillows where
	// this happened have no source, sinks or checkpoint store built (Src,
	// Outputs and Checkpoints are nil). Their filter, transform and
	// processing settings are compiled as usual, so Process runs them:
	// this is for running examples through a pillow without the servers
	// its source and sinks would talk to, as `ptop test` does.
	AllowUnsetEnv bool
	// Warnings, when not nil, receives each unset environment variable
	// without a default as a warning at its position, instead of an error.
	// The value it is written in is left as if its key were not written,
	// and everything else is compiled and checked as usual, sources and
	// sinks included: this is `ptop validate` without production secrets.
	Warnings *Errors
}

// LoadWith is Load with options.
func LoadWith(opts LoadOptions, paths ...string) ([]*Spec, error) {
	var errs Errors
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			errs.Add(Pos{File: p}, "%v", unwrapPathErr(err))
			continue
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			errs.Add(Pos{File: p}, "%v", unwrapPathErr(err))
			continue
		}
		n := len(files)
		for _, e := range ents {
			if !e.IsDir() && IsPillowFile(e.Name()) {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
		if len(files) == n {
			errs.Add(Pos{File: p}, "no pillow files (*.yaml) in directory")
		}
	}
	var specs []*Spec
	byName := map[string]*Spec{}
	for _, f := range files {
		s, err := loadFileWith(opts, f)
		errs.Append(Pos{File: f}, err)
		if s == nil {
			continue
		}
		if prev, dup := byName[s.Name]; dup {
			errs.Add(s.namePos, "pillow name %q is already used at %s", s.Name, prev.namePos)
			errs.Add(prev.namePos, "pillow name %q is used again at %s", s.Name, s.namePos)
			continue
		}
		byName[s.Name] = s
		specs = append(specs, s)
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	sort.Slice(specs, func(i, j int) bool { return specs[i].Name < specs[j].Name })
	return specs, nil
}

func loadFileWith(opts LoadOptions, path string) (*Spec, error) {
	if !opts.AllowUnsetEnv && opts.Warnings == nil {
		return LoadFile(path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Pos: Pos{File: path}, Msg: unwrapPathErr(err).Error()}
	}
	po := parseOptions{unset: opts.Warnings, noBuildIfUnset: opts.AllowUnsetEnv}
	if po.unset == nil {
		po.unset = new(Errors) // reported nowhere
	}
	return parse(path, data, po)
}

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
