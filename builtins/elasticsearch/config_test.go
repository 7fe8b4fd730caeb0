package elasticsearch

import (
	stdjson "encoding/json"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/dimagi/ptop/builtins/file"
	"github.com/dimagi/ptop/engine"
)

// pillowWithSink is a pillow file whose sink block starts on line 5.
func pillowWithSink(sink string) string {
	return "name: p\n" +
		"source:\n" +
		"  file: {path: changes.jsonl}\n" +
		"sinks:\n" +
		sink
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, sink string
		files      map[string]string
		want       []string // "line:col: message", in order
	}{
		{
			name: "missing url and index",
			sink: "  - elasticsearch: {timeout: 5s}\n",
			want: []string{
				`5:20: missing required key "url"`,
				`5:20: missing required key "index"`,
			},
		},
		{
			name: "bad url",
			sink: "  - elasticsearch: {url: \"ftp://u:secret@es:9200\", index: x}\n",
			want: []string{`5:26: invalid url "ftp://u:xxxxx@es:9200": use http:// or https://`},
		},
		{
			name: "url without host",
			sink: "  - elasticsearch: {url: \"http://\", index: x}\n",
			want: []string{`5:26: invalid url "http:": no host`},
		},
		{
			name: "unparsable url",
			sink: "  - elasticsearch: {url: \"http://es:port\", index: x}\n",
			want: []string{`5:26: invalid url: the port is not a number`},
		},
		{
			name: "bad index names",
			sink: "  - elasticsearch:\n" +
				"      url: http://es:9200\n" +
				"      index: Cases\n" +
				"  - elasticsearch: {url: \"http://es:9200\", index: \"_x\"}\n" +
				"  - elasticsearch: {url: \"http://es:9200\", index: \"a,b\"}\n" +
				"  - elasticsearch: {url: \"http://es:9200\", index: \"\"}\n",
			want: []string{
				`7:14: invalid index "Cases": use lowercase`,
				`8:51: invalid index "_x": it must not start with '-', '_' or '+'`,
				`9:51: invalid index "a,b": it must not contain \ / * ? " < > | space , # or :`,
				`10:51: index must not be empty`,
			},
		},
		{
			name: "mapping file missing",
			sink: "  - elasticsearch: {url: \"http://es:9200\", index: x, mapping_file: mappings/nope.json}\n",
			want: []string{`5:68: mapping_file "mappings/nope.json": no such file or directory`},
		},
		{
			name:  "mapping file invalid JSON",
			sink:  "  - elasticsearch: {url: \"http://es:9200\", index: x, mapping_file: m.json}\n",
			files: map[string]string{"m.json": "{\n  \"properties\": {\n    \"a\": {\"type\": \"long\"},\n  }\n}\n"},
			want:  []string{`5:68: mapping_file "m.json": invalid JSON at line 4, column 3: invalid character '}' looking for beginning of object key string`},
		},
		{
			name:  "mapping file not an object",
			sink:  "  - elasticsearch: {url: \"http://es:9200\", index: x, mapping_file: m.json}\n",
			files: map[string]string{"m.json": `["properties"]`},
			want:  []string{`5:68: mapping_file "m.json": the mappings must be a JSON object`},
		},
		{
			name: "settings twice",
			sink: "  - elasticsearch:\n" +
				"      url: http://es:9200\n" +
				"      index: x\n" +
				"      mapping_file: m.json\n" +
				"      settings: {number_of_shards: 1}\n",
			files: map[string]string{"m.json": `{"mappings": {}, "settings": {"number_of_shards": 2}}`},
			want:  []string{`8:21: mapping_file "m.json": settings are both in the file and in the pillow: keep one`},
		},
		{
			name: "credentials",
			sink: "  - elasticsearch: {url: \"http://u:p@es:9200\", index: x, username: v}\n" +
				"  - elasticsearch: {url: \"http://es:9200\", index: x, password: p}\n",
			want: []string{
				`5:68: credentials are both in url and in username/password: keep one`,
				`6:64: password without username`,
			},
		},
		{
			name: "numbers",
			sink: "  - elasticsearch: {url: \"http://es:9200\", index: x, timeout: 0s, max_retries: -1}\n",
			want: []string{
				`5:63: timeout must be positive, got 0s`,
				`5:80: max_retries must be 0 or more, got -1`,
			},
		},
		{
			name:  "ca file",
			sink:  "  - elasticsearch: {url: \"https://es:9200\", index: x, tls: {ca_file: ca.pem}}\n",
			files: map[string]string{"ca.pem": "not a certificate\n"},
			want:  []string{`5:70: ca_file "ca.pem": no PEM certificate in it`},
		},
		{
			name: "unknown key",
			sink: "  - elasticsearch: {url: \"http://es:9200\", index: x, mapping: m.json}\n",
			want: []string{`5:54: unknown key "mapping" (known keys: index, mapping_file, max_retries, password, settings, timeout, tls, url, username)`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tc.files {
				writeFile(t, dir, name, content)
			}
			file := filepath.Join(dir, "p.yaml")
			writeFile(t, dir, "p.yaml", pillowWithSink(tc.sink))
			_, err := engine.LoadFile(file)
			if err == nil {
				t.Fatal("no error")
			}
			var got []string
			for _, line := range strings.Split(err.Error(), "\n") {
				got = append(got, strings.TrimPrefix(line, file+":"))
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestConfigValid(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "mappings/m.json", `{"properties": {"n": {"type": "long"}}}`)
	writeFile(t, dir, "p.yaml", pillowWithSink(
		"  - elasticsearch:\n"+
			"      url: http://user:pw@127.0.0.1:1\n"+
			"      index: cases\n"+
			"      mapping_file: mappings/m.json\n"+
			"      settings: {number_of_shards: 1, index.refresh_interval: 5s}\n"+
			"      timeout: 2s\n"+
			"      max_retries: 0\n"+
			"  - elasticsearch: {url: \"https://es.example.com/prefix\", index: other, username: u, password: p, tls: {insecure_skip_verify: true}}\n"))
	spec, err := engine.LoadFile(filepath.Join(dir, "p.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	outs := spec.Outputs()
	if len(outs) != 2 || outs[0].Name != "elasticsearch#1" {
		t.Fatalf("outputs %+v", outs)
	}
	s := outs[0].Sink.(*Sink)
	// The hash covers mappings and settings, canonically.
	body := `{"mappings":{"properties":{"n":{"type":"long"}}},"settings":{"index.refresh_interval":"5s","number_of_shards":1}}`
	if string(s.body) != body || s.Index() != physicalName("cases", []byte(body)) || s.maxRetries != 0 || s.client.Timeout.Seconds() != 2 {
		t.Errorf("body %s, index %s, retries %d, timeout %v", s.body, s.Index(), s.maxRetries, s.client.Timeout)
	}
	if s.base != "http://127.0.0.1:1" || s.auth == "" {
		t.Errorf("base %q, auth %q", s.base, s.auth)
	}
	s2 := outs[1].Sink.(*Sink)
	if s2.base != "https://es.example.com/prefix" || s2.Index() != "other" || s2.body != nil {
		t.Errorf("second sink: base %q, index %q", s2.base, s2.Index())
	}
}

func TestMappingFileForms(t *testing.T) {
	dir := t.TempDir()
	bare := writeFile(t, dir, "bare.json", `{"properties": {"n": {"type": "long"}}}`)
	whole := writeFile(t, dir, "whole.json", `{"mappings": {"properties": {"n": {"type": "long"}}}, "settings": {"number_of_shards": 1}}`)
	a, err := loadIndexBody(filepath.Join(dir, bare), map[string]any{"number_of_shards": 1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadIndexBody(filepath.Join(dir, whole), nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != string(b) {
		t.Errorf("the two forms differ:\n%s\n%s", a, b)
	}
	if physicalName("x", a) != physicalName("x", b) || len(physicalName("x", a)) != 10 {
		t.Errorf("names %s %s", physicalName("x", a), physicalName("x", b))
	}
}

func TestSchema(t *testing.T) {
	b, err := stdjson.Marshal(engine.Schema())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"elasticsearch"`, `"mapping_file"`, `"insecure_skip_verify"`, `"max_retries"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the pillow schema lacks %s", want)
		}
	}
}
