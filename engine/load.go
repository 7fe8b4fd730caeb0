package engine

// Loading a directory of pillow files with options: what `ptop validate`
// (warnings for unset variables) and `ptop test` (no sources or sinks) need.

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
	// A destination claimed by two pillows (claims within one are
	// checked when it is parsed).
	first := map[string]claim{}
	for _, s := range specs {
		mine := map[string]bool{}
		for _, c := range s.claims {
			k := c.what + "\x00" + c.key
			if f, dup := first[k]; dup && !mine[k] {
				clash(&errs, f, c)
			} else if !dup {
				first[k] = c
			}
			mine[k] = true
		}
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
