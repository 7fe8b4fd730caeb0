package engine

import (
	"encoding/json"
	"reflect"
	"regexp"
	"testing"
	"time"
)

type schemaSample struct {
	Name    string            `yaml:"name" ptop:"required" doc:"What it is called."`
	Code    string            `yaml:"code" ptop:"raw"`
	Count   uint              `yaml:"count"`
	Ratio   float64           `yaml:"ratio"`
	Wait    time.Duration     `yaml:"wait"`
	Every   Duration          `yaml:"every"`
	Opt     *schemaSample     `yaml:"opt"`
	Labels  map[string]int    `yaml:"labels"`
	Tags    []string          `yaml:"tags"`
	Free    any               `yaml:"free"`
	Skipped string            `yaml:"skipped" ptop:"-"`
	Nested  struct{ A bool }  `yaml:"nested"`
	Raw     map[string]string `yaml:"raw" ptop:"raw"`
}

func (s *schemaSample) SetDefaults() { s.Count = 3; s.Every = Duration(time.Minute) }

func TestSchemaOfTypes(t *testing.T) {
	g := &schemaGen{defs: map[string]any{}, visiting: map[reflect.Type]bool{}}
	s := g.of(reflect.TypeOf(schemaSample{}), reflect.Value{}, true)
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	json.Unmarshal(b, &got)
	props := got["properties"].(map[string]any)
	check := func(key, want string) {
		t.Helper()
		b, _ := json.Marshal(props[key])
		if string(b) != want {
			t.Errorf("%s:\n got %s\nwant %s", key, b, want)
		}
	}
	env := `{"pattern":"\\$\\{","type":"string"}`
	check("name", `{"description":"What it is called.","type":["string","number","boolean"]}`)
	check("code", `{"type":["string","number","boolean"]}`)
	check("count", `{"anyOf":[{"minimum":0,"type":"integer"},`+env+`],"default":3}`)
	check("ratio", `{"anyOf":[{"type":"number"},`+env+`]}`)
	check("wait", `{"anyOf":[{"pattern":"^[-+]?(0|((\\d+(\\.\\d*)?|\\.\\d+)(ns|us|µs|μs|ms|s|m|h))+)$|\\$\\{","type":"string"},{"type":"integer"}]}`)
	check("every", `{"anyOf":[{"pattern":"`+jsonEscape(durationPattern+"|"+envPattern)+`","type":"string"},{"type":"number"}],"default":"1m0s"}`)
	check("opt", `{"anyOf":[{"type":"object"},{"type":"null"}]}`) // a cycle stops at "an object"
	check("labels", `{"additionalProperties":{"anyOf":[{"type":"integer"},`+env+`]},"type":"object"}`)
	check("tags", `{"items":{"type":["string","number","boolean"]},"type":"array"}`)
	check("free", `{}`)
	check("nested", `{"additionalProperties":false,"properties":{"a":{"anyOf":[{"type":"boolean"},`+env+`]}},"type":"object"}`)
	check("raw", `{"additionalProperties":{"type":["string","number","boolean"]},"type":"object"}`)
	if _, ok := props["skipped"]; ok {
		t.Error(`a ptop:"-" field is in the schema`)
	}
	if r, _ := json.Marshal(got["required"]); string(r) != `["name"]` {
		t.Errorf("required = %s", r)
	}
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

func TestSchemaDurationPatterns(t *testing.T) {
	durationRE := regexp.MustCompile(durationPattern)
	for _, tc := range []struct {
		s  string
		ok bool
	}{
		{"10s", true},
		{"1m30s", true},
		{"500ms", true},
		{"1.5h", true},
		{"-1s", true},
		{"0", true},
		{"2", true},
		{"1.5", true},
		{"1e3", true},
		{"10 seconds", false},
		{"s", false},
		{"1d", false},
		{"", false},
	} {
		_, perr := time.ParseDuration(tc.s)
		if got := durationRE.MatchString(tc.s); got != tc.ok {
			t.Errorf("%q: pattern says %v, want %v (ParseDuration: %v)", tc.s, got, tc.ok, perr)
		}
	}
}
