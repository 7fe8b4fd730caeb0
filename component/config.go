package component

import "time"

// Duration is a time.Duration written in YAML as a Go duration string
// ("500ms", "10s") or a number of seconds.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalYAML writes the duration back in its string form.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// Check is what a config struct's Validate method reports problems to: each
// at the position where its key is written, so that a user reads
// file:line:col: message.
type Check interface {
	// Errorf records a problem with key's value (or with the whole mapping
	// when the key is not written). A value that could not be decoded has
	// been reported already, and is not reported again.
	Errorf(key, format string, args ...any)
	// Has reports whether key is written in the mapping.
	Has(key string) bool
	// File is the path of the pillow file being decoded; relative paths in
	// a config are taken from its directory.
	File() string
	// MapKeys returns the keys of key's value, a mapping, in the order they
	// are written (a Go map forgets it); nil when it is not a mapping.
	MapKeys(key string) []string
	// Claim records that field's value names a destination no other sink,
	// of this pillow or of another one loaded with it, may write: what
	// says what it is ("file path"), key identifies it (an absolute path).
	// Two claims of one key are load errors at both places.
	Claim(field, what, key string)
}

// Validator is implemented by config structs that check themselves after
// decoding. Validate must not touch the network.
type Validator interface {
	Validate(ch Check)
}

// Defaulter is implemented by config structs that set default values before
// decoding.
type Defaulter interface {
	SetDefaults()
}
