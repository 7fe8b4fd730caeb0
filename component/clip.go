package component

import (
	"fmt"
	"log/slog"
	"strings"
	"unicode/utf8"
)

// ClipBytes is how much of a long value Clip keeps.
const ClipBytes = 100

// Clip shortens a value for a log line or an error message: past
// ClipBytes it keeps the start (whole characters) and says how long the
// value was. A 600-byte document id is then not repeated whole in every
// line that names it.
func Clip(s string) string {
	if len(s) <= ClipBytes {
		return s
	}
	cut := ClipBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:cut], len(s))
}

// ClipWords clips each word (a run without spaces) of a message, such as
// a server's error reason that quotes a long value, perhaps several times.
func ClipWords(s string) string {
	if len(s) <= ClipBytes {
		return s
	}
	var b strings.Builder
	for i, w := range strings.Split(s, " ") {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(Clip(w))
	}
	return b.String()
}

// ClipAttr is a log attribute of a value that may be long (see Clip).
func ClipAttr(key, value string) slog.Attr { return slog.String(key, Clip(value)) }
