package elasticsearch

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/safeurl"
	"github.com/dimagi/ptop/internal/tlsconf"
)

// Config is the YAML under `- elasticsearch: …` in sinks.
type Config struct {
	// URL is the server's address, http or https, with credentials in its
	// userinfo if it needs them: "https://user:pass@es.example.com:9200".
	// A path prefix (behind a proxy) is kept.
	URL string `yaml:"url" ptop:"required" doc:"The server, http or https, with credentials in its userinfo if it needs them: https://user:pass@host:9200. A path prefix is kept."`
	// Username and Password are basic-auth credentials, when not in URL.
	Username string `yaml:"username" doc:"Basic-auth user, when the credentials are not in url."`
	Password string `yaml:"password" doc:"Basic-auth password, with username."`
	// Index is where records go. With MappingFile or Settings it names an
	// alias of an index that the sink creates (see the package doc);
	// without, the index (or alias) is written as named and the server
	// creates it on the first write if it is missing.
	Index string `yaml:"index" ptop:"required" doc:"Where records go. With mapping_file or settings, an alias of the index INDEX-HASH that the sink creates; else the index as named, created by the server on the first write if missing."`
	// MappingFile is a JSON file of the index's mappings, relative to the
	// pillow file: the `mappings` object of a create-index request, or a
	// whole request body {"mappings": …, "settings": …}.
	MappingFile string `yaml:"mapping_file" doc:"JSON file of the index mappings, relative to the pillow file: the mappings object, or a create-index body {mappings, settings}. A changed mapping needs a reindex."`
	// Settings are the index's settings, such as {number_of_shards: 1}.
	Settings map[string]any `yaml:"settings" doc:"Index settings for the index the sink creates, such as {number_of_shards: 1}."`
	TLS      tlsconf.Config `yaml:"tls" doc:"https settings: the same tls block as every network source and sink."`
	// Timeout bounds each request. Default 30s.
	Timeout component.Duration `yaml:"timeout" doc:"Bound on each request (default 30s)."`
	// MaxRetries is how often a write retries the records that the server
	// turned away for now (429, 5xx: a full queue, a shard moving) before
	// it gives the batch back to the engine, which retries it with backoff.
	// Default 3.
	MaxRetries int `yaml:"max_retries" doc:"Retries within a write of the records the server turns away for now (429, 5xx), before the batch goes back to the engine's backoff (default 3)."`
}

// Defaults.
const (
	DefaultTimeout    = 30 * time.Second
	DefaultMaxRetries = 3
)

// SetDefaults implements component.Defaulter.
func (c *Config) SetDefaults() {
	c.Timeout = component.Duration(DefaultTimeout)
	c.MaxRetries = DefaultMaxRetries
}

// Validate implements component.Validator. It reads the mapping and CA
// files, so that `ptop validate` reports a missing or broken one.
func (c *Config) Validate(ch component.Check) {
	dir := filepath.Dir(ch.File())
	if ch.Has("url") {
		u, msg := parseURL(c.URL)
		switch {
		case msg != "":
			ch.Errorf("url", "%s", msg)
		case u.User != nil && (ch.Has("username") || ch.Has("password")):
			ch.Errorf("username", "credentials are both in url and in username/password: keep one")
		}
	}
	if ch.Has("password") && !ch.Has("username") {
		ch.Errorf("password", "password without username")
	}
	if ch.Has("index") {
		if msg := checkIndexName(c.Index); msg != "" {
			ch.Errorf("index", "%s", msg)
		}
	}
	if ch.Has("mapping_file") {
		if _, err := loadIndexBody(resolve(dir, c.MappingFile), c.Settings); err != nil {
			ch.Errorf("mapping_file", "mapping_file %q: %v", c.MappingFile, err)
		}
	}
	if c.Timeout <= 0 {
		ch.Errorf("timeout", "timeout must be positive, got %s", c.Timeout)
	}
	if c.MaxRetries < 0 {
		ch.Errorf("max_retries", "max_retries must be 0 or more, got %d", c.MaxRetries)
	}
}

func resolve(dir, path string) string { return tlsconf.Resolve(dir, path) }

// parseURL checks a server URL; the message never repeats a password.
func parseURL(s string) (*url.URL, string) {
	u, err := safeurl.Parse(s)
	if err != nil {
		return nil, err.Error()
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Sprintf("invalid url %q: use http:// or https://", u.Redacted())
	}
	if u.Host == "" {
		return nil, fmt.Sprintf("invalid url %q: no host", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Sprintf("invalid url %q: no query or fragment, please", u.Redacted())
	}
	return u, ""
}

// checkIndexName returns what Elasticsearch would object to in an index
// or alias name, or "".
func checkIndexName(s string) string {
	switch {
	case s == "":
		return "index must not be empty"
	case s == "." || s == "..":
		return fmt.Sprintf("invalid index %q", s)
	case len(s) > 200:
		return fmt.Sprintf("invalid index %q: longer than 200 bytes (with the hash suffix it must fit in 255)", s)
	case strings.ContainsAny(s[:1], "-_+"):
		return fmt.Sprintf("invalid index %q: it must not start with '-', '_' or '+'", s)
	case strings.ToLower(s) != s:
		return fmt.Sprintf("invalid index %q: use lowercase", s)
	case strings.ContainsAny(s, "\\/*?\"<>| ,#:"):
		return fmt.Sprintf("invalid index %q: it must not contain \\ / * ? \" < > | space , # or :", s)
	}
	return ""
}

// loadIndexBody reads a mapping file and returns the create-index request
// body {"mappings":…,"settings":…} in canonical form (keys sorted, no
// space), which the physical index's name is a hash of. settings from
// the YAML may be nil.
func loadIndexBody(path string, settings map[string]any) ([]byte, error) {
	body := map[string]any{}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, err
		}
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var m any
		if err := d.Decode(&m); err != nil {
			return nil, jsonError(b, err)
		}
		if d.More() {
			return nil, errors.New("invalid JSON: more than one value")
		}
		obj, ok := m.(map[string]any)
		if !ok {
			return nil, errors.New("the mappings must be a JSON object")
		}
		if mp, ok := obj["mappings"]; ok {
			// A whole create-index body.
			for k := range obj {
				if k != "mappings" && k != "settings" {
					return nil, fmt.Errorf("unexpected key %q beside \"mappings\" (a create-index body has mappings and settings)", k)
				}
			}
			if _, ok := mp.(map[string]any); !ok {
				return nil, errors.New(`"mappings" must be a JSON object`)
			}
			if s, ok := obj["settings"]; ok {
				if _, ok := s.(map[string]any); !ok {
					return nil, errors.New(`"settings" must be a JSON object`)
				}
				if len(settings) > 0 {
					return nil, errors.New("settings are both in the file and in the pillow: keep one")
				}
			}
			body = obj
		} else {
			body["mappings"] = obj
		}
	}
	if len(settings) > 0 {
		body["settings"] = settings
	}
	return json.Marshal(body)
}

// jsonError says where in b a decoding error is, as line and column.
func jsonError(b []byte, err error) error {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	}
	if off < 0 || off > int64(len(b)) {
		return fmt.Errorf("invalid JSON: %v", err)
	}
	// Offsets point just past the offending byte.
	if off > 0 {
		off--
	}
	line := 1 + bytes.Count(b[:off], []byte("\n"))
	col := int(off) - bytes.LastIndexByte(b[:off], '\n')
	msg := err.Error()
	if i := strings.Index(msg, " at offset"); i > 0 {
		msg = msg[:i]
	}
	msg = strings.TrimPrefix(msg, "json: ")
	return fmt.Errorf("invalid JSON at line %d, column %d: %s", line, col, msg)
}

// physicalName is the name of the index made for body: alias, a dash and
// the first 8 hex digits of body's sha256.
func physicalName(alias string, body []byte) string {
	sum := sha256.Sum256(body)
	return alias + "-" + hex.EncodeToString(sum[:4])
}
