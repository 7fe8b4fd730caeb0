package postgres

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/dimagi/ptop/component"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Config is the YAML under `- postgres: …` in sinks.
type Config struct {
	// DSN is the connection string, as a URL
	// ("postgres://user:pass@host:5432/db?sslmode=disable") or as
	// key=value pairs. The password is never written in messages.
	DSN string `yaml:"dsn" ptop:"required" doc:"Connection string: postgres://user:pass@host:5432/db?sslmode=disable, or key=value pairs."`
	// Table is the table written, "name" or "schema.name", taken
	// literally (case kept, quoted in SQL).
	Table string `yaml:"table" ptop:"required" doc:"The table written: name or schema.name, taken literally (case kept); the name at most 54 bytes (its rebuild is NAME__reindex), the schema at most 63."`
	// Key is the column holding the record id; default "_id".
	Key string `yaml:"key" doc:"The column holding the record id (default _id)."`
	// Columns maps column names to SQL types: a record field with a
	// column's name goes into that column.
	Columns map[string]string `yaml:"columns" doc:"Column name to SQL type (text, integer, timestamptz, jsonb, text[] …): a record field with a column's name goes into that column. Names at most 63 bytes."`
	// Doc puts every other field of a record into a jsonb column "doc"
	// (default true); false drops them.
	Doc bool `yaml:"doc" doc:"Put every other field of a record into the jsonb column doc (default true); false drops them."`
	// Create creates the table (and its schema) when missing, and adds
	// missing columns. Without it a missing table or column stops the
	// pillow at start.
	Create bool `yaml:"create" doc:"Create the table and its missing columns; without it a missing table or column stops the pillow at start."`
	// Timeout bounds the writing of one batch; past it the batch is
	// rolled back and retried. Default 60s.
	Timeout component.Duration `yaml:"timeout" doc:"Bound on writing one batch; past it the batch is rolled back and retried (default 60s)."`

	// columnOrder is the order the columns are written in the file.
	columnOrder []string
}

// DefaultTimeout is the write timeout when none is configured.
const DefaultTimeout = 60 * time.Second

// Reserved column names: the revision of the record's document, the feed
// position of the change it came from, the numeric prefix of its sequence
// id ("42-g1AAAA…" → 42), which orders writes, and the id of the record's
// document.
const (
	revColumn   = "_rev"
	seqColumn   = "_seq"
	docIDColumn = "_doc_id"
	docColumn   = "doc"
)

// SetDefaults implements component.Defaulter.
func (c *Config) SetDefaults() {
	c.Key = "_id"
	c.Doc = true
	c.Timeout = component.Duration(DefaultTimeout)
}

// typeRE is what a column type may look like: words, an optional
// modifier in parentheses and array brackets ("text", "double precision",
// "numeric(10,2)", "timestamp with time zone", "text[]"). Types are written
// into SQL as they are, so nothing else is let through.
var typeRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*( [A-Za-z_][A-Za-z0-9_]*)*( ?\( *[0-9]+ *(, *[0-9]+ *)?\))?( ?\[\])*$`)

// Validate implements component.Validator.
func (c *Config) Validate(ch component.Check) {
	if ch.Has("dsn") {
		if msg := checkDSN(c.DSN); msg != "" {
			ch.Errorf("dsn", "%s", msg)
		}
	}
	if ch.Has("table") {
		if _, err := parseTable(c.Table, maxTableName); err != nil {
			ch.Errorf("table", "%s", err)
		}
	}
	if c.Key == "" {
		ch.Errorf("key", "key must not be empty")
	} else if len(c.Key) > maxIdentifier {
		ch.Errorf("key", "key %q is %d bytes; Postgres names are at most %d", c.Key, len(c.Key), maxIdentifier)
	} else if reserved(c.Key, true) {
		ch.Errorf("key", "key %q is a column ptop keeps for itself; choose another name", c.Key)
	}
	c.columnOrder = append(c.columnOrder[:0], ch.MapKeys("columns")...)
	seen := map[string]bool{}
	for _, name := range c.columnOrder {
		typ, ok := c.Columns[name]
		if !ok || seen[name] {
			if seen[name] {
				ch.Errorf("columns", "column %q is listed twice", name)
			}
			continue
		}
		seen[name] = true
		switch {
		case name == "":
			ch.Errorf("columns", "a column name must not be empty")
		case len(name) > maxIdentifier:
			ch.Errorf("columns", "column %q is %d bytes; Postgres names are at most %d", name, len(name), maxIdentifier)
		case name == c.Key:
			ch.Errorf("columns", "column %q is the key column; the key is not listed in columns (it is text)", name)
		case reserved(name, c.Doc):
			if name == docColumn {
				ch.Errorf("columns", "column %q holds the record's other fields; name the column differently, or set doc: false", name)
			} else {
				ch.Errorf("columns", "column %q is a column ptop keeps for itself (the revision and feed position); choose another name", name)
			}
		case strings.TrimSpace(typ) == "":
			ch.Errorf("columns", "column %q needs a type, such as text, integer, timestamptz or jsonb", name)
		case !typeRE.MatchString(strings.TrimSpace(typ)):
			ch.Errorf("columns", "column %q: invalid type %q: use a type name such as text, numeric(10,2), timestamptz or text[]", name, typ)
		}
	}
	if c.Timeout <= 0 {
		ch.Errorf("timeout", "timeout must be positive, got %s", c.Timeout)
	}
}

// reserved reports whether name is a column the sink manages.
func reserved(name string, doc bool) bool {
	return name == revColumn || name == seqColumn || name == docIDColumn || (doc && name == docColumn)
}

// checkDSN returns what is wrong with a connection string, never repeating
// it (it may hold a password), or "".
func checkDSN(dsn string) string {
	if strings.TrimSpace(dsn) == "" {
		return "dsn must not be empty"
	}
	if _, err := pgxpool.ParseConfig(dsn); err != nil {
		return "invalid dsn: " + dsnError(err)
	}
	return ""
}

// dsnError describes a connection string's parse error without the string.
func dsnError(err error) string {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		msg := pe.Error()
		// "cannot parse `CONNSTRING`: why (cause)": keep "why (cause)".
		if i := strings.LastIndex(msg, "`: "); i >= 0 {
			return msg[i+3:]
		}
		return "cannot parse it"
	}
	return err.Error()
}

// maxIdentifier is the longest name Postgres keeps (NAMEDATALEN-1 bytes);
// it cuts longer ones silently. A sink's table is shorter still, so that
// its rebuild's TABLE__reindex fits.
const (
	maxIdentifier = 63
	maxTableName  = maxIdentifier - len(shadowSuffix)
)

// parseTable splits "schema.name" or "name"; the name may have at most
// maxName bytes.
func parseTable(s string, maxName int) ([]string, error) {
	if s == "" {
		return nil, errors.New("table must not be empty")
	}
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return nil, errors.New("invalid table " + quote(s) + ": use name or schema.name")
	}
	for _, p := range parts {
		if p == "" || strings.TrimSpace(p) != p {
			return nil, errors.New("invalid table " + quote(s) + ": use name or schema.name, without spaces around the names")
		}
	}
	if name := parts[len(parts)-1]; len(name) > maxName {
		return nil, fmt.Errorf("table name %q is %d bytes; it may have at most %d", name, len(name), maxName)
	}
	if len(parts) == 2 && len(parts[0]) > maxIdentifier {
		return nil, fmt.Errorf("schema name %q is %d bytes; Postgres names are at most %d", parts[0], len(parts[0]), maxIdentifier)
	}
	return parts, nil
}

func quote(s string) string { return `"` + s + `"` }

// CheckpointConfig is the YAML under `checkpoint: {postgres: …}`.
type CheckpointConfig struct {
	// DSN is the connection string, like the sink's. A postgres sink of
	// the pillow with the same server, database and user saves the
	// checkpoint in the transaction of each batch.
	DSN string `yaml:"dsn" ptop:"required" doc:"Connection string, like the sink's; a postgres sink of the pillow with the same server, database and user saves the checkpoint in each batch's transaction."`
	// Table holds one row per pillow; default "ptop_checkpoints". It is
	// created when missing.
	Table string `yaml:"table" doc:"Table of one row per pillow (default ptop_checkpoints), created when missing."`
}

// DefaultCheckpointTable is the checkpoint table when none is configured.
const DefaultCheckpointTable = "ptop_checkpoints"

// SetDefaults implements component.Defaulter.
func (c *CheckpointConfig) SetDefaults() { c.Table = DefaultCheckpointTable }

// Validate implements component.Validator.
func (c *CheckpointConfig) Validate(ch component.Check) {
	if ch.Has("dsn") {
		if msg := checkDSN(c.DSN); msg != "" {
			ch.Errorf("dsn", "%s", msg)
		}
	}
	if _, err := parseTable(c.Table, maxIdentifier); err != nil {
		ch.Errorf("table", "%s", err)
	}
}
