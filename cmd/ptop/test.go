package main

// ptop test: example changes kept next to a pillow, in NAME.test.yaml
// beside NAME.yaml, run through the pillow by engine.Spec.Process (the
// code a running pillow uses) and compared with what the file expects.
//
//	cases:
//	  - name: an open case is indexed
//	    change: {seq: "1", doc: {_id: c1, doc_type: CommCareCase, name: amina}}
//	    want: [{_id: c1, name: AMINA}]     # the records, in order
//	  - name: a form is filtered out
//	    change: {doc: {_id: f1, doc_type: XFormInstance}}
//	    want: filtered
//	  - name: a deletion deletes
//	    change: {id: c1, deleted: true}
//	    want: delete
//	  - name: a case without a name fails
//	    change: {doc: {_id: c2, doc_type: CommCareCase}}
//	    want_error: cannot read property

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/dimagi/ptop/engine"
)

// testFile is a NAME.test.yaml.
type testFile struct {
	Cases []testCase `yaml:"cases" ptop:"required"`
}

// Validate implements engine.Validator.
func (f *testFile) Validate(ch *engine.Check) {
	if ch.Has("cases") && len(f.Cases) == 0 {
		ch.Errorf("cases", "a test file needs at least one case")
	}
}

// testCase is one example: a change and what the pillow must make of it.
type testCase struct {
	Name   string     `yaml:"name" ptop:"required"`
	Change testChange `yaml:"change" ptop:"required"`
	// Want is filtered, delete, a record, or a list of records ([] for
	// none).
	Want any `yaml:"want"`
	// WantError is part of the error the change must fail with (in any
	// case).
	WantError string `yaml:"want_error"`

	pos  engine.Pos
	want outcome
}

// Validate implements engine.Validator.
func (c *testCase) Validate(ch *engine.Check) {
	c.pos = ch.Pos("name")
	switch {
	case ch.Has("want") && ch.Has("want_error"):
		ch.Errorf("want_error", "set either want or want_error, not both")
	case ch.Has("want_error"):
		if c.WantError == "" {
			ch.Errorf("want_error", "want_error must not be empty: write part of the error message")
		}
		c.want = outcome{kind: kindError, err: c.WantError}
	case ch.Has("want"):
		c.want = parseWant(ch)
	default:
		ch.Errorf("", "a case needs want (a record, a list of records, [] for none, filtered or delete) or want_error")
	}
}

func parseWant(ch *engine.Check) outcome {
	n := ch.Node("want")
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.ScalarNode:
		if n.ShortTag() == "!!str" {
			switch n.Value {
			case kindFiltered, kindDelete:
				return outcome{kind: n.Value}
			}
		}
		ch.Errorf("want", "want is a record, a list of records ([] for none), filtered or delete; got %s", describeNode(n))
		return outcome{}
	case yaml.MappingNode:
		rec, err := yamlJSON(n)
		if err != nil {
			ch.Errorf("want", "%v", err)
			return outcome{}
		}
		return outcome{kind: kindRecords, records: []any{rec}}
	case yaml.SequenceNode:
		recs := []any{}
		for i, item := range n.Content {
			for item.Kind == yaml.AliasNode {
				item = item.Alias
			}
			if item.Kind != yaml.MappingNode {
				ch.Errorf("want", "want: item %d (line %d) is %s; a record is a mapping", i, item.Line, describeNode(item))
				return outcome{}
			}
			rec, err := yamlJSON(item)
			if err != nil {
				ch.Errorf("want", "%v", err)
				return outcome{}
			}
			recs = append(recs, rec)
		}
		return outcome{kind: kindRecords, records: recs}
	}
	ch.Errorf("want", "want is a record, a list of records ([] for none), filtered or delete")
	return outcome{}
}

func describeNode(n *yaml.Node) string {
	switch {
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.ShortTag() == "!!null":
		return "nothing"
	}
	return strconv.Quote(n.Value)
}

// testChange is a change as the feed would send it. Its id is the
// document's _id and its rev the document's _rev unless set.
type testChange struct {
	ID      string         `yaml:"id"`
	Seq     string         `yaml:"seq"`
	Rev     string         `yaml:"rev"`
	Deleted bool           `yaml:"deleted"`
	Doc     map[string]any `yaml:"doc"`

	raw []byte // the document as JSON, as the feed sends it
}

// Validate implements engine.Validator.
func (c *testChange) Validate(ch *engine.Check) {
	if n := ch.Node("doc"); n != nil && c.Doc != nil {
		doc, err := yamlJSON(n)
		if err != nil {
			ch.Errorf("doc", "%v", err)
			return
		}
		c.raw, err = json.Marshal(doc)
		if err != nil {
			ch.Errorf("doc", "%v", err)
			return
		}
		m := doc.(map[string]any)
		if id, ok := m["_id"].(string); ok && !ch.Has("id") {
			c.ID = id
		}
		if rev, ok := m["_rev"].(string); ok && !ch.Has("rev") {
			c.Rev = rev
		}
	}
	// Keyed to doc, these are not repeated when doc was reported already.
	key := ""
	if ch.Has("doc") {
		key = "doc"
	}
	if c.ID == "" && !ch.Has("id") {
		ch.Errorf(key, "a change needs an id, or a doc with an _id")
	}
	if !c.Deleted && c.raw == nil {
		ch.Errorf(key, "a change needs a doc, unless it is a deletion (deleted: true)")
	}
}

func (c *testChange) change() engine.Change {
	return engine.Change{ID: c.ID, Seq: c.Seq, Rev: c.Rev, Deleted: c.Deleted, RawDoc: c.raw}
}

// yamlJSON turns a YAML node into the JSON value it reads as: numbers as
// json.Number, timestamps as the text written, merge keys (<<: *anchor)
// merged.
func yamlJSON(n *yaml.Node) (any, error) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return yamlJSON(n.Content[0])
	case yaml.MappingNode:
		m := map[string]any{}
		var merged []map[string]any
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.ShortTag() == "!!merge" {
				x, err := yamlJSON(v)
				if err != nil {
					return nil, err
				}
				switch x := x.(type) {
				case map[string]any:
					merged = append(merged, x)
				case []any:
					for _, y := range x {
						if ym, ok := y.(map[string]any); ok {
							merged = append(merged, ym)
						}
					}
				}
				continue
			}
			x, err := yamlJSON(v)
			if err != nil {
				return nil, err
			}
			m[k.Value] = x
		}
		// Keys written in the mapping win over merged ones; among merged
		// mappings the first wins.
		for _, mm := range merged {
			for k, v := range mm {
				if _, set := m[k]; !set {
					m[k] = v
				}
			}
		}
		return m, nil
	case yaml.SequenceNode:
		s := make([]any, len(n.Content))
		for i, item := range n.Content {
			x, err := yamlJSON(item)
			if err != nil {
				return nil, err
			}
			s[i] = x
		}
		return s, nil
	}
	switch n.ShortTag() {
	case "!!null":
		return nil, nil
	case "!!bool":
		var b bool
		if err := n.Decode(&b); err != nil {
			return nil, fmt.Errorf("line %d: %v", n.Line, err)
		}
		return b, nil
	case "!!int", "!!float":
		var x any
		if err := n.Decode(&x); err != nil {
			return nil, fmt.Errorf("line %d: %v", n.Line, err)
		}
		switch x := x.(type) {
		case int:
			return json.Number(strconv.Itoa(x)), nil
		case int64:
			return json.Number(strconv.FormatInt(x, 10)), nil
		case uint64:
			return json.Number(strconv.FormatUint(x, 10)), nil
		case float64:
			if math.IsInf(x, 0) || math.IsNaN(x) {
				return nil, fmt.Errorf("line %d: %s is not a JSON number", n.Line, n.Value)
			}
			return json.Number(strconv.FormatFloat(x, 'g', -1, 64)), nil
		}
	}
	return n.Value, nil
}

const (
	kindRecords  = "records"
	kindFiltered = "filtered"
	kindDelete   = "delete"
	kindError    = "error"
)

// outcome is what a pillow makes of a change, or what a case wants.
type outcome struct {
	kind    string
	records []any  // kindRecords: the records as JSON values
	err     string // kindError: the error, or the part a case wants
}

// process runs c through spec.
func process(spec *engine.Spec, c engine.Change) outcome {
	recs, filtered, err := spec.Process(c)
	switch {
	case err != nil:
		return outcome{kind: kindError, err: err.Error()}
	case filtered:
		return outcome{kind: kindFiltered}
	case len(recs) == 1 && recs[0].Delete:
		return outcome{kind: kindDelete}
	}
	out := outcome{kind: kindRecords, records: []any{}}
	for i, r := range recs {
		v, err := normalize(r.Doc)
		if err != nil {
			return outcome{kind: kindError, err: fmt.Sprintf("record %d cannot be written as JSON: %v", i, err)}
		}
		out.records = append(out.records, v)
	}
	return out
}

// normalize is v as JSON sees it, with numbers as json.Number.
func normalize(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var x any
	err = d.Decode(&x)
	return x, err
}

// matches reports whether got is what want asks for, and where records
// differ.
func matches(want, got outcome) (bool, []string) {
	if want.kind == kindError {
		return got.kind == kindError && strings.Contains(strings.ToLower(got.err), strings.ToLower(want.err)), nil
	}
	if want.kind != got.kind {
		return false, nil
	}
	if want.kind != kindRecords {
		return true, nil
	}
	var diffs []string
	diffJSON("", want.records, got.records, &diffs)
	return len(diffs) == 0, diffs
}

// diffJSON lists the paths where got differs from want. Numbers are equal
// when their values are (3, 3.0 and 3e0 alike).
func diffJSON(path string, want, got any, out *[]string) {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			break
		}
		keys := map[string]bool{}
		for k := range w {
			keys[k] = true
		}
		for k := range g {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			p := path + pathKey(k)
			wv, inW := w[k]
			gv, inG := g[k]
			switch {
			case !inG:
				*out = append(*out, fmt.Sprintf("%s: missing, expected %s", p, compactJSON(wv)))
			case !inW:
				*out = append(*out, fmt.Sprintf("%s: not expected, got %s", p, compactJSON(gv)))
			default:
				diffJSON(p, wv, gv, out)
			}
		}
		return
	case []any:
		g, ok := got.([]any)
		if !ok {
			break
		}
		for i := 0; i < max(len(w), len(g)); i++ {
			p := fmt.Sprintf("%s[%d]", path, i)
			switch {
			case i >= len(g):
				*out = append(*out, fmt.Sprintf("%s: missing, expected %s", p, compactJSON(w[i])))
			case i >= len(w):
				*out = append(*out, fmt.Sprintf("%s: not expected, got %s", p, compactJSON(g[i])))
			default:
				diffJSON(p, w[i], g[i], out)
			}
		}
		return
	case json.Number:
		if g, ok := got.(json.Number); ok && numbersEqual(w, g) {
			return
		}
	default:
		if want == got {
			return
		}
	}
	if path == "" {
		path = "(the records)"
	}
	*out = append(*out, fmt.Sprintf("%s: expected %s, got %s", path, compactJSON(want), compactJSON(got)))
}

// numbersEqual compares numbers as JavaScript does: as float64 values,
// which is what the engine decodes documents into.
func numbersEqual(a, b json.Number) bool {
	x, errx := strconv.ParseFloat(string(a), 64)
	y, erry := strconv.ParseFloat(string(b), 64)
	if errx == nil && erry == nil {
		return x == y
	}
	rx, okx := new(big.Rat).SetString(string(a))
	ry, oky := new(big.Rat).SetString(string(b))
	return okx && oky && rx.Cmp(ry) == 0
}

var identRE = regexp.MustCompile(`^[A-Za-z_$][A-Za-z0-9_$]*$`)

func pathKey(k string) string {
	if identRE.MatchString(k) {
		return "." + k
	}
	return "[" + strconv.Quote(k) + "]"
}

func compactJSON(v any) string {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	if err := e.Encode(v); err != nil {
		return fmt.Sprint(v)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func indentJSON(v any, indent string) string {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	e.SetIndent(indent, "  ")
	if err := e.Encode(v); err != nil {
		return indent + fmt.Sprint(v)
	}
	return indent + strings.TrimSuffix(b.String(), "\n")
}

// describe writes an outcome for a report, each line indented.
func (o outcome) describe(indent string, want bool) string {
	switch o.kind {
	case kindFiltered:
		return indent + "filtered"
	case kindDelete:
		return indent + "delete"
	case kindError:
		if want {
			return indent + "an error containing " + strconv.Quote(o.err)
		}
		return indent + "error: " + o.err
	}
	n := len(o.records)
	head := fmt.Sprintf("%s%d record%s", indent, n, plural(n))
	if n == 0 {
		return head
	}
	return head + ":\n" + indentJSON(o.records, indent)
}

// pillowTests is a pillow and its test file.
type pillowTests struct {
	spec  *engine.Spec
	file  string // "" when the pillow has none
	cases []testCase
}

func cmdTest(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("test", "test [DIR or PILLOW FILE] [-v]", stderr)
	verbose := fs.Bool("v", false, "name every case, not only the failing ones")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 1 {
		fmt.Fprintln(stderr, "ptop test: one directory at most")
		return 2
	}
	dir := "pipelines"
	if len(pos) == 1 {
		dir = pos[0]
	}
	if isTestFile(dir) { // the test file named rather than its pillow
		stem := strings.TrimSuffix(strings.TrimSuffix(dir, filepath.Ext(dir)), ".test")
		dir = stem + ".yaml"
		if _, err := os.Stat(dir); err != nil {
			dir = stem + ".yml"
		}
	}
	// Nothing is opened, so a variable that only a source or sink needs
	// (COUCH_URL) need not be set.
	specs, err := engine.LoadWith(engine.LoadOptions{AllowUnsetEnv: true}, dir)
	if err != nil {
		printLoadErrors(stderr, err)
		return 1
	}
	tests, err := findTests(dir, specs)
	if err != nil {
		printLoadErrors(stderr, err)
		return 1
	}

	passed, failed := 0, 0
	for _, pt := range tests {
		if pt.file == "" {
			fmt.Fprintf(stdout, "?    %s\t[no test file]\n", pt.spec.Name)
			continue
		}
		bad := 0
		for _, tc := range pt.cases {
			got := process(pt.spec, tc.Change.change())
			ok, diffs := matches(tc.want, got)
			if ok {
				passed++
				if *verbose {
					fmt.Fprintf(stdout, "--- ok: %s: %s (%s)\n", pt.spec.Name, tc.Name, casePos(tc.pos))
				}
				continue
			}
			failed++
			bad++
			fmt.Fprintf(stdout, "--- FAIL: %s: %s (%s)\n", pt.spec.Name, tc.Name, casePos(tc.pos))
			fmt.Fprintf(stdout, "    expected:\n%s\n", tc.want.describe("      ", true))
			fmt.Fprintf(stdout, "    got:\n%s\n", got.describe("      ", false))
			if len(diffs) > 0 {
				fmt.Fprintln(stdout, "    differences:")
				for _, d := range diffs {
					fmt.Fprintf(stdout, "      %s\n", d)
				}
			}
		}
		if bad == 0 {
			fmt.Fprintf(stdout, "ok   %s\t%d case%s\n", pt.spec.Name, len(pt.cases), plural(len(pt.cases)))
		} else {
			fmt.Fprintf(stdout, "FAIL %s\t%d of %d case%s failed\n", pt.spec.Name, bad, len(pt.cases), plural(len(pt.cases)))
		}
	}
	fmt.Fprintf(stdout, "%d cases passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

// casePos is a case's position as file:line.
func casePos(p engine.Pos) string {
	p.Col = 0
	return p.String()
}

// findTests pairs each pillow with its test file, NAME.test.yaml (or
// .test.yml) beside NAME.yaml, and decodes the test files. A test file
// beside no pillow is a problem.
func findTests(path string, specs []*engine.Spec) ([]*pillowTests, error) {
	byFile := map[string]*pillowTests{}
	var all []*pillowTests
	for _, s := range specs {
		pt := &pillowTests{spec: s}
		byFile[filepath.Clean(s.File)] = pt
		all = append(all, pt)
	}
	var candidates []string
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		ents, err := os.ReadDir(path)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if !e.IsDir() && isTestFile(e.Name()) {
				candidates = append(candidates, filepath.Join(path, e.Name()))
			}
		}
	} else {
		stem := strings.TrimSuffix(path, filepath.Ext(path))
		for _, ext := range []string{".test.yaml", ".test.yml"} {
			if _, err := os.Stat(stem + ext); err == nil {
				candidates = append(candidates, stem+ext)
			}
		}
	}
	var errs engine.Errors
	for _, f := range candidates {
		stem := strings.TrimSuffix(strings.TrimSuffix(f, filepath.Ext(f)), ".test")
		var pt *pillowTests
		for _, ext := range []string{".yaml", ".yml"} {
			if p := byFile[filepath.Clean(stem+ext)]; p != nil {
				pt = p
				break
			}
		}
		if pt == nil {
			errs.Add(engine.Pos{File: f, Line: 1, Col: 1}, "no pillow %s beside this test file", filepath.Base(stem)+".yaml")
			continue
		}
		if pt.file != "" {
			errs.Add(engine.Pos{File: f, Line: 1, Col: 1}, "pillow %s has another test file, %s", filepath.Base(pt.spec.File), pt.file)
			continue
		}
		var tf testFile
		if err := engine.DecodeFile(f, &tf); err != nil {
			errs.Append(engine.Pos{File: f}, err)
			continue
		}
		pt.file, pt.cases = f, tf.Cases
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return all, nil
}

func isTestFile(name string) bool {
	return strings.HasSuffix(name, ".test.yaml") || strings.HasSuffix(name, ".test.yml")
}
