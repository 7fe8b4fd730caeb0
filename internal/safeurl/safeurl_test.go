package safeurl

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		raw, want string
		secret    []string // pieces that must not appear in the message
	}{
		{"http://admin:qx%rd@h:5984", "the user name or password is not valid in a URL", []string{"%rd", "qx"}},
		{"http://admin:s3/cr:wq@h:5984", "the user name or password is not valid in a URL", []string{"wq", "s3", "cr"}},
		{"http://admin:s3#cr@h:5984", "the user name or password is not valid in a URL", []string{"s3", "cr"}},
		{"http://admin:12/cret@h:5984", "it has an @ after what was read as the host", []string{"cret"}},
		{"http://h:prt", "the port is not a number", []string{"prt"}},
		{"http://h:5984/db%zz", "a % is not followed by two hexadecimal digits", []string{"zz"}},
		{"http://h\n:5984", "control character", nil},
		{":nope", "it must start with http:// or https://", []string{"nope"}},
	} {
		_, err := Parse(tc.raw)
		if err == nil {
			t.Errorf("%q: no error", tc.raw)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "invalid url: ") || !strings.Contains(msg, tc.want) {
			t.Errorf("%q: %q, want %q", tc.raw, msg, tc.want)
		}
		for _, s := range tc.secret {
			if strings.Contains(strings.TrimPrefix(strings.ReplaceAll(msg, encodeHint, ""), "invalid url: "), s) {
				t.Errorf("%q: the message %q shows %q", tc.raw, msg, s)
			}
		}
	}
	for _, ok := range []string{"http://h:5984", "https://u:p%40ss@h/prefix", "http://u:a:b@h"} {
		if _, err := Parse(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}
