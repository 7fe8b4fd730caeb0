package engine

import (
	"reflect"
	"sort"
	"strings"
	"time"
)

// SchemaDraft is the JSON Schema draft Schema follows: draft-07, the one
// editors' YAML support (yaml-language-server) knows best.
const SchemaDraft = "http://json-schema.org/draft-07/schema#"

// envPattern matches a string that uses ${VAR}: the loader expands it and
// takes the result as the key's type, so such a string stands for a
// number, a boolean or a duration too.
const envPattern = `\$\{`

// durationPattern matches what a Duration accepts: a Go duration ("1m30s",
// "500ms") or a number of seconds written as a string.
const durationPattern = `^[-+]?(((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+|(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)$`

// goDurationPattern matches what time.ParseDuration accepts.
const goDurationPattern = `^[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)$`

var stdDurationType = reflect.TypeOf(time.Duration(0))

var byteSizeType = reflect.TypeOf(ByteSize(0))

// Schema returns a JSON Schema (draft-07) of a pillow file, built from the
// definitions the loader decodes with: Config's fields and, for source,
// sinks and checkpoint, one alternative per registered type with its
// config struct. Keys come from `yaml` tags, required keys from
// `ptop:"required"`, descriptions from `doc:"…"` tags, defaults from
// SetDefaults. Every object rejects unknown keys, as the loader does. A
// number, boolean or duration may also be a string using ${VAR}.
func Schema() map[string]any {
	g := &schemaGen{defs: map[string]any{}, visiting: map[reflect.Type]bool{}}
	var c Config
	c.SetDefaults()
	root := g.of(reflect.TypeOf(c), reflect.ValueOf(c), true)
	root["$schema"] = SchemaDraft
	root["$id"] = "https://github.com/dimagi/ptop/pillow.schema.json"
	root["title"] = "ptop pillow"
	root["description"] = "A pillow: a CouchDB changes feed through a filter and a transform into sinks. See `ptop validate` for the checks a schema cannot express."
	props := root["properties"].(map[string]any)
	// What Config.Validate checks that a schema can say too.
	name := props["name"].(map[string]any)
	name["pattern"] = nameRE.String() + "|" + envPattern
	if _, ok := name["description"]; !ok {
		name["description"] = "Unique in the directory: letters, digits, '-', '_' and '.', starting with a letter or digit."
	}
	if sinks, ok := props["sinks"].(map[string]any); ok {
		sinks["minItems"] = 1
	}
	root["not"] = map[string]any{
		"required":    []any{"transform", "transform_file"},
		"description": "set either transform or transform_file, not both",
	}
	root["definitions"] = g.defs
	return root
}

type schemaGen struct {
	defs     map[string]any
	visiting map[reflect.Type]bool
}

var (
	sourceBlockType     = reflect.TypeOf(SourceBlock{})
	sinkBlockType       = reflect.TypeOf(SinkBlock{})
	checkpointBlockType = reflect.TypeOf(CheckpointBlock{})
)

// of returns the schema of values of type t; def, when valid, is t's
// default value; expand says whether ${VAR} is expanded there.
func (g *schemaGen) of(t reflect.Type, def reflect.Value, expand bool) map[string]any {
	switch t {
	case sourceBlockType:
		return g.block("source", sources)
	case sinkBlockType:
		return g.block("sink", sinks)
	case checkpointBlockType:
		return g.block("checkpoint", checkpoints)
	case stdDurationType:
		// yaml.v3 reads a time.Duration from a Go duration string or an
		// integer of nanoseconds.
		return map[string]any{"anyOf": []any{
			map[string]any{"type": "string", "pattern": goDurationPattern + "|" + envPattern},
			map[string]any{"type": "integer"},
		}}
	case byteSizeType:
		s := map[string]any{"anyOf": []any{
			map[string]any{"type": "string", "pattern": `^\s*\d+\s*(GiB|MiB|KiB|GB|MB|KB|kB|B)?\s*$|` + envPattern},
			map[string]any{"type": "integer", "minimum": 0},
		}}
		if def.IsValid() && def.Int() != 0 {
			s["default"] = strings.ReplaceAll(ByteSize(def.Int()).String(), " ", "")
		}
		return s
	case durationType:
		s := map[string]any{"anyOf": []any{
			map[string]any{"type": "string", "pattern": durationPattern + "|" + envPattern},
			map[string]any{"type": "number"},
		}}
		if def.IsValid() && def.Int() != 0 {
			s["default"] = Duration(def.Int()).String()
		}
		return s
	}
	var s map[string]any
	switch t.Kind() {
	case reflect.Pointer:
		var d reflect.Value
		if def.IsValid() && !def.IsNil() {
			d = def.Elem()
		}
		return map[string]any{"anyOf": []any{g.of(t.Elem(), d, expand), map[string]any{"type": "null"}}}
	case reflect.Struct:
		return g.object(t, def, expand)
	case reflect.Slice, reflect.Array:
		s = map[string]any{"type": "array", "items": g.of(t.Elem(), reflect.Value{}, expand)}
	case reflect.Map:
		s = map[string]any{"type": "object", "additionalProperties": g.of(t.Elem(), reflect.Value{}, expand)}
	case reflect.Interface:
		s = map[string]any{}
	case reflect.String:
		// A string key takes the text of any scalar: since: 0 is "0".
		s = map[string]any{"type": []any{"string", "number", "boolean"}}
	case reflect.Bool:
		s = scalarSchema(map[string]any{"type": "boolean"}, expand)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		s = scalarSchema(map[string]any{"type": "integer"}, expand)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		s = scalarSchema(map[string]any{"type": "integer", "minimum": 0}, expand)
	case reflect.Float32, reflect.Float64:
		s = scalarSchema(map[string]any{"type": "number"}, expand)
	default:
		s = map[string]any{}
	}
	if def.IsValid() && !def.IsZero() {
		switch t.Kind() {
		case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
			s["default"] = def.Interface()
		}
	}
	return s
}

// scalarSchema is base, or also a string using ${VAR} where ${VAR} is
// expanded.
func scalarSchema(base map[string]any, expand bool) map[string]any {
	if !expand {
		return base
	}
	return map[string]any{"anyOf": []any{base, map[string]any{"type": "string", "pattern": envPattern}}}
}

// object is a struct decoded by the loader: its fields as properties,
// nothing else allowed.
func (g *schemaGen) object(t reflect.Type, def reflect.Value, expand bool) map[string]any {
	if g.visiting[t] {
		return map[string]any{"type": "object"}
	}
	g.visiting[t] = true
	defer delete(g.visiting, t)
	if !def.IsValid() {
		if df, ok := reflect.New(t).Interface().(Defaulter); ok {
			df.SetDefaults()
			def = reflect.ValueOf(df).Elem()
		}
	}
	props := map[string]any{}
	var required []any
	for _, f := range structFields(t) {
		sf := t.Field(f.index)
		var fd reflect.Value
		if def.IsValid() {
			fd = def.Field(f.index)
		}
		p := g.of(sf.Type, fd, expand && !f.raw)
		if doc := sf.Tag.Get("doc"); doc != "" {
			p = withDescription(p, doc)
		}
		props[f.key] = p
		if f.required {
			required = append(required, f.key)
		}
	}
	s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
	if len(required) > 0 {
		s["required"] = required
	}
	return s
}

// withDescription adds a description to a schema, keeping $ref alone in
// its object (draft-07 ignores a $ref's siblings).
func withDescription(s map[string]any, doc string) map[string]any {
	if _, ref := s["$ref"]; ref {
		return map[string]any{"allOf": []any{s}, "description": doc}
	}
	s["description"] = doc
	return s
}

// block is `{TYPE: {…}}`: exactly one key, a registered type, whose value
// is that type's config. Each type's config is a definition of its own.
func (g *schemaGen) block(kind string, reg map[string]plugin) map[string]any {
	var names []string
	for n := range reg {
		names = append(names, n)
	}
	sort.Strings(names)
	alts := []any{}
	for _, n := range names {
		def := kind + "." + n
		if _, done := g.defs[def]; !done {
			g.defs[def] = map[string]any{} // a placeholder while it is built
			cfg := reflect.TypeOf(reg[n].NewConfig()).Elem()
			g.defs[def] = g.of(cfg, reflect.Value{}, true)
		}
		alts = append(alts, map[string]any{
			"title":                n,
			"type":                 "object",
			"properties":           map[string]any{n: map[string]any{"$ref": "#/definitions/" + def}},
			"required":             []any{n},
			"additionalProperties": false,
		})
	}
	if len(alts) == 0 {
		return map[string]any{"description": "No " + kind + " type is registered.", "not": map[string]any{}}
	}
	return map[string]any{
		"type":        "object",
		"description": "Exactly one key, the " + kind + "'s type (" + strings.Join(names, ", ") + "), with its settings.",
		"oneOf":       alts,
	}
}
