package engine

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"unicode/utf8"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"
)

// FilterEnv is what a filter expression sees: the change.
type FilterEnv struct {
	ID      string         `expr:"id"`
	Seq     string         `expr:"seq"`
	Rev     string         `expr:"rev"`
	Deleted bool           `expr:"deleted"`
	Doc     map[string]any `expr:"doc"`
}

type filter struct {
	prog *vm.Program
}

// scriptErr is an error at a position inside a filter or transform
// (1-based line and column of the script's own text).
type scriptErr struct {
	Line, Col int
	Msg       string
}

func (e *scriptErr) Error() string { return fmt.Sprintf("%d:%d: %s", e.Line, e.Col, e.Msg) }

// compileFilter compiles src; the strings it builds may be up to memory
// bytes long.
func compileFilter(src string, memory ByteSize) (*filter, error) {
	opts := append([]expr.Option{expr.Env(FilterEnv{}), expr.AsBool()}, filterGuards(int64(memory))...)
	prog, err := expr.Compile(src, opts...)
	if err != nil {
		var fe *file.Error
		if errors.As(err, &fe) {
			return nil, &scriptErr{Line: max(fe.Line, 1), Col: fe.Column + 1, Msg: "filter: " + fe.Message}
		}
		return nil, &scriptErr{Line: 1, Col: 1, Msg: "filter: " + err.Error()}
	}
	return &filter{prog: prog}, nil
}

// filterRunner evaluates a filter; one per worker (it reuses its VM).
type filterRunner struct {
	f   *filter
	vm  vm.VM
	env FilterEnv
}

func (r *filterRunner) match(c *Change) (bool, error) {
	r.env = FilterEnv{ID: c.ID, Seq: c.Seq, Rev: c.Rev, Deleted: c.Deleted, Doc: c.Doc}
	out, err := r.vm.Run(r.f.prog, &r.env)
	r.env.Doc = nil
	if err != nil {
		if strings.Contains(err.Error(), stringBudgetMsg) {
			// The VM's stack still holds the strings built so far.
			r.vm = vm.VM{}
			runtime.GC()
		}
		return false, fmt.Errorf("filter: %w", err)
	}
	b, _ := out.(bool)
	return b, nil
}

// scriptLoc places a script written in a pillow file: its line n is the
// file's line lines+n, and its columns are shifted by col (on the first line
// only, for a scalar written on the key's line).
type scriptLoc struct {
	lines, col int
	firstOnly  bool
	// folded, for a folded block scalar (>, >-), places the start of each
	// written line in the value, where the lines are joined by spaces:
	// value is the script's text.
	folded []foldedLine
	value  string
}

// foldedLine is a line of a folded scalar: it starts at byte off of the
// value, and at line, col of the file.
type foldedLine struct{ off, line, col int }

// foldLines maps the lines of a folded block scalar whose first line is
// the file's line first+1 and whose indentation is indent, or returns nil
// when the value is not those lines joined plainly (blank or
// more-indented lines).
func foldLines(lines []string, first, indent int, value string) []foldedLine {
	var b strings.Builder
	var out []foldedLine
	for i := first; i < len(lines); i++ {
		t := strings.TrimRight(lines[i], "\r")
		if strings.TrimSpace(t) == "" {
			if len(out) > 0 {
				break // a blank line: kept as a newline; not mapped
			}
			continue
		}
		if len(t)-len(strings.TrimLeft(t, " ")) != indent {
			break
		}
		if len(out) > 0 {
			b.WriteByte(' ')
		}
		out = append(out, foldedLine{off: b.Len(), line: i + 1, col: indent + 1})
		b.WriteString(t[indent:])
	}
	if b.String() != strings.TrimRight(value, "\n") {
		return nil
	}
	return out
}

func locateScript(data []byte, n *yaml.Node) scriptLoc {
	switch n.Style {
	case yaml.LiteralStyle, yaml.FoldedStyle:
		// The text starts on the line after the indicator, indented.
		lines := strings.Split(string(data), "\n")
		indent := 0
		for i := n.Line; i < len(lines); i++ {
			if t := strings.TrimLeft(lines[i], " "); t != "" {
				indent = len(lines[i]) - len(t)
				break
			}
		}
		loc := scriptLoc{lines: n.Line, col: indent}
		if n.Style == yaml.FoldedStyle {
			loc.folded, loc.value = foldLines(lines, n.Line, indent, n.Value), n.Value
		}
		return loc
	case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
		return scriptLoc{lines: n.Line - 1, col: n.Column, firstOnly: true}
	}
	return scriptLoc{lines: n.Line - 1, col: n.Column - 1, firstOnly: true}
}

// pos maps a script position to the file. A script compiled with its
// lines padded (see pad) already counts the file's lines.
func (l scriptLoc) pos(file string, line, col int, padded bool) Pos {
	if len(l.folded) > 0 && !padded && line == 1 {
		// One line of script, several of the file: find the one col is on.
		off := 0 // col counts characters
		for n := 0; off < len(l.value) && n < col-1; n++ {
			_, size := utf8.DecodeRuneInString(l.value[off:])
			off += size
		}
		fl := l.folded[0]
		for _, f := range l.folded {
			if f.off <= off {
				fl = f
			}
		}
		return Pos{File: file, Line: fl.line, Col: fl.col + utf8.RuneCountInString(l.value[fl.off:off])}
	}
	scriptLine := line
	if padded {
		scriptLine = line - l.lines
	} else {
		line += l.lines
	}
	if !l.firstOnly || scriptLine == 1 {
		col += l.col
	}
	return Pos{File: file, Line: line, Col: col}
}

// pad prefixes src with newlines so that its line numbers, in compile
// errors and in stack traces alike, are the file's.
func (l scriptLoc) pad(src string) string { return strings.Repeat("\n", l.lines) + src }

// scriptError maps an error inside a script to the file's line and column.
// Other errors pass through.
func scriptError(file string, loc scriptLoc, err error, padded bool) error {
	var se *scriptErr
	if !errors.As(err, &se) {
		return err
	}
	return &Error{Pos: loc.pos(file, se.Line, se.Col, padded), Msg: se.Msg}
}
