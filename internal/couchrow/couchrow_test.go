package couchrow

import (
	"strings"
	"testing"
)

func TestRows(t *testing.T) {
	for _, tc := range []struct {
		line, want string // want: "seq id rev deleted doc" or "end" or "error: …"
	}{
		{`{"seq":42,"id":"a","changes":[{"rev":"1-x"}],"doc":{"_id":"a","n":12345678901234567890123}}`, `42 a 1-x false {"_id":"a","n":12345678901234567890123}`},
		{`{"seq":"7-g1AAAA","id":"b","changes":[{"rev":"2-y"}],"deleted":true}`, `7-g1AAAA b 2-y true `},
		{`{"seq":3,"id":"c","changes":[],"doc":null}`, `3 c  false `},
		{`{"id":"d","changes":[{"rev":"1-z"}]}`, ` d 1-z false `}, // a dump may leave seq out
		{`{"last_seq":"9-g1"}`, `end`},
		{`{"seq":1,"changes":[]}`, `error: a change row needs an id`},
		{`{"seq":{"a":1},"id":"e"}`, `error: invalid sequence id {"a":1}`},
		{`{"seq":"x\u0041","id":"f"}`, `xA f  false `},
	} {
		r, err := Parse([]byte(tc.line))
		if err != nil {
			t.Fatalf("%s: %v", tc.line, err)
		}
		var got string
		if r.IsEnd() {
			got = "end"
		} else if c, err := r.Change(); err != nil {
			got = "error: " + err.Error()
		} else {
			got = strings.Join([]string{c.Seq, c.ID, c.Rev, map[bool]string{true: "true", false: "false"}[c.Deleted], string(c.RawDoc)}, " ")
		}
		if got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.line, got, tc.want)
		}
	}
	if _, err := Parse([]byte(`{"seq":`)); err == nil {
		t.Error("a cut row parsed")
	}
}
