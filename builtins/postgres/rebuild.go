package postgres

// Rebuilds, for `ptop reindex` (component.Rebuildable).
//
// RebuildTarget returns a sink writing into a shadow table, TABLE__reindex
// in the live table's schema, made as create: true makes a table from the
// (possibly new) configuration, and reused when it exists so that an
// interrupted reindex resumes. Promote then swaps it in, in one
// transaction: TABLE__old (a table kept by an earlier reindex) is dropped,
// TABLE becomes TABLE__old (or is dropped), and TABLE__reindex becomes
// TABLE. A reader waits on the swap's locks for a moment, and then finds
// the new table: it never finds none.
//
// What the configuration does not say is carried over from the live
// table: before the swap, its other indexes are built on the shadow table
// (an index on a column the new configuration dropped is left out, with a
// warning; one that cannot be built, such as a unique index the new rows
// break, stops the promotion); in the swap, its privileges are granted on
// the new table, and the indexes take the names they had on the live
// table, so that names do not drift over repeated reindexes.
//
// A sink that refers to the table by name follows the swap: a live
// pillow's sink (in another process) writes into the new table from its
// next batch on, with no error: Postgres plans its prepared statements
// again when a table they use is renamed, and they return nothing that
// depends on the table (see TestLiveSinkFollowsPromote). The sink that
// RebuildTarget returned moves to the live table when Promote of the same
// sink succeeds, so that the catch-up pass written after it lands there.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dimagi/ptop/component"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	shadowSuffix = "__reindex"
	oldSuffix    = "__old"
	// maxIdent is the length of Postgres's identifiers (NAMEDATALEN-1),
	// in bytes; longer ones are cut.
	maxIdent = 63
)

// The swap waits at most promoteLockTimeout for its locks (readers and
// writers queue behind it meanwhile), then tries again, up to
// promoteAttempts times.
const (
	promoteLockTimeout = 3 * time.Second
	promoteRetryPause  = time.Second
	promoteAttempts    = 20
)

var _ component.Rebuildable = (*Sink)(nil)

// rebuildNames are the tables of a rebuild, all in one schema.
type rebuildNames struct {
	schema string
	rel    string // the live table's name
}

func (n rebuildNames) live() pgx.Identifier   { return pgx.Identifier{n.schema, n.rel} }
func (n rebuildNames) shadow() pgx.Identifier { return pgx.Identifier{n.schema, n.rel + shadowSuffix} }
func (n rebuildNames) old() pgx.Identifier    { return pgx.Identifier{n.schema, n.rel + oldSuffix} }

// resolveNames finds the schema of the rebuild's tables: the configured
// one; else that of the table the search path finds, or, when there is
// none, the one CREATE TABLE would use.
func resolveNames(ctx context.Context, q querier, table pgx.Identifier) (rebuildNames, error) {
	rel := table[len(table)-1]
	if len(rel)+len(shadowSuffix) > maxIdent {
		return rebuildNames{}, component.Permanent(fmt.Errorf("table name %q is too long to be rebuilt beside the live table: %q must fit in Postgres's %d bytes",
			rel, rel+shadowSuffix, maxIdent))
	}
	if len(table) == 2 {
		return rebuildNames{schema: table[0], rel: rel}, nil
	}
	var nsp *string
	err := q.QueryRow(ctx, `SELECT coalesce(
		(SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)),
		current_schema()::text)`, table.Sanitize()).Scan(&nsp)
	if err != nil {
		return rebuildNames{}, err
	}
	if nsp == nil {
		return rebuildNames{}, component.Permanent(errors.New("no schema of the search_path exists: name the table's schema (schema.table)"))
	}
	return rebuildNames{schema: *nsp, rel: rel}, nil
}

// connect opens a connection of its own, for the DDL of a rebuild.
func (s *Sink) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.poolCfg.ConnConfig.Copy())
	if err != nil {
		return nil, classify(err)
	}
	return conn, nil
}

// RebuildTarget implements component.Rebuildable: it creates the shadow table
// TABLE__reindex (adding missing columns when it exists; dropping it first
// when fresh) and returns a sink writing into it, with the same write
// semantics and checkpoint store, and the shadow table's oid as its id.
func (s *Sink) RebuildTarget(ctx context.Context, fresh bool) (component.Sink, string, error) {
	if s.rebuildOf != nil {
		return nil, "", errors.New("postgres: the sink of a rebuild cannot be rebuilt")
	}
	conn, err := s.connect(ctx)
	if err != nil {
		return nil, "", err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout.D())
	defer cancel()
	names, err := resolveNames(ctx, conn, s.table)
	if err != nil {
		return nil, "", classify(err)
	}
	if fresh {
		if err := ddl(ctx, conn, names.shadow(), []string{"DROP TABLE IF EXISTS " + names.shadow().Sanitize()}); err != nil {
			return nil, "", classify(err)
		}
	}
	s.mu.Lock()
	cps := s.cps
	s.mu.Unlock()
	t := &Sink{
		cfg:       s.cfg,
		log:       s.log,
		poolCfg:   s.poolCfg.Copy(),
		conn:      s.conn,
		table:     s.table,
		tableName: s.tableName,
		columns:   s.columns,
		dst:       dest{table: names.shadow(), name: s.tableName + shadowSuffix, create: true, shadow: true},
		cps:       cps,
		rebuildOf: s,
	}
	if _, err := t.ensureSchema(ctx, conn, t.dst); err != nil {
		return nil, "", classify(err)
	}
	var oid uint32
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1)::oid", names.shadow().Sanitize()).Scan(&oid); err != nil {
		return nil, "", classify(err)
	}
	// Made now: a table that disappears later is not made again (Promote
	// renamed it, or someone dropped it).
	t.dst.create = false
	s.mu.Lock()
	s.targets = append(s.targets, t)
	s.mu.Unlock()
	return t, fmt.Sprintf("table %s oid %d", names.shadow().Sanitize(), oid), nil
}

// moveTo makes the sink write into d from its next batch on.
func (s *Sink) moveTo(d dest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dst = d
	s.dstGen++
	s.sch = nil
	s.allNew.Store(false)
}

// Promote implements component.Rebuildable: it builds the live table's other
// indexes on the shadow table, then swaps the tables in one transaction.
// The sinks this sink's RebuildTarget returned write into the live table
// from then on.
func (s *Sink) Promote(ctx context.Context, keepOld bool) (string, error) {
	if s.rebuildOf != nil {
		return "", errors.New("postgres: the sink of a rebuild cannot be promoted; promote the sink it was made from")
	}
	conn, err := s.connect(ctx)
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	names, err := resolveNames(ctx, conn, s.table)
	if err != nil {
		return "", classify(err)
	}
	built, err := s.copyIndexes(ctx, conn, names)
	if err != nil {
		return "", classify(err)
	}
	var existed bool
	for attempt := 1; ; attempt++ {
		existed, err = s.swap(ctx, conn, names, keepOld)
		if err == nil {
			break
		}
		if !lockBusy(err) || attempt >= promoteAttempts || ctx.Err() != nil {
			return "", classify(err)
		}
		s.log.Warn("waiting to swap the rebuilt table in: a transaction holds the table", "table", s.tableName, "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(promoteRetryPause):
		}
	}

	s.mu.Lock()
	targets := s.targets
	s.targets = nil
	s.mu.Unlock()
	for _, t := range targets {
		t.moveTo(dest{table: s.table, name: s.tableName, create: s.cfg.Create})
	}

	var msg string
	switch {
	case !existed:
		msg = fmt.Sprintf("table %s created from the rebuilt one (there was none)", s.tableName)
	case keepOld:
		msg = fmt.Sprintf("table %s replaced by the rebuilt one (old one kept as %s)", s.tableName, s.tableName+oldSuffix)
	default:
		msg = fmt.Sprintf("table %s replaced by the rebuilt one (old one dropped)", s.tableName)
	}
	if len(built) > 0 {
		msg += fmt.Sprintf("; %d %s of the old table built: %s", len(built), plural(len(built), "index", "indexes"), strings.Join(built, ", "))
	}
	return msg, nil
}

func (s *Sink) lockTimeout() time.Duration {
	if s.promoteWait > 0 {
		return s.promoteWait
	}
	return promoteLockTimeout
}

// lockBusy reports whether the swap gave up waiting for a lock.
func lockBusy(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "55P03" || pe.Code == "40P01") // lock_not_available, deadlock_detected
}

// swap swaps the shadow table in, in one transaction, and reports whether
// there was a live table.
func (s *Sink) swap(ctx context.Context, conn *pgx.Conn, names rebuildNames, keepOld bool) (existed bool, err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", s.lockTimeout().Milliseconds())); err != nil {
		return false, err
	}
	// The live sinks' lock for creating and altering the table, and the
	// rebuild sink's.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1), pg_advisory_xact_lock($2)", lockKey(s.table), lockKey(names.shadow())); err != nil {
		return false, err
	}
	var nsp, liveOID, shadowOID *uint32
	err = tx.QueryRow(ctx, "SELECT (SELECT oid FROM pg_namespace WHERE nspname = $1), to_regclass($2)::oid, to_regclass($3)::oid",
		names.schema, names.live().Sanitize(), names.shadow().Sanitize()).Scan(&nsp, &liveOID, &shadowOID)
	if err != nil {
		return false, err
	}
	if shadowOID == nil {
		return false, component.Permanent(fmt.Errorf("there is no rebuilt table %s to promote", s.tableName+shadowSuffix))
	}
	if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+names.old().Sanitize()); err != nil {
		return false, dropError(s.tableName+oldSuffix, err)
	}
	shadowIdx, err := tableIndexes(ctx, tx, *shadowOID, s.cfg.Key)
	if err != nil {
		return false, err
	}
	renames := map[string]string{} // shadow index → name
	if liveOID != nil {
		liveIdx, err := tableIndexes(ctx, tx, *liveOID, s.cfg.Key)
		if err != nil {
			return false, err
		}
		// Each index of the new table takes the name of its match on
		// the old one.
		used := map[string]bool{}
		for _, si := range shadowIdx {
			for _, li := range liveIdx {
				if !used[li.name] && si.matches(li) {
					used[li.name] = true
					renames[si.name] = li.name
					break
				}
			}
		}
		if err := copyGrants(ctx, tx, *liveOID, *shadowOID, names.shadow()); err != nil {
			return false, err
		}
		if keepOld {
			for _, li := range liveIdx {
				if err := renameIndex(ctx, tx, *nsp, names.schema, li.name, objName(names.rel+oldSuffix, indexBase(names.rel, li.name))); err != nil {
					return false, err
				}
			}
			if _, err := tx.Exec(ctx, "ALTER TABLE "+names.live().Sanitize()+" RENAME TO "+pgx.Identifier{names.rel + oldSuffix}.Sanitize()); err != nil {
				return false, err
			}
		} else if _, err := tx.Exec(ctx, "DROP TABLE "+names.live().Sanitize()); err != nil {
			return false, dropError(s.tableName, err)
		}
	}
	for _, si := range shadowIdx {
		to, ok := renames[si.name]
		if !ok {
			to = objName(names.rel, indexBase(names.rel+shadowSuffix, si.name))
		}
		if err := renameIndex(ctx, tx, *nsp, names.schema, si.name, to); err != nil {
			return false, err
		}
	}
	if _, err := tx.Exec(ctx, "ALTER TABLE "+names.shadow().Sanitize()+" RENAME TO "+pgx.Identifier{names.rel}.Sanitize()); err != nil {
		return false, err
	}
	return liveOID != nil, tx.Commit(ctx)
}

// dropError explains why a table could not be dropped.
func dropError(table string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "2BP01" { // dependent objects
		msg := pe.Message
		if pe.Detail != "" {
			msg += " (" + pe.Detail + ")"
		}
		return component.Permanent(fmt.Errorf("cannot drop table %s: %s; drop or change what depends on it (a view, a foreign key), or keep the old table", table, msg))
	}
	return err
}

// index is an index of a table.
type index struct {
	name    string
	primary bool
	onKey   bool   // unique on the key column alone, as the primary key the sink creates
	unique  bool   // unique
	def     string // pg_get_indexdef
	body    string // the definition after "… ON table USING ": "btree (name) WHERE …"
}

// matches reports whether two indexes of two tables index the same way.
func (a index) matches(b index) bool {
	if a.onKey || b.onKey {
		return a.onKey && b.onKey
	}
	return a.body != "" && a.unique == b.unique && a.body == b.body
}

// tableIndexes returns a table's indexes, by name.
func tableIndexes(ctx context.Context, q querier, table uint32, key string) ([]index, error) {
	rows, err := q.Query(ctx, `SELECT c.relname::text, i.indisprimary, i.indisunique,
		coalesce(i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname::text = $2, false),
		pg_get_indexdef(c.oid),
		'CREATE ' || CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END || 'INDEX ' || quote_ident(c.relname) ||
			' ON ' || quote_ident(n.nspname) || '.' || quote_ident(t.relname) || ' USING '
		FROM pg_index i
		JOIN pg_class c ON c.oid = i.indexrelid
		JOIN pg_class t ON t.oid = i.indrelid
		JOIN pg_namespace n ON n.oid = t.relnamespace
		LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = $1
		ORDER BY NOT i.indisprimary, c.relname`, table, key)
	if err != nil {
		return nil, err
	}
	var out []index
	for rows.Next() {
		var ix index
		var prefix string
		if err := rows.Scan(&ix.name, &ix.primary, &ix.unique, &ix.onKey, &ix.def, &prefix); err != nil {
			return nil, err
		}
		if strings.HasPrefix(ix.def, prefix) {
			ix.body = ix.def[len(prefix):]
		}
		out = append(out, ix)
	}
	return out, rows.Err()
}

// copyIndexes builds on the shadow table the live table's indexes that it
// lacks, besides the key's, and returns their names. An index on a column
// the shadow table does not have is left out, with a warning.
func (s *Sink) copyIndexes(ctx context.Context, conn *pgx.Conn, names rebuildNames) ([]string, error) {
	var liveOID, shadowOID *uint32
	err := conn.QueryRow(ctx, "SELECT to_regclass($1)::oid, to_regclass($2)::oid",
		names.live().Sanitize(), names.shadow().Sanitize()).Scan(&liveOID, &shadowOID)
	if err != nil {
		return nil, err
	}
	if shadowOID == nil {
		return nil, component.Permanent(fmt.Errorf("there is no rebuilt table %s to promote", s.tableName+shadowSuffix))
	}
	if liveOID == nil {
		return nil, nil
	}
	liveIdx, err := tableIndexes(ctx, conn, *liveOID, s.cfg.Key)
	if err != nil {
		return nil, err
	}
	shadowIdx, err := tableIndexes(ctx, conn, *shadowOID, s.cfg.Key)
	if err != nil {
		return nil, err
	}
	var built []string
next:
	for _, li := range liveIdx {
		if li.onKey || li.primary {
			continue // the shadow table has its primary key
		}
		for _, si := range shadowIdx {
			if si.matches(li) {
				continue next // built by an earlier attempt
			}
		}
		if li.body == "" {
			s.log.Warn("index of the old table not built on the rebuilt one: its definition is not understood", "table", s.tableName, "index", li.name, "definition", li.def)
			continue
		}
		name := objName(names.rel+shadowSuffix, indexBase(names.rel, li.name))
		var taken bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgx.Identifier{names.schema, name}.Sanitize()).Scan(&taken); err != nil {
			return nil, err
		}
		stmt := "CREATE "
		if li.unique {
			stmt += "UNIQUE "
		}
		stmt += "INDEX "
		if !taken && name != "" {
			stmt += pgx.Identifier{name}.Sanitize() + " " // else Postgres chooses one
		}
		stmt += "ON " + names.shadow().Sanitize() + " USING " + li.body
		s.log.Info("building an index of the old table on the rebuilt one", "table", s.tableName, "index", li.name)
		if _, err := conn.Exec(ctx, stmt); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && (pe.Code == "42703" || pe.Code == "42883" || pe.Code == "42804" || pe.Code == "42704") {
				// A column the new configuration dropped, or whose
				// type changed.
				s.log.Warn("index of the old table not built on the rebuilt one", "table", s.tableName, "index", li.name, "definition", li.def, "error", err)
				continue
			}
			return nil, fmt.Errorf("building index %s of table %s on the rebuilt table: %w", li.name, s.tableName, err)
		}
		built = append(built, li.name)
	}
	return built, nil
}

// privRE is what a privilege's name looks like (SELECT, INSERT, …).
var privRE = regexp.MustCompile(`^[A-Z][A-Z ]*$`)

// copyGrants grants on the table to what is granted on from, except to to's
// owner.
func copyGrants(ctx context.Context, tx pgx.Tx, from, to uint32, toName pgx.Identifier) error {
	rows, err := tx.Query(ctx, `SELECT a.privilege_type, a.is_grantable,
		CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
		FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
		LEFT JOIN pg_roles r ON r.oid = a.grantee
		WHERE c.oid = $1 AND (a.grantee = 0 OR r.rolname IS NOT NULL)
			AND a.grantee <> (SELECT relowner FROM pg_class WHERE oid = $2)
		ORDER BY 3, 1`, from, to)
	if err != nil {
		return err
	}
	var grants []string
	for rows.Next() {
		var priv, grantee string
		var grantable bool
		if err := rows.Scan(&priv, &grantable, &grantee); err != nil {
			return err
		}
		if !privRE.MatchString(priv) {
			continue
		}
		g := "GRANT " + priv + " ON TABLE " + toName.Sanitize() + " TO " + grantee
		if grantable {
			g += " WITH GRANT OPTION"
		}
		grants = append(grants, g)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for _, g := range grants {
		if _, err := tx.Exec(ctx, g); err != nil {
			return fmt.Errorf("%s: %w", g, err)
		}
	}
	return nil
}

// renameIndex renames an index, unless the name is taken (or empty).
func renameIndex(ctx context.Context, tx pgx.Tx, nsp uint32, schema, from, to string) error {
	if to == "" || to == from {
		return nil
	}
	var taken bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = $1 AND relname = $2)", nsp, to).Scan(&taken); err != nil {
		return err
	}
	if taken {
		return nil
	}
	_, err := tx.Exec(ctx, "ALTER INDEX "+pgx.Identifier{schema, from}.Sanitize()+" RENAME TO "+pgx.Identifier{to}.Sanitize())
	return err
}

// objName is the name Postgres gives an object of table rel with label
// ("pkey", "name_idx"): rel cut to fit, "_", label; "" when the label
// alone is too long.
func objName(rel, label string) string {
	n := maxIdent - len(label) - 1
	if n < 1 || label == "" {
		return ""
	}
	return clip(rel, n) + "_" + label
}

// indexBase returns the label of an index of table rel whose name
// objName made ("cases_pkey" → "pkey"), else the name itself. When rel
// was cut, several labels may fit: the shortest is taken.
func indexBase(rel, name string) string {
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '_' && objName(rel, name[i+1:]) == name {
			return name[i+1:]
		}
	}
	return name
}

// clip cuts s to at most n bytes, on a character boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
