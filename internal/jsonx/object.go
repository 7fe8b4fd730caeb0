package jsonx

import (
	"bytes"
	"encoding/json"
)

// AppendObjectWithout appends obj, a valid JSON object, to dst without its
// top-level member named key (written plainly, without escapes); the other
// members keep their bytes and order. ok is false when obj is not an
// object, and dst is then returned as it was.
func AppendObjectWithout(dst []byte, obj []byte, key string) (out []byte, ok bool) {
	b := bytes.TrimSpace(obj)
	if len(b) < 2 || b[0] != '{' {
		return dst, false
	}
	start := len(dst)
	dst = append(dst, '{')
	i, n := 1, 0
	for {
		i = skipSpace(b, i)
		if i >= len(b) {
			return dst[:start], false
		}
		if b[i] == '}' {
			return append(dst, '}'), true
		}
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
		ks := i
		ke := skipString(b, i)
		if ke < 0 {
			return dst[:start], false
		}
		j := skipSpace(b, ke)
		if j >= len(b) || b[j] != ':' {
			return dst[:start], false
		}
		vs := skipSpace(b, j+1)
		ve := skipValue(b, vs)
		if ve < 0 {
			return dst[:start], false
		}
		if string(b[ks+1:ke-1]) != key {
			if n > 0 {
				dst = append(dst, ',')
			}
			n++
			dst = append(dst, b[ks:ke]...)
			dst = append(dst, ':')
			dst = append(dst, b[vs:ve]...)
		}
		i = ve
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i], or -1.
func skipString(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// skipValue returns the index after the value starting at b[i], or -1.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
				if i < 0 {
					return -1
				}
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return -1
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	if j == i || !json.Valid(b[i:j]) {
		return -1
	}
	return j
}

// Members calls fn with the key (as written, quotes included) and value of
// each member of obj, a JSON object, in order, until fn returns false. It
// returns false if obj is not a well-formed object.
func Members(obj []byte, fn func(key, val []byte) bool) bool {
	b := bytes.TrimSpace(obj)
	if len(b) < 2 || b[0] != '{' {
		return false
	}
	i := 1
	for {
		i = skipSpace(b, i)
		if i >= len(b) {
			return false
		}
		if b[i] == '}' {
			return true
		}
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
		ks := i
		ke := skipString(b, i)
		if ke < 0 {
			return false
		}
		j := skipSpace(b, ke)
		if j >= len(b) || b[j] != ':' {
			return false
		}
		vs := skipSpace(b, j+1)
		ve := skipValue(b, vs)
		if ve < 0 {
			return false
		}
		if !fn(b[ks:ke], b[vs:ve]) {
			return true
		}
		i = ve
	}
}

// Elements calls fn with each element of arr, a JSON array, in order,
// until fn returns false. It returns false if arr is not a well-formed
// array.
func Elements(arr []byte, fn func(val []byte) bool) bool {
	b := bytes.TrimSpace(arr)
	if len(b) < 2 || b[0] != '[' {
		return false
	}
	i := 1
	for {
		i = skipSpace(b, i)
		if i >= len(b) {
			return false
		}
		if b[i] == ']' {
			return true
		}
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
		ve := skipValue(b, i)
		if ve < 0 {
			return false
		}
		if !fn(b[i:ve]) {
			return true
		}
		i = ve
	}
}
