package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Config is a pillow file as written.
type Config struct {
	Name        string      `yaml:"name" ptop:"required"`
	Description string      `yaml:"description" doc:"Free text for people reading the pillow; ptop status shows it."`
	Source      SourceBlock `yaml:"source" ptop:"required"`
	// Filter is an expr-lang expression over the change (id, seq, rev,
	// deleted, doc); changes for which it is false are dropped.
	Filter string `yaml:"filter" ptop:"raw" doc:"An expr-lang expression over the change (id, seq, rev, deleted, doc) that must be boolean; changes for which it is false are dropped. An unknown name is a load error."`
	// Transform is JavaScript defining function transform(doc, change).
	Transform        string      `yaml:"transform" ptop:"raw" doc:"JavaScript defining function transform(doc, change), returning a record, an array of records or null. Set this or transform_file, not both."`
	TransformFile    string      `yaml:"transform_file" doc:"A JavaScript file defining transform(doc, change), relative to the pillow file: a regular UTF-8 file of at most 4 MiB. Set this or transform, not both."`
	TransformTimeout Duration    `yaml:"transform_timeout" doc:"CPU time limit of one transform call (default 1s); a call that uses more fails its change. Time the process was stopped or waiting for a CPU does not count."`
	TransformMemory  ByteSize    `yaml:"transform_memory" doc:"Memory one transform call may use (default 256MiB): the heap it grows, and the largest string, array or buffer one built-in may make; a call that uses more fails its change."`
	TransformStack   int         `yaml:"transform_stack" doc:"Deepest call stack of a transform, in calls (default 1000); deeper recursion fails its change."`
	Batch            Batch       `yaml:"batch" doc:"When a batch is written: at size changes, or wait after its first change, whichever comes first."`
	Sinks            []SinkBlock `yaml:"sinks" ptop:"required" doc:"Where records go: a list of one-key objects, each a sink type with its settings. At least one."`
	// Errors says how failed changes are retried.
	Errors RetryPolicy `yaml:"errors" doc:"How failed changes are retried from the error store."`
	// Checkpoint names where the checkpoint is kept, when not in the
	// source.
	Checkpoint *CheckpointBlock `yaml:"checkpoint" doc:"Keep the checkpoint in this store instead of the source, e.g. {postgres: {dsn: …}}; with a Postgres sink on the same database, records and checkpoint are written in one transaction."`
	// IncludeDesign passes design documents (_design/…) on; they are
	// skipped by default.
	IncludeDesign bool `yaml:"include_design" doc:"Pass design documents (_design/…) on; they are skipped by default."`
	// SkipDeletes drops deletions instead of deleting the document's
	// records in every sink.
	SkipDeletes bool `yaml:"skip_deletes" doc:"Drop deletions instead of deleting the document's records in every sink."`
	// KeepFiltered leaves the records of a document that no longer passes
	// the filter in the sinks, instead of deleting them.
	KeepFiltered bool `yaml:"keep_filtered" doc:"Leave the records of a document that no longer passes the filter in the sinks; by default they are deleted, as the document now produces none."`
	// Workers is the number of goroutines running filter and transform;
	// 0 means one per CPU.
	Workers int `yaml:"workers" doc:"Goroutines running filter and transform in parallel, order kept; 0 (default) means one per CPU; at most 256."`
	// MaxDocBytes fails documents larger than this (as the feed sends
	// them) instead of processing them; 0 means no limit.
	MaxDocBytes int `yaml:"max_doc_bytes" doc:"A larger document (as the feed sends it) is a failed change instead of being processed; 0 (default) means no limit."`
}

// Batch says when a batch is written: at Size changes or Wait after its
// first change, whichever comes first.
type Batch struct {
	Size int      `yaml:"size" doc:"Changes per batch (default 500, at most 100000)."`
	Wait Duration `yaml:"wait" doc:"Longest wait after a batch's first change before it is written (default 100ms)."`
}

// MaxBatchSize and MaxWorkers bound batch.size and workers: a batch's
// changes are buffered ahead, and each worker holds a JavaScript runtime,
// so larger values only cost memory.
const (
	MaxBatchSize = 100000
	MaxWorkers   = 256
)

// Validate implements Validator.
func (b *Batch) Validate(ch *Check) {
	if b.Size <= 0 && ch.Has("size") {
		ch.Errorf("size", "batch size must be positive, got %d", b.Size)
	}
	if b.Size > MaxBatchSize {
		ch.Errorf("size", "batch size must be at most %d, got %d", MaxBatchSize, b.Size)
	}
	if b.Wait <= 0 && ch.Has("wait") {
		ch.Errorf("wait", "batch wait must be positive, got %s", b.Wait)
	}
}

// jsLimits are the limits of one transform call.
func (c *Config) jsLimits() jsLimits {
	return jsLimits{Timeout: c.TransformTimeout.D(), Memory: c.TransformMemory, Stack: c.TransformStack}
}

// SetDefaults implements Defaulter.
func (c *Config) SetDefaults() {
	c.TransformTimeout = Duration(time.Second)
	c.TransformMemory = 256 << 20
	c.TransformStack = 1000
	c.Batch = Batch{Size: 500, Wait: Duration(100 * time.Millisecond)}
	c.Errors = RetryPolicy{MaxAttempts: 8, Backoff: Duration(30 * time.Second), MaxBackoff: Duration(6 * time.Hour), Poll: Duration(5 * time.Second)}
}

// RetryPolicy is `errors: {…}`: failed changes are retried after Backoff,
// doubling up to MaxBackoff, until MaxAttempts attempts have failed; the
// error store is checked for due retries every Poll.
type RetryPolicy struct {
	MaxAttempts int      `yaml:"max_attempts" doc:"Attempts before a failed change is given up (kept in the error store, no longer retried); default 8."`
	Backoff     Duration `yaml:"backoff" doc:"Delay before the first retry (default 30s); it doubles after each failed attempt."`
	MaxBackoff  Duration `yaml:"max_backoff" doc:"Longest delay between retries (default 6h)."`
	Poll        Duration `yaml:"poll" doc:"How often the error store is checked for due retries (default 5s)."`
}

// Validate implements Validator.
func (r *RetryPolicy) Validate(ch *Check) {
	if r.MaxAttempts <= 0 {
		ch.Errorf("max_attempts", "max_attempts must be positive, got %d", r.MaxAttempts)
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{{"backoff", r.Backoff}, {"max_backoff", r.MaxBackoff}, {"poll", r.Poll}} {
		if d.v <= 0 {
			ch.Errorf(d.key, "%s must be positive, got %s", d.key, d.v)
		}
	}
}

// Next is the delay before attempt n+1 after n failed attempts, or 0 when
// there is to be none.
func (r RetryPolicy) Next(n int) time.Duration {
	if n >= r.MaxAttempts {
		return 0
	}
	d := r.Backoff.D()
	for i := 1; i < n && d < r.MaxBackoff.D(); i++ {
		d *= 2
	}
	return min(d, r.MaxBackoff.D())
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// Validate implements Validator.
func (c *Config) Validate(ch *Check) {
	if ch.Has("name") && !nameRE.MatchString(c.Name) {
		ch.Errorf("name", "invalid pillow name %q: use letters, digits, '-', '_' and '.', starting with a letter or digit", c.Name)
	}
	if c.TransformTimeout <= 0 && ch.Has("transform_timeout") {
		ch.Errorf("transform_timeout", "transform_timeout must be positive, got %s", c.TransformTimeout)
	}
	if c.TransformMemory < 1<<20 && ch.Has("transform_memory") {
		ch.Errorf("transform_memory", "transform_memory must be at least 1MiB, got %s", c.TransformMemory)
	}
	if c.TransformStack < 10 && ch.Has("transform_stack") {
		ch.Errorf("transform_stack", "transform_stack must be at least 10, got %d", c.TransformStack)
	}
	if c.Workers < 0 {
		ch.Errorf("workers", "workers must be 0 (one per CPU) or more, got %d", c.Workers)
	}
	if c.Workers > MaxWorkers {
		ch.Errorf("workers", "workers must be at most %d, got %d", MaxWorkers, c.Workers)
	}
	if c.MaxDocBytes < 0 {
		ch.Errorf("max_doc_bytes", "max_doc_bytes must be 0 (no limit) or more, got %d", c.MaxDocBytes)
	}
	if ch.Has("transform") && ch.Has("transform_file") {
		ch.Errorf("transform_file", "set either transform or transform_file, not both")
	}
	if ch.Has("sinks") && len(c.Sinks) == 0 && ch.Node("sinks").Kind == yaml.SequenceNode {
		ch.Errorf("sinks", "a pillow needs at least one sink")
	}
}

// SourceBlock is `source: {TYPE: {…}}`.
type SourceBlock struct{ block }

// SinkBlock is one item of `sinks: [{TYPE: {…}}]`.
type SinkBlock struct{ block }

type block struct {
	Type   string
	Config any // the registered type's *C
	Pos    Pos // of the type key
	// unset: an environment variable in Config is not set (only when
	// unset variables are warnings); the block is checked but not built.
	unset bool
}

// CheckpointBlock is `checkpoint: {TYPE: {…}}`.
type CheckpointBlock struct{ block }

func (b *CheckpointBlock) decodeNode(d *decoder, n *yaml.Node, expand bool) {
	b.block.decodeNode(d, n, expand, "checkpoint store", checkpoints)
}

func (b *SourceBlock) decodeNode(d *decoder, n *yaml.Node, expand bool) {
	b.block.decodeNode(d, n, expand, "source", sources)
}

func (b *SinkBlock) decodeNode(d *decoder, n *yaml.Node, expand bool) {
	b.block.decodeNode(d, n, expand, "sink", sinks)
}

func (b *block) decodeNode(d *decoder, n *yaml.Node, expand bool, kind string, reg map[string]plugin) {
	if n.Kind != yaml.MappingNode || len(n.Content) != 2 {
		got := describe(n)
		if n.Kind == yaml.MappingNode {
			got = fmt.Sprintf("%d keys", len(n.Content)/2)
		}
		d.errorf(n, "a %s is a mapping with exactly one key, its type (%s), got %s", kind, names(reg), got)
		return
	}
	k, v := n.Content[0], n.Content[1]
	p, ok := reg[k.Value]
	if !ok {
		d.errorf(k, "unknown %s type %q (known: %s)", kind, k.Value, names(reg))
		return
	}
	b.Type, b.Pos = k.Value, NodePos(d.file, k)
	cfg := p.NewConfig()
	before := d.unsetCount()
	d.decode(v, reflectValue(cfg), expand)
	b.Config = cfg
	b.unset = d.unsetCount() > before
}

// Spec is a loaded, compiled pillow: everything `ptop validate` checks,
// ready to run.
type Spec struct {
	Config
	File string
	// Hash identifies the definition (the file and its transform file), so
	// a reload can tell a changed pillow from an unchanged one.
	Hash      string
	source    Source
	outputs   []NamedSink
	cps       CheckpointStore
	filter    *filter
	transform *Transform
	namePos   Pos
	claims    []claim // destinations its sinks write (see Check.Claim)
}

// Src is the pillow's source.
func (s *Spec) Src() Source { return s.source }

// Checkpoints is where the pillow keeps its checkpoint: the `checkpoint`
// store, else the source when it can, else nil (no checkpoint).
func (s *Spec) Checkpoints() CheckpointStore { return s.cps }

// Outputs are the pillow's sinks, in the order written.
func (s *Spec) Outputs() []NamedSink { return s.outputs }

// NamedSink is a sink with the name it is logged and counted under.
type NamedSink struct {
	Name string // "TYPE" or "TYPE#N" when a pillow has several of a type
	Sink Sink
}

// IsPillowFile reports whether a file name is a pillow file: YAML, but not a
// test file (NAME.test.yaml) kept next to a pillow.
func IsPillowFile(name string) bool {
	ext := filepath.Ext(name)
	if ext != ".yaml" && ext != ".yml" {
		return false
	}
	return !strings.HasSuffix(strings.TrimSuffix(name, ext), ".test")
}

// Load reads and compiles pillow files. Each path is a file or a directory,
// whose pillow files (*.yaml, *.yml, but not *.test.yaml) are loaded. It
// touches no network. Every problem in every file is reported, as Errors.
func Load(paths ...string) ([]*Spec, error) {
	return LoadWith(LoadOptions{}, paths...)
}

// MaxTransformFileBytes is the largest transform_file read.
const MaxTransformFileBytes = 4 << 20

// readTransformFile reads a transform file: a regular file (not a device
// or a pipe, which could be endless) of valid UTF-8, at most
// MaxTransformFileBytes. Its errors never quote its content.
func readTransformFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxTransformFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxTransformFileBytes {
		return nil, fmt.Errorf("larger than %d MiB", MaxTransformFileBytes>>20)
	}
	if !utf8.Valid(b) {
		return nil, errors.New("not UTF-8 text; a transform file is JavaScript")
	}
	return b, nil
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// LoadFile reads and compiles one pillow file. On problems it returns them
// all as Errors, with a nil Spec, unless only the cross-file name check
// could still use it.
func LoadFile(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Pos: Pos{File: path}, Msg: unwrapPathErr(err).Error()}
	}
	return Parse(path, data)
}

// Parse compiles a pillow file's content; path names it in messages and
// locates its transform_file. Environment variables come from the process.
func Parse(path string, data []byte) (*Spec, error) {
	return parse(path, data, parseOptions{})
}

// parseOptions change how parse treats environment variables.
type parseOptions struct {
	lookup func(string) (string, bool) // default os.LookupEnv
	// unset, when not nil, collects unset variables as warnings (see
	// LoadOptions.Warnings).
	unset *Errors
	// noBuildIfUnset leaves the source, sinks and checkpoint store of a
	// pillow with an unset variable unbuilt (see LoadOptions.AllowUnsetEnv).
	noBuildIfUnset bool
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML parses data into its document's root node; YAML syntax errors
// and an empty document are reported at their position.
func parseYAML(path string, data []byte, what string) (*yaml.Node, error) {
	var errs Errors
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		msg := err.Error()
		pos := Pos{File: path}
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			_, _ = fmt.Sscan(m[1], &pos.Line)
			pos.Col = 1
			msg = m[2]
			pos.Line, pos.Col = yamlErrorPos(data, pos.Line, msg)
		}
		errs.Add(pos, "invalid YAML: %s", strings.TrimPrefix(msg, "yaml: "))
		return nil, errs.Err()
	}
	if len(root.Content) == 0 {
		errs.Add(Pos{File: path, Line: 1, Col: 1}, "empty %s", what)
		return nil, errs.Err()
	}
	w := aliasWalk{file: path}
	if err := w.walk(root.Content[0], 0, nil); err != nil {
		return nil, err
	}
	return root.Content[0], nil
}

// yamlErrorPos places a syntax error that yaml.v3 reports at "line n".
// Its scanner counts lines from 1, but its parser from 0, and for an
// unclosed flow collection or a block mapping it names the line where
// that started: the bracket that is never closed, the mapping's first
// key. The column is that bracket's, or the line's first character.
func yamlErrorPos(data []byte, n int, msg string) (line, col int) {
	var open byte
	switch msg {
	case "did not find expected ',' or ']'":
		open = '['
	case "did not find expected ',' or '}'":
		open = '{'
	case "did not find expected key", "did not find expected '-' indicator", "did not find expected node content",
		"did not find expected <document start>", "found undefined tag handle", "found duplicate %YAML directive",
		"found incompatible YAML document", "found duplicate %TAG directive":
	default:
		return n, 1 // a scanner error
	}
	line = n + 1
	lines := strings.Split(string(data), "\n")
	last := len(lines)
	for last > 1 && strings.TrimSpace(lines[last-1]) == "" {
		last--
	}
	if line > last {
		// At the end of the file: the last line is what is unfinished.
		line = last
		text := lines[line-1]
		for _, b := range []byte{'[', '{'} {
			if i := unclosed(text, b); i >= 0 {
				return line, i + 1
			}
		}
		return line, len(text) + 1
	}
	text := lines[line-1]
	col = len(text) - len(strings.TrimLeft(text, " ")) + 1
	if open != 0 {
		if i := unclosed(text, open); i >= 0 {
			col = i + 1
		}
	}
	return line, col
}

// unclosed returns the index of the first bracket open (the '[' or '{')
// of text that text does not close, or -1; quoted strings and comments
// are skipped.
func unclosed(text string, open byte) int {
	var stack []int
	for i := 0; i < len(text); i++ {
		switch c := text[i]; c {
		case '"', '\'':
			j := i + 1
			for j < len(text) && text[j] != c {
				if c == '"' && text[j] == '\\' {
					j++
				}
				j++
			}
			i = j
		case '#':
			if i == 0 || text[i-1] == ' ' {
				i = len(text)
			}
		case '[', '{':
			stack = append(stack, i)
		case ']', '}':
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		}
	}
	for _, i := range stack {
		if text[i] == open {
			return i
		}
	}
	return -1
}

// Bounds of YAML alias expansion: a few hundred bytes of nested aliases
// (a "billion laughs") would expand into millions of values when decoded.
const (
	MaxAliasDepth = 10     // aliases inside the value of an alias, nested
	MaxAliases    = 1000   // aliases followed in one file, expanded
	MaxValues     = 100000 // values in one file, aliases expanded
)

// aliasWalk counts what a document expands to, stopping at the first
// bound passed: it takes at most MaxValues steps.
type aliasWalk struct {
	file            string
	aliases, values int
}

// walk counts n and what it holds; outer is the outermost alias being
// expanded (where a problem is reported: the alias written in the
// document), depth how many are nested.
func (w *aliasWalk) walk(n *yaml.Node, depth int, outer *yaml.Node) error {
	at := n
	if outer != nil {
		at = outer
	}
	w.values++
	if w.values > MaxValues {
		return &Error{Pos: NodePos(w.file, at), Msg: fmt.Sprintf("the file expands to more than %d values through YAML aliases", MaxValues)}
	}
	if n.Kind == yaml.AliasNode {
		w.aliases++
		switch {
		case w.aliases > MaxAliases:
			return &Error{Pos: NodePos(w.file, at), Msg: fmt.Sprintf("more than %d YAML aliases, expanded", MaxAliases)}
		case depth >= MaxAliasDepth:
			return &Error{Pos: NodePos(w.file, at), Msg: fmt.Sprintf("YAML aliases nested more than %d deep", MaxAliasDepth)}
		case n.Alias == nil:
			return nil
		}
		return w.walk(n.Alias, depth+1, at)
	}
	for _, c := range n.Content {
		if err := w.walk(c, depth, outer); err != nil {
			return err
		}
	}
	return nil
}

func parse(path string, data []byte, po parseOptions) (*Spec, error) {
	var errs Errors
	doc, err := parseYAML(path, data, "pillow file")
	if err != nil {
		return nil, err
	}
	if doc.Kind != yaml.MappingNode {
		errs.Add(NodePos(path, doc), "a pillow file is a mapping (name, source, sinks, …), got %s", describe(doc))
		return nil, errs.Err()
	}
	d := newDecoder(path, &errs)
	if po.lookup != nil {
		d.lookup = po.lookup
	}
	d.unset = po.unset
	unsetBefore := d.unsetCount()
	s := &Spec{File: path}
	d.decode(doc, reflectValue(&s.Config), true)
	s.claims = d.claims
	checkClaims(&errs, s.claims)
	keys := map[string]*yaml.Node{}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		keys[doc.Content[i].Value] = doc.Content[i+1]
	}
	s.namePos = NodePos(path, keys["name"])

	h := sha256.New()
	h.Write(data)
	dir := filepath.Dir(path)
	if s.Filter != "" {
		f, err := compileFilter(s.Filter, s.TransformMemory)
		if err != nil {
			errs.Append(NodePos(path, keys["filter"]), scriptError(path, locateScript(data, keys["filter"]), err, false))
		}
		s.filter = f
	}
	if n := keys["transform"]; n != nil && s.Transform != "" {
		loc := locateScript(data, n)
		t, err := compileTransform(path, loc, loc.pad(s.Transform), s.jsLimits(), false)
		if err != nil {
			errs.Append(NodePos(path, n), scriptError(path, loc, err, true))
		}
		s.transform = t
	} else if s.TransformFile != "" && n == nil {
		file := s.TransformFile
		if !filepath.IsAbs(file) {
			file = filepath.Join(dir, file)
		}
		b, err := readTransformFile(file)
		if err != nil {
			errs.Add(NodePos(path, keys["transform_file"]), "transform_file %q: %v", s.TransformFile, unwrapPathErr(err))
		} else {
			h.Write(b)
			t, err := compileTransform(file, scriptLoc{}, string(b), s.jsLimits(), true)
			if err != nil {
				errs.Append(Pos{File: file}, scriptError(file, scriptLoc{}, err, false))
			}
			s.transform = t
		}
	}
	if len(errs) > 0 || (po.noBuildIfUnset && d.unsetCount() > unsetBefore) {
		s.Hash = hex.EncodeToString(h.Sum(nil))
		return s, errs.Err()
	}
	bc := BuildContext{
		Pillow: s.Name, File: path, Dir: dir, Log: slog.Default().With("pillow", s.Name),
		AddToHash: func(data []byte) { h.Write(data) },
	}
	defer func() { s.Hash = hex.EncodeToString(h.Sum(nil)) }()
	if !s.Source.unset {
		src2, err := sources[s.Source.Type].Build(s.Source.Config, bc)
		if err != nil {
			errs.Append(s.Source.Pos, err)
		} else {
			s.source = src2.(Source)
		}
	}
	if s.Checkpoint != nil && s.Checkpoint.Config != nil {
		if !s.Checkpoint.unset {
			cs, err := checkpoints[s.Checkpoint.Type].Build(s.Checkpoint.Config, bc)
			if err != nil {
				errs.Append(s.Checkpoint.Pos, err)
			} else {
				s.cps = cs.(CheckpointStore)
			}
		}
	} else if cs, ok := s.source.(CheckpointStore); ok {
		s.cps = cs
	}
	count := map[string]int{}
	for _, b := range s.Sinks {
		count[b.Type]++
	}
	seen := map[string]int{}
	for _, b := range s.Sinks {
		if b.unset {
			continue
		}
		sk, err := sinks[b.Type].Build(b.Config, bc)
		if err != nil {
			errs.Append(b.Pos, err)
			continue
		}
		name := b.Type
		if count[b.Type] > 1 {
			seen[b.Type]++
			name = fmt.Sprintf("%s#%d", b.Type, seen[b.Type])
		}
		s.outputs = append(s.outputs, NamedSink{Name: name, Sink: sk.(Sink)})
	}
	if len(errs) > 0 {
		return s, errs.Err()
	}
	return s, nil
}
