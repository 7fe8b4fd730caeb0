package couchdb

import (
	"fmt"
	"strings"
	"time"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/safeurl"
	"github.com/dimagi/ptop/internal/tlsconf"
)

// Config is the YAML under `source: {couchdb: …}`.
type Config struct {
	// URL is the server's address, http or https, with credentials in its
	// userinfo if it needs them: "http://user:pass@127.0.0.1:5984".
	URL string `yaml:"url" ptop:"required" doc:"Server address, http or https, with credentials in the userinfo if needed: http://user:pass@127.0.0.1:5984 (percent-encode special characters); else COUCH_USER and COUCH_PASSWORD."`
	// DB is the database whose changes are followed.
	DB string `yaml:"db" ptop:"required" doc:"The database whose changes are followed."`
	// Since is where to start when the pillow has no checkpoint: "0" (the
	// beginning, the default), "now" (only changes made from now on) or a
	// sequence id ("42", "42-g1AAAA…").
	Since string `yaml:"since" doc:"Where to start when the pillow has no checkpoint: \"0\" (the beginning, default), \"now\" (only changes from now on) or a sequence id."`
	// Selector is a Mango selector applied by the server (filter=_selector).
	Selector map[string]any `yaml:"selector" doc:"A Mango selector applied by the server (filter=_selector)."`
	// Filter is a design-document filter, "ddoc/name", applied by the
	// server, with Params as its query parameters.
	Filter string            `yaml:"filter" doc:"A design-document filter, \"ddoc/name\", applied by the server."`
	Params map[string]string `yaml:"params" doc:"Query parameters passed to the design-document filter."`
	// Heartbeat is how often the server is asked to show it is alive; a
	// feed silent for three heartbeats is reconnected. Default 10s.
	Heartbeat component.Duration `yaml:"heartbeat" doc:"How often the server is asked to show it is alive (default 10s); a feed silent for three heartbeats is reconnected."`
	// CheckpointID is the id of the _local document holding the pillow's
	// checkpoint; default "_local/ptop-<pillow name>". A missing "_local/"
	// prefix is added.
	CheckpointID string `yaml:"checkpoint_id" doc:"The _local document holding the checkpoint (default _local/ptop-NAME); a missing _local/ prefix is added."`
	// ErrorsDB is the database, on the same server, of the error store of
	// the pillows reading from this source (see ErrorStore). It is created
	// on the first failure. Default "ptop_errors".
	ErrorsDB string `yaml:"errors_db" doc:"The database, on the same server, of the error store of pillows reading this source; created on the first failure (default ptop_errors)."`
	// RecordsDB is the database, on the same server, where the pillows
	// keeping their checkpoints in this source keep the ids of the
	// records each document produced (see RecordSets). It is created on
	// the first document that produces a record. Default "ptop_records".
	RecordsDB string `yaml:"records_db" doc:"The database, on the same server, keeping the ids of the records each document produced, so that records a document no longer produces are deleted; created on first use (default ptop_records)."`
	// TLS configures https connections, as every network sink's tls block.
	TLS *tlsconf.Config `yaml:"tls" doc:"https settings: the same tls block as every network sink (ca_file, cert_file, key_file, server_name, insecure_skip_verify)."`
}

// DefaultHeartbeat is the heartbeat when none is configured.
const DefaultHeartbeat = 10 * time.Second

// DefaultErrorsDB is the error store's database when none is configured.
const DefaultErrorsDB = "ptop_errors"

// DefaultRecordsDB is the record sets' database when none is configured.
const DefaultRecordsDB = "ptop_records"

// SetDefaults implements component.Defaulter.
func (c *Config) SetDefaults() {
	c.Since = "0"
	c.Heartbeat = component.Duration(DefaultHeartbeat)
	c.ErrorsDB = DefaultErrorsDB
	c.RecordsDB = DefaultRecordsDB
}

// Validate implements component.Validator.
func (c *Config) Validate(ch component.Check) {
	if ch.Has("url") {
		if msg := checkURL(c.URL); msg != "" {
			ch.Errorf("url", "%s", msg)
		}
	}
	if ch.Has("db") && c.DB == "" {
		ch.Errorf("db", "db must not be empty")
	}
	if !validSince(c.Since) {
		ch.Errorf("since", "invalid since %q: use \"0\" (the beginning), \"now\", or a sequence id such as 42 or \"42-g1AAAA…\"", c.Since)
	}
	if ch.Has("selector") && ch.Has("filter") {
		ch.Errorf("filter", "set either selector or filter, not both")
	}
	if ch.Has("filter") {
		ddoc, name, ok := strings.Cut(c.Filter, "/")
		if !ok || ddoc == "" || name == "" || strings.Contains(name, "/") {
			ch.Errorf("filter", "invalid filter %q: use \"ddoc/name\", the design document (without _design/) and the filter's name", c.Filter)
		}
	}
	if ch.Has("params") && !ch.Has("filter") {
		ch.Errorf("params", "params are the query parameters of a filter; set filter too")
	}
	if c.Heartbeat <= 0 {
		ch.Errorf("heartbeat", "heartbeat must be positive, got %s", c.Heartbeat)
	}
	if ch.Has("checkpoint_id") && strings.TrimPrefix(c.CheckpointID, "_local/") == "" {
		ch.Errorf("checkpoint_id", "checkpoint_id must not be empty")
	}
	if msg := checkDBName(c.ErrorsDB); msg != "" {
		ch.Errorf("errors_db", "invalid errors_db %q: %s", c.ErrorsDB, msg)
	} else if c.ErrorsDB == c.DB {
		ch.Errorf("errors_db", "errors_db must not be the source's database: its entries would show up in the changes feed")
	}
	if msg := checkDBName(c.RecordsDB); msg != "" {
		ch.Errorf("records_db", "invalid records_db %q: %s", c.RecordsDB, msg)
	} else if c.RecordsDB == c.DB {
		ch.Errorf("records_db", "records_db must not be the source's database: its entries would show up in the changes feed")
	} else if c.RecordsDB == c.ErrorsDB {
		ch.Errorf("records_db", "records_db must not be errors_db")
	}
}

// maxDBName is the longest database name CouchDB accepts.
const maxDBName = 238

// checkDBName returns what is wrong with a CouchDB database name, or "".
// CouchDB accepts ^[a-z][a-z0-9_$()+/-]*$ (pouchdb-server accepts
// anything, so the check is ours).
func checkDBName(name string) string {
	const rule = "a database name is a lowercase letter followed by lowercase letters, digits and _$()+-/"
	switch {
	case name == "":
		return "must not be empty"
	case len(name) > maxDBName:
		return fmt.Sprintf("longer than %d characters", maxDBName)
	case name[0] < 'a' || name[0] > 'z':
		return rule
	}
	for _, r := range name {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && !strings.ContainsRune("_$()+-/", r) {
			return rule
		}
	}
	return ""
}

// checkURL returns what is wrong with a server URL, never repeating its
// password, or "".
func checkURL(s string) string {
	u, err := safeurl.Parse(s)
	if err != nil {
		return err.Error()
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "invalid url " + quote(u.Redacted()) + ": use http:// or https://"
	}
	if u.Host == "" {
		return "invalid url " + quote(u.Redacted()) + ": no host"
	}
	return ""
}

func quote(s string) string { return `"` + s + `"` }

// validSince reports whether s is "now" or a sequence id: digits, alone or
// followed by a dash and more.
func validSince(s string) bool {
	if s == "now" {
		return true
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return false
	}
	return i == len(s) || (s[i] == '-' && i+1 < len(s))
}

// seqNumber is the numeric prefix of a sequence id, or -1 when it has none.
func seqNumber(s string) int64 {
	var n int64
	i := 0
	for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		if n > (1<<63-1)/10-10 {
			return -1
		}
		n = n*10 + int64(s[i]-'0')
	}
	if i == 0 {
		return -1
	}
	return n
}

// isInteger reports whether a sequence id is a bare integer.
func isInteger(s string) bool {
	return s != "" && seqNumber(s) >= 0 && strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) < 0
}
