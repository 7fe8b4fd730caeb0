package engine

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/dimagi/ptop/component"
)

// Config structs of components and of the engine use component's
// Duration and Defaulter alike.
type (
	// Duration is component.Duration.
	Duration = component.Duration
	// Defaulter is component.Defaulter.
	Defaulter = component.Defaulter
)

// Validator is implemented by config structs that check themselves after
// decoding with the engine's Check, which also gives the YAML nodes: the
// engine's own config types, and components written before
// component.Validator (the decoder takes either). Validate must not touch
// the network.
type Validator interface {
	Validate(c *Check)
}

// Check gives a config struct's Validate method the positions of its keys, so
// that a problem with a value is reported where the value is written.
type Check struct {
	file string
	node *yaml.Node
	keys map[string]*yaml.Node
	bad  map[string]bool // keys whose value was already reported
	errs *Errors
	// claims collects the destinations claimed in the file (see Claim).
	claims *[]claim
}

// claim is a destination that one sink alone may write.
type claim struct {
	what, key string // "file path", "/data/out.jsonl"
	pos       Pos
}

// Claim records that the value of field names a destination that no
// other sink, of this pillow or of another one loaded with it, may write:
// what says what it is ("file path") and key identifies it (an absolute
// path). Two claims of one key are load errors at both places.
func (c *Check) Claim(field, what, key string) {
	if c.claims != nil {
		*c.claims = append(*c.claims, claim{what: what, key: key, pos: c.Pos(field)})
	}
}

// clash reports two claims of one destination, at both.
func clash(errs *Errors, first, again claim) {
	errs.Add(again.pos, "%s %q is already written at %s", again.what, again.key, first.pos)
	errs.Add(first.pos, "%s %q is written again at %s", first.what, first.key, again.pos)
}

// checkClaims reports the claims of one destination made twice in list.
func checkClaims(errs *Errors, list []claim) {
	first := map[string]claim{}
	for _, c := range list {
		k := c.what + "\x00" + c.key
		if f, dup := first[k]; dup {
			clash(errs, f, c)
			continue
		}
		first[k] = c
	}
}

// Errorf records a problem with key's value (or with the whole mapping when
// the key is not written). A value that could not be decoded has been
// reported already, and is not reported again.
func (c *Check) Errorf(key, format string, args ...any) {
	if c.bad[key] {
		return
	}
	c.errs.Add(c.Pos(key), format, args...)
}

// Has reports whether key is written in the mapping.
func (c *Check) Has(key string) bool { _, ok := c.keys[key]; return ok }

// Pos is the position of key's value, or of the mapping when it is absent.
func (c *Check) Pos(key string) Pos {
	if n, ok := c.keys[key]; ok {
		return NodePos(c.file, n)
	}
	return NodePos(c.file, c.node)
}

// File is the path of the file being decoded.
func (c *Check) File() string { return c.file }

// Node returns key's value node, or nil.
func (c *Check) Node(key string) *yaml.Node { return c.keys[key] }

// MapKeys implements component.Check.
func (c *Check) MapKeys(key string) []string {
	n := c.keys[key]
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	keys := make([]string, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		keys = append(keys, n.Content[i].Value)
	}
	return keys
}

var _ component.Check = (*Check)(nil)

// decoder turns YAML nodes into config values. Field tags: `yaml:"name"` for
// the key, and `ptop:"required"`, `ptop:"raw"` (no ${VAR} expansion, for
// code such as filters and transforms) or `ptop:"-"` (not decoded).
type decoder struct {
	file   string
	errs   *Errors
	claims []claim
	lookup func(string) (string, bool)
	// unset, when not nil, collects unset environment variables as
	// warnings instead of errors; the value they are in is left as if its
	// key were not written.
	unset *Errors
}

func newDecoder(file string, errs *Errors) *decoder {
	return &decoder{file: file, errs: errs, lookup: os.LookupEnv}
}

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.errs.Add(NodePos(d.file, n), format, args...)
}

// nodeDecoder is implemented by engine types that decode themselves.
type nodeDecoder interface {
	decodeNode(d *decoder, n *yaml.Node, expand bool)
}

// reflectValue returns the settable value a pointer points to.
func reflectValue(ptr any) reflect.Value { return reflect.ValueOf(ptr).Elem() }

var durationType = reflect.TypeOf(Duration(0))

// decode decodes n into v (settable), expanding ${VAR} in scalars when expand.
// It reports problems and leaves v as it was where a value is wrong.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, expand bool) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	if v.CanAddr() {
		if nd, ok := v.Addr().Interface().(nodeDecoder); ok {
			nd.decodeNode(d, n, expand)
			return
		}
	}
	if v.Kind() == reflect.Pointer {
		if isNull(n) {
			return
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), expand)
		return
	}
	if v.Type() == durationType {
		d.decodeDuration(n, v, expand)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, expand)
	case reflect.Slice:
		if isNull(n) {
			return
		}
		if n.Kind != yaml.SequenceNode {
			d.errorf(n, "expected a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), expand)
		}
		v.Set(s)
	case reflect.Map:
		if isNull(n) {
			return
		}
		if n.Kind != yaml.MappingNode {
			d.errorf(n, "expected a mapping, got %s", describe(n))
			return
		}
		if v.Type().Key().Kind() != reflect.String {
			panic("engine: config maps must have string keys")
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			ev := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, ev, expand)
			m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), ev)
		}
		v.Set(m)
	case reflect.Interface:
		if x := d.decodeAny(n, expand); x != nil {
			v.Set(reflect.ValueOf(x))
		}
	default:
		d.decodeScalar(n, v, expand)
	}
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "nothing"
		}
		return strconv.Quote(n.Value)
	}
	return "something else"
}

// scalar returns n with ${VAR} expanded; a scalar whose text changed has
// its type resolved again, so that size: "${N:-5}" is the integer 5 (a
// string field takes the text whatever its type).
func (d *decoder) scalar(n *yaml.Node, expand bool) (*yaml.Node, bool) {
	if !expand || !strings.Contains(n.Value, "$") {
		return n, true
	}
	s, err := expandEnv(n.Value, d.lookup)
	if err != nil {
		var ue *UnsetEnvError
		if d.unset != nil && errors.As(err, &ue) {
			d.unset.Add(NodePos(d.file, n), "%s", err)
		} else {
			d.errorf(n, "%s", err)
		}
		return n, false
	}
	if s == n.Value {
		return n, true
	}
	c := *n
	c.Value = s
	c.Tag = ""
	c.Style = 0
	return &c, true
}

func (d *decoder) decodeScalar(n *yaml.Node, v reflect.Value, expand bool) {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, "expected %s, got %s", kindName(v.Kind()), describe(n))
		return
	}
	n, ok := d.scalar(n, expand)
	if !ok {
		return
	}
	if v.Kind() == reflect.String {
		if isNull(n) {
			return
		}
		v.SetString(n.Value)
		return
	}
	p := reflect.New(v.Type())
	// yaml.v3 would truncate 1.9 into an integer field: only integers go there.
	isInt := kindName(v.Kind()) == "an integer"
	if isNull(n) || (isInt && n.ShortTag() != "!!int") || n.Decode(p.Interface()) != nil {
		d.errorf(n, "expected %s, got %s", kindName(v.Kind()), describe(n))
		return
	}
	v.Set(p.Elem())
}

func kindName(k reflect.Kind) string {
	switch k {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	}
	return "a " + k.String()
}

func (d *decoder) decodeDuration(n *yaml.Node, v reflect.Value, expand bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.errorf(n, "expected a duration such as \"500ms\" or \"10s\", got %s", describe(n))
		return
	}
	n, ok := d.scalar(n, expand)
	if !ok {
		return
	}
	dur, err := time.ParseDuration(n.Value)
	if err != nil {
		secs, ferr := strconv.ParseFloat(n.Value, 64)
		if ferr != nil {
			d.errorf(n, "invalid duration %q: use a number with a unit, such as \"500ms\" or \"10s\"", n.Value)
			return
		}
		dur = time.Duration(secs * float64(time.Second))
	}
	v.SetInt(int64(dur))
}

// decodeAny decodes free-form YAML (selectors, parameters) into plain Go
// values: map[string]any, []any, string, int, float64, bool or nil.
func (d *decoder) decodeAny(n *yaml.Node, expand bool) any {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil
		}
		return d.decodeAny(n.Content[0], expand)
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			m[n.Content[i].Value] = d.decodeAny(n.Content[i+1], expand)
		}
		return m
	case yaml.SequenceNode:
		s := make([]any, len(n.Content))
		for i, item := range n.Content {
			s[i] = d.decodeAny(item, expand)
		}
		return s
	}
	quoted := n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0
	n, ok := d.scalar(n, expand)
	if !ok {
		return nil
	}
	if quoted {
		return n.Value
	}
	var x any
	if err := n.Decode(&x); err != nil {
		d.errorf(n, "%s", err)
		return nil
	}
	return x
}

type fieldInfo struct {
	key      string
	index    int
	required bool
	raw      bool
}

func structFields(t reflect.Type) []fieldInfo {
	var fs []fieldInfo
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		opts := strings.Split(f.Tag.Get("ptop"), ",")
		if opts[0] == "-" {
			continue
		}
		key := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if key == "-" {
			continue
		}
		if key == "" {
			key = strings.ToLower(f.Name)
		}
		fi := fieldInfo{key: key, index: i}
		for _, o := range opts {
			switch o {
			case "required":
				fi.required = true
			case "raw":
				fi.raw = true
			}
		}
		fs = append(fs, fi)
	}
	return fs
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, expand bool) {
	if df, ok := v.Addr().Interface().(Defaulter); ok {
		df.SetDefaults()
	}
	fields := structFields(v.Type())
	check := &Check{file: d.file, node: n, keys: map[string]*yaml.Node{}, bad: map[string]bool{}, errs: d.errs, claims: &d.claims}
	switch {
	case isNull(n):
	case n.Kind != yaml.MappingNode:
		d.errorf(n, "expected a mapping, got %s", describe(n))
		return
	default:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			var f *fieldInfo
			for j := range fields {
				if fields[j].key == k.Value {
					f = &fields[j]
					break
				}
			}
			if f == nil {
				d.errorf(k, "unknown key %q%s", k.Value, suggest(k.Value, fields))
				continue
			}
			if prev, dup := check.keys[k.Value]; dup {
				d.errorf(k, "key %q is already set at line %d", k.Value, prev.Line)
				continue
			}
			check.keys[k.Value] = val
			before, unsetBefore := len(*d.errs), d.unsetCount()
			d.decode(val, v.Field(f.index), expand && !f.raw)
			check.bad[k.Value] = len(*d.errs) > before || d.unsetCount() > unsetBefore
		}
	}
	for _, f := range fields {
		if f.required && !check.Has(f.key) {
			d.errorf(n, "missing required key %q", f.key)
		}
	}
	switch vd := v.Addr().Interface().(type) {
	case Validator:
		vd.Validate(check)
	case component.Validator:
		vd.Validate(check)
	}
}

// suggest names the closest known key, or lists them all.
func suggest(key string, fields []fieldInfo) string {
	names := make([]string, len(fields))
	best, bestDist := "", 3
	for i, f := range fields {
		names[i] = f.key
		if dist := editDistance(key, f.key); dist < bestDist {
			best, bestDist = f.key, dist
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	sort.Strings(names)
	return " (known keys: " + strings.Join(names, ", ") + ")"
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// expandEnv replaces ${VAR} and ${VAR:-default} with values from lookup;
// "$${" stands for a literal "${". An unset variable without a default is
// an error.
func expandEnv(s string, lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		if i > 0 && s[i-1] == '$' {
			b.WriteString(s[:i-1])
			b.WriteString("${")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("unterminated ${ in %q", s)
		}
		expr := s[i+2 : i+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validEnvName(name) {
			return "", fmt.Errorf("invalid environment variable name %q", name)
		}
		val, ok := lookup(name)
		switch {
		case ok && (val != "" || !hasDef):
			b.WriteString(val)
		case hasDef:
			b.WriteString(def)
		default:
			return "", &UnsetEnvError{Name: name}
		}
		s = s[i+end+1:]
	}
}

// UnsetEnvError is an environment variable, named in a pillow file without
// a default, that is not set.
type UnsetEnvError struct{ Name string }

func (e *UnsetEnvError) Error() string {
	return fmt.Sprintf("environment variable %s is not set (use ${%s:-default} for a default)", e.Name, e.Name)
}

func (d *decoder) unsetCount() int {
	if d.unset == nil {
		return 0
	}
	return len(*d.unset)
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if r == '_' || (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z') || (i > 0 && r >= '0' && r <= '9') {
			continue
		}
		return false
	}
	return true
}
