package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"

	"github.com/dimagi/ptop/component"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// schema is what the sink knows of its table once checked: the columns'
// actual types and the statements made from them.
type schema struct {
	table       pgx.Identifier
	cols        map[string]column // the table's columns when checked
	newEncoder  func() *encoder
	existingSQL string // $1 keys → the 1-based ordinals of those present
	copySQL     string // COPY of new rows, text format
	upsertSQL   string // $1 keys, then one text[] per data column, revs, positions, document ids
	deleteSQL   string // $1 keys, $2 positions
	// docRowsSQL finds, by the _doc_id index, the keys (as text) of the
	// rows of the documents $1, with their documents.
	docRowsSQL string
}

type column struct {
	name string
	typ  string // as format_type writes it, with its modifier: varchar(20)
	cast string // without the modifier, to cast text to: character varying
	oid  uint32
}

// querier is a connection or a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// tableColumns returns the table's columns, or nil when it does not exist.
func tableColumns(ctx context.Context, q querier, table pgx.Identifier) (map[string]column, error) {
	var oid *uint32
	if err := q.QueryRow(ctx, "SELECT to_regclass($1)::oid", table.Sanitize()).Scan(&oid); err != nil {
		return nil, err
	}
	if oid == nil {
		return nil, nil
	}
	rows, err := q.Query(ctx, `SELECT attname, format_type(atttypid, atttypmod), format_type(atttypid, NULL), atttypid::int8
		FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped`, *oid)
	if err != nil {
		return nil, err
	}
	cols := map[string]column{}
	for rows.Next() {
		var c column
		var typOID int64
		if err := rows.Scan(&c.name, &c.typ, &c.cast, &typOID); err != nil {
			return nil, err
		}
		c.oid = uint32(typOID)
		cols[c.name] = c
	}
	return cols, rows.Err()
}

// ensureSchema checks the table (creating what is missing when the sink
// may) and prepares the statements. Problems that a retry cannot fix are
// component.Permanent.
func (s *Sink) ensureSchema(ctx context.Context, conn querier, d dest) (*schema, error) {
	// The configured types must exist, whether the table does or not.
	want := make(map[string]uint32, len(s.columns))
	for _, c := range s.columns {
		var oid int64
		err := conn.QueryRow(ctx, "SELECT $1::regtype::oid::int8", s.cfg.Columns[c]).Scan(&oid)
		if err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && (pe.Code == "42704" || pe.Code == "42601" || pe.Code == "22P02") {
				return nil, component.Permanent(fmt.Errorf("column %q: type %q does not exist in this database", c, s.cfg.Columns[c]))
			}
			return nil, err
		}
		want[c] = uint32(oid)
	}
	cols, err := tableColumns(ctx, conn, d.table)
	if err != nil {
		return nil, err
	}
	if cols == nil {
		if d.shadow && !d.create {
			return nil, component.Permanent(fmt.Errorf("the rebuilt table %s is gone: it was promoted (by another sink than the one it was made by) or dropped", d.name))
		}
		if !d.create {
			return nil, component.Permanent(fmt.Errorf("table %s does not exist: create it, or set create: true", d.name))
		}
		if err := s.createTable(ctx, conn, d); err != nil {
			return nil, err
		}
		s.log.Info("created table", "table", d.name)
		if cols, err = tableColumns(ctx, conn, d.table); err != nil {
			return nil, err
		}
		if cols == nil {
			return nil, fmt.Errorf("table %s was created but cannot be found (search_path?)", d.name)
		}
	}
	if _, ok := cols[s.cfg.Key]; !ok {
		return nil, component.Permanent(fmt.Errorf("table %s has no key column %q", d.name, s.cfg.Key))
	}
	var missing []string
	for _, c := range s.managedColumns() {
		if _, ok := cols[c.name]; !ok {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 && d.create {
		if err := s.addColumns(ctx, conn, d, missing); err != nil {
			return nil, err
		}
		if cols, err = tableColumns(ctx, conn, d.table); err != nil {
			return nil, err
		}
		missing = missing[:0]
		for _, c := range s.managedColumns() {
			if _, ok := cols[c.name]; !ok {
				missing = append(missing, c.name)
			}
		}
	}
	if len(missing) > 0 {
		var defs []string
		for _, m := range missing {
			defs = append(defs, "ADD COLUMN "+pgx.Identifier{m}.Sanitize()+" "+s.managedType(m))
		}
		fix := "ALTER TABLE " + d.table.Sanitize() + " " + strings.Join(defs, ", ")
		if slices.Contains(missing, docIDColumn) {
			fix += "; CREATE INDEX ON " + d.table.Sanitize() + " (" + pgx.Identifier{docIDColumn}.Sanitize() + ")"
		}
		return nil, component.Permanent(fmt.Errorf("table %s has no column %s: add %s with %s, or set create: true",
			d.name, quoteList(missing), plural(len(missing), "it", "them"), fix))
	}
	var unique bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (
		SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = $2)`,
		d.table.Sanitize(), s.cfg.Key).Scan(&unique)
	if err != nil {
		return nil, err
	}
	if !unique {
		return nil, component.Permanent(fmt.Errorf("table %s has no primary key or unique index on its key column %q (upserts need one): ALTER TABLE %s ADD PRIMARY KEY (%s)",
			d.name, s.cfg.Key, d.table.Sanitize(), pgx.Identifier{s.cfg.Key}.Sanitize()))
	}
	for _, c := range s.columns {
		if have := cols[c]; have.oid != want[c] {
			s.log.Warn("column type differs from the configured one; values are converted to the column's type",
				"table", d.name, "column", c, "configured", s.cfg.Columns[c], "actual", have.typ)
		}
	}
	return s.prepare(d, cols), nil
}

// stale reports whether the table's columns no longer have the types
// sch was prepared for (an ALTER COLUMN … TYPE while the pillow runs):
// its casts and encoders would reject values the table takes.
func (sch *schema) stale(ctx context.Context, q querier) (bool, error) {
	cols, err := tableColumns(ctx, q, sch.table)
	if err != nil || cols == nil {
		return false, err
	}
	for name, c := range sch.cols {
		if now, ok := cols[name]; !ok || now.oid != c.oid || now.typ != c.typ {
			return true, nil
		}
	}
	return false, nil
}

// managedColumns are the columns the sink writes besides the key, with
// the types it creates them with.
func (s *Sink) managedColumns() []column {
	var cs []column
	for _, c := range s.columns {
		cs = append(cs, column{name: c, typ: strings.TrimSpace(s.cfg.Columns[c])})
	}
	if s.cfg.Doc {
		cs = append(cs, column{name: docColumn, typ: "jsonb"})
	}
	return append(cs, column{name: revColumn, typ: "text"}, column{name: seqColumn, typ: "bigint"}, column{name: docIDColumn, typ: "text"})
}

func (s *Sink) managedType(name string) string {
	for _, c := range s.managedColumns() {
		if c.name == name {
			return c.typ
		}
	}
	return "text"
}

// createTable creates the table, and its schema when named, under an
// advisory lock so that pillows starting together do not race.
func (s *Sink) createTable(ctx context.Context, conn querier, d dest) error {
	defs := []string{pgx.Identifier{s.cfg.Key}.Sanitize() + " text PRIMARY KEY"}
	for _, c := range s.managedColumns() {
		defs = append(defs, pgx.Identifier{c.name}.Sanitize()+" "+c.typ)
	}
	stmts := []string{}
	if len(d.table) == 2 {
		stmts = append(stmts, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{d.table[0]}.Sanitize())
	}
	stmts = append(stmts, "CREATE TABLE IF NOT EXISTS "+d.table.Sanitize()+" (\n  "+strings.Join(defs, ",\n  ")+"\n)",
		docIDIndex(d.table))
	return ddl(ctx, conn, d.table, stmts)
}

// docIDIndex creates the index of the _doc_id column, by which the rows of
// a document are found when it is written again, unless the table has one.
// Postgres names it (cases__doc_id_idx, or another free name).
func docIDIndex(table pgx.Identifier) string {
	tbl := table.Sanitize()
	col := pgx.Identifier{docIDColumn}.Sanitize()
	return "DO $ptop$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]" +
		" WHERE i.indrelid = '" + strings.ReplaceAll(tbl, "'", "''") + "'::regclass AND a.attname = '" + docIDColumn + "')" +
		" THEN CREATE INDEX ON " + tbl + " (" + col + "); END IF; END $ptop$"
}

func (s *Sink) addColumns(ctx context.Context, conn querier, d dest, names []string) error {
	var adds []string
	for _, n := range names {
		adds = append(adds, "ADD COLUMN IF NOT EXISTS "+pgx.Identifier{n}.Sanitize()+" "+s.managedType(n))
	}
	s.log.Info("adding columns", "table", d.name, "columns", strings.Join(names, ","))
	stmts := []string{"ALTER TABLE " + d.table.Sanitize() + " " + strings.Join(adds, ", ")}
	if slices.Contains(names, docIDColumn) {
		stmts = append(stmts, docIDIndex(d.table))
	}
	return ddl(ctx, conn, d.table, stmts)
}

// ddl runs statements in a transaction holding an advisory lock named
// after the table.
func ddl(ctx context.Context, conn querier, table pgx.Identifier, stmts []string) error {
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	run := func() error {
		if _, err := conn.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey(table)); err != nil {
			return err
		}
		for _, st := range stmts {
			if _, err := conn.Exec(ctx, st); err != nil {
				var pe *pgconn.PgError
				if errors.As(err, &pe) && (pe.Code == "42501" || pe.Code[:2] == "42") {
					return component.Permanent(fmt.Errorf("%s: %w", firstLine(st), err))
				}
				return err
			}
		}
		_, err := conn.Exec(ctx, "COMMIT")
		return err
	}
	if err := run(); err != nil {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		return err
	}
	return nil
}

// prepare makes the statements for the table's actual column types.
func (s *Sink) prepare(d dest, cols map[string]column) *schema {
	tbl := d.table.Sanitize()
	key := pgx.Identifier{s.cfg.Key}.Sanitize()
	// Casts go to the type without its modifier: storing the value then
	// checks the modifier as COPY does (a varchar(20) refuses a longer
	// string instead of cutting it).
	keyType := cols[s.cfg.Key].cast
	data := append([]string(nil), s.columns...)
	if s.cfg.Doc {
		data = append(data, docColumn)
	}
	kinds := make([]kind, len(s.columns))
	for i, c := range s.columns {
		kinds[i] = kindOf(cols[c].cast)
	}

	names := []string{key}
	for _, c := range data {
		names = append(names, pgx.Identifier{c}.Sanitize())
	}
	names = append(names, pgx.Identifier{revColumn}.Sanitize(), pgx.Identifier{seqColumn}.Sanitize(), pgx.Identifier{docIDColumn}.Sanitize())

	// unnest($1::text[], …) AS u(c0, …): every value travels as text and
	// is cast to its column's type, as COPY's text format would parse it.
	var params, aliases, selects, sets []string
	for i := range names {
		typ := "text"
		if i == len(names)-2 {
			typ = "int8"
		}
		params = append(params, fmt.Sprintf("$%d::%s[]", i+1, typ))
		aliases = append(aliases, fmt.Sprintf("c%d", i))
	}
	selects = append(selects, "u.c0::"+keyType)
	for i, c := range data {
		selects = append(selects, fmt.Sprintf("u.c%d::%s", i+1, cols[c].cast))
	}
	n := len(names)
	selects = append(selects, fmt.Sprintf("u.c%d", n-3), fmt.Sprintf("u.c%d", n-2), fmt.Sprintf("u.c%d", n-1))
	for _, nm := range names[1:] {
		sets = append(sets, nm+" = EXCLUDED."+nm)
	}
	gen := pgx.Identifier{seqColumn}.Sanitize()
	newer := fmt.Sprintf("t.%s IS NULL OR EXCLUDED.%s IS NULL OR t.%s <= EXCLUDED.%s", gen, gen, gen, gen)

	return &schema{
		table: d.table,
		cols:  cols,
		newEncoder: func() *encoder {
			return newEncoder(s.cfg.Key, s.columns, kinds, s.cfg.Doc, cols[docColumn].cast == "json")
		},
		existingSQL: fmt.Sprintf("SELECT u.i FROM unnest($1::text[]) WITH ORDINALITY AS u(k, i) JOIN %s AS t ON t.%s = u.k::%s",
			tbl, key, keyType),
		copySQL: fmt.Sprintf("COPY %s (%s) FROM STDIN", tbl, strings.Join(names, ", ")),
		upsertSQL: fmt.Sprintf("INSERT INTO %s AS t (%s)\nSELECT %s\nFROM unnest(%s) AS u(%s)\nON CONFLICT (%s) DO UPDATE SET %s\nWHERE %s",
			tbl, strings.Join(names, ", "), strings.Join(selects, ", "), strings.Join(params, ", "), strings.Join(aliases, ", "),
			key, strings.Join(sets, ", "), newer),
		docRowsSQL: fmt.Sprintf("SELECT t.%s::text, t.%s FROM %s AS t WHERE t.%s = ANY($1::text[])",
			key, pgx.Identifier{docIDColumn}.Sanitize(), tbl, pgx.Identifier{docIDColumn}.Sanitize()),
		deleteSQL: fmt.Sprintf("DELETE FROM %s AS t USING unnest($1::text[], $2::int8[]) AS d(k, g)\nWHERE t.%s = d.k::%s AND (t.%s IS NULL OR d.g IS NULL OR t.%s <= d.g)",
			tbl, key, keyType, gen, gen),
	}
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = quote(n)
	}
	return strings.Join(q, ", ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// lockKey is the advisory lock taken while creating or altering table.
func lockKey(table pgx.Identifier) int64 {
	h := fnv.New64a()
	h.Write([]byte("ptop:" + table.Sanitize()))
	return int64(h.Sum64())
}
