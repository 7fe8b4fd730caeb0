package postgres

import (
	stdjson "encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	json "github.com/goccy/go-json"

	"github.com/dimagi/ptop/engine"
)

func TestFold(t *testing.T) {
	r := func(key, rev string, del bool) row {
		// Each revision as if from the change at its generation's position.
		p := engine.SeqPosition(rev)
		return row{key: key, rev: value{s: rev, ok: rev != ""}, pos: p, hasP: p >= 0, del: del}
	}
	show := func(rs []row) string {
		var s []string
		for _, x := range rs {
			d := ""
			if x.del {
				d = "del "
			}
			s = append(s, d+x.key+"@"+x.rev.s)
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		in   []row
		want string
	}{
		{[]row{r("a", "1-a", false), r("b", "1-b", false), r("a", "2-a", false)}, "a@2-a b@1-b"},
		{[]row{r("a", "2-a", false), r("a", "1-a", false)}, "a@2-a"},                                              // older loses
		{[]row{r("a", "2-a", false), r("a", "2-b", false)}, "a@2-b"},                                              // same generation: last
		{[]row{r("a", "1-a", false), r("a", "2-a", true)}, "del a@2-a"},                                           // delete last
		{[]row{r("a", "2-a", true), r("a", "3-a", false)}, "a@3-a"},                                               // recreated
		{[]row{r("a", "3-a", false), r("a", "2-a", true)}, "a@3-a"},                                               // stale delete
		{[]row{r("a", "5-a", false), r("a", "", false)}, "a@"},                                                    // no revision: no order
		{[]row{r("a", "", false), r("a", "1-a", false)}, "a@1-a"},                                                 // a revision replaces none
		{[]row{r("c", "1", false), r("b", "1", false), r("c", "1", true), r("a", "1", false)}, "del c@1 b@1 a@1"}, // first position kept
	} {
		if got := show(fold(tc.in)); got != tc.want {
			t.Errorf("fold(%s) = %s, want %s", show(tc.in), got, tc.want)
		}
	}
}

func TestEncode(t *testing.T) {
	e := newEncoder("_id", []string{"s", "j", "arr"}, []kind{kindScalar, kindJSON, kindArray}, true, true)
	for _, tc := range []struct {
		rec  engine.Record
		want string // vals joined by |, NULL as ∅; or the error
	}{
		{
			rec("x", "1-a", map[string]any{"_id": "x", "_rev": "1-a", "s": "str", "j": "str", "arr": []any{"a", 1.0}, "k": 1.0}),
			`str|"str"|{"a","1"}|{"k":1}`,
		},
		{rec("x", "", map[string]any{"s": 2.5, "j": nil, "arr": "{1,2}"}), `2.5|∅|{1,2}|{}`},
		{rec("x", "", map[string]any{"s": true, "j": false, "arr": []any{[]any{"a"}, nil}}), `true|false|{{"a"},NULL}|{}`},
		{rec("x", "", map[string]any{"s": map[string]any{"b": 1.0, "a": "<&>"}}), `{"a":"<&>","b":1}|∅|∅|{}`},
		{rec("x", "", map[string]any{"s": time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}), `2026-01-02T03:04:05.000000006Z|∅|∅|{}`},
		{rec("x", "", map[string]any{"s": json.Number("12345678901234567890")}), `12345678901234567890|∅|∅|{}`},
		{rec("x", "", map[string]any{"s": int32(-7)}), `-7|∅|∅|{}`},
		{rec("x", "", map[string]any{"s": "a\x00b"}), `field "s": contains a NUL character, which Postgres text cannot hold`},
		{rec("", "", map[string]any{}), `the record has no id`},
		{engine.Record{ID: "x", Doc: "just a string"}, `the record is a string, not an object`},
		{engine.Record{ID: "x", Doc: nil}, `the record is null, not an object`},
	} {
		r, err := encodeRow(e, 0, &tc.rec)
		var got string
		if err != nil {
			got = err.Error()
		} else {
			var parts []string
			for _, v := range r.vals {
				if v.ok {
					parts = append(parts, v.s)
				} else {
					parts = append(parts, "∅")
				}
			}
			got = strings.Join(parts, "|")
		}
		if got != tc.want {
			t.Errorf("encode(%v) = %s, want %s", tc.rec.Doc, got, tc.want)
		}
	}
	// Deletions need no document.
	r, err := encodeRow(e, 3, &engine.Record{ID: "x", Rev: "4-d", Seq: "17-g1AAAA", Delete: true})
	if err != nil || !r.del || r.pos != 17 || r.index != 3 {
		t.Fatalf("delete: %+v, %v", r, err)
	}
}

// encodeRow makes the row of record i with its values, as the sink's write
// path does with head and values.
func encodeRow(e *encoder, i int, r *engine.Record) (row, error) {
	out, err := head(i, r)
	if err == nil && !r.Delete {
		out.vals, err = e.values(r, nil)
	}
	return out, err
}

func formatFloat(f float64) string { return string(appendFloat(nil, f)) }

func TestFormatFloat(t *testing.T) {
	for f, want := range map[float64]string{
		3: "3", -0.5: "-0.5", 1e20: "100000000000000000000", 1e21: "1e+21", 0.1: "0.1",
		math.NaN(): "NaN", math.Inf(1): "Infinity", math.Inf(-1): "-Infinity", 1.5e-7: "1.5e-07",
	} {
		if got := formatFloat(f); got != want {
			t.Errorf("formatFloat(%v) = %s, want %s", f, got, want)
		}
	}
}

func TestCopyText(t *testing.T) {
	for in, want := range map[string]string{
		"plain": "plain", "a\tb": `a\tb`, "l1\nl2\r": `l1\nl2\r`, `back\slash`: `back\\slash`,
		`\N`: `\\N`, `\.`: `\\.`, "": "",
	} {
		if got := string(copyText(nil, in)); got != want {
			t.Errorf("copyText(%q) = %q, want %q", in, got, want)
		}
	}
	if got := string(copyValue(nil, value{})); got != `\N` {
		t.Errorf("NULL: %q", got)
	}
}

func TestKindOf(t *testing.T) {
	for typ, want := range map[string]kind{
		"jsonb": kindJSON, "json": kindJSONText, "text[]": kindArray, "integer[]": kindArray,
		"text": kindScalar, "timestamp with time zone": kindScalar, "character varying(20)[]": kindArray,
	} {
		if got := kindOf(typ); got != want {
			t.Errorf("kindOf(%q) = %v, want %v", typ, got, want)
		}
	}
}

func TestTypeRE(t *testing.T) {
	for _, ok := range []string{
		"text", "double precision", "numeric(10,2)", "numeric(10, 2)", "varchar(20)",
		"timestamp with time zone", "text[]", "int[][]", "character varying (20)[]",
	} {
		if !typeRE.MatchString(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "text;", "text); DROP TABLE x; --", "int -- c", "text[", "numeric(a)", "'text'", "1int"} {
		if typeRE.MatchString(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}

// appendJSON writes what encoding/json writes (without HTML escaping, with
// sorted keys).
func TestAppendJSON(t *testing.T) {
	for _, v := range []any{
		nil, true, "", "plain", "quote \" backslash \\ slash /", "\x00\x01\x1f\x7f", "tab\tnl\nret\r",
		"<&>", "\u2028\u2029", "bad \xff utf8 \xc3", "ünï 日本 🎉", 0.0, math.Copysign(0, -1), 1.0, -1.5, 1e20, 1e21, 1e-6, 1e-7,
		123456789.123, int64(-42), 3,
		[]any{},
		[]any{1.0, "a", nil, []any{true}},
		map[string]any{},
		map[string]any{"b": 1.0, "a": map[string]any{"z": "\"", "y": []any{}}, "": nil},
		json.Number("12.50"),
	} {
		got, err := appendJSON(nil, v, true)
		if err != nil {
			t.Errorf("%#v: %v", v, err)
			continue
		}
		var want strings.Builder
		enc := stdjson.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
		if string(got) != strings.TrimSuffix(want.String(), "\n") {
			t.Errorf("appendJSON(%#v) = %s, want %s", v, got, want.String())
		}
	}
	if _, err := appendJSON(nil, math.NaN(), false); err == nil {
		t.Error("NaN written as JSON")
	}
}
