// Package safeurl parses server URLs that may hold a password, with
// errors that say which part is wrong and never repeat any of it: Go's
// own messages quote the offending piece (`invalid URL escape "%rd"`,
// `invalid port ":wo" after host`), which is often a piece of a password
// whose special characters were not percent-encoded.
package safeurl

import (
	"errors"
	"net/url"
	"strings"
)

// encodeHint says how to write the characters that break a URL.
const encodeHint = "percent-encode these characters in the user name and password: @ as %40, : as %3A, / as %2F, ? as %3F, # as %23, % as %25, space as %20"

// Parse parses raw like url.Parse. Its errors quote none of raw.
func Parse(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("invalid url: " + describe(raw, err))
	}
	if u.User == nil && (strings.Contains(u.Path, "@") || strings.Contains(u.RawQuery, "@") || strings.Contains(u.Fragment, "@")) {
		// "http://me:pa/ss@host" parses, as host "me" and path "/ss@host".
		return nil, errors.New("invalid url: it has an @ after what was read as the host: if it holds credentials, a / ? or # in the password cuts them short; " + encodeHint)
	}
	return u, nil
}

// describe names the part of raw that err is about, without quoting it.
func describe(raw string, err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	msg := err.Error()
	rest, hasScheme := raw, false
	if i := strings.Index(raw, "://"); i >= 0 {
		rest, hasScheme = raw[i+3:], true
	}
	switch {
	case !hasScheme && strings.Contains(msg, "scheme"):
		return "it must start with http:// or https://"
	case strings.Contains(rest, "@"):
		return "the user name or password is not valid in a URL, or a character in it cuts the URL short; " + encodeHint
	case strings.Contains(msg, "invalid port"):
		return "the port is not a number"
	case strings.Contains(msg, "invalid URL escape"):
		return "a % is not followed by two hexadecimal digits; write a % itself as %25"
	case strings.Contains(msg, "invalid character") && strings.Contains(msg, "host"):
		return "the host name has a character that is not allowed in it"
	case strings.Contains(msg, "control character"):
		return "it contains a control character (a newline or a tab?)"
	}
	return "it cannot be parsed (it is not shown: it may hold a password)"
}
