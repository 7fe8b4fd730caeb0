// Package postgres is the `postgres` sink, which upserts records into a
// PostgreSQL table, and the `postgres` checkpoint store.
//
//	sinks:
//	  - postgres:
//	      dsn: ${PG_DSN}                 # required; postgres://user:pass@host:5432/db?sslmode=disable
//	      table: cases                   # required; or schema.table
//	      key: _id                       # the column of the record id (default _id)
//	      columns:                       # record fields with these names go in these columns
//	        name: text
//	        opened_on: timestamptz
//	        age: integer
//	      doc: true                      # every other field goes into a jsonb column "doc" (default true)
//	      create: true                   # create the table and missing columns (default false)
//	      timeout: 60s                   # bound on writing one batch (default 60s)
//	checkpoint:
//	  postgres: {dsn: ${PG_DSN}, table: ptop_checkpoints}   # optional
//
// # Table
//
// The table has the key column (text primary key when the sink creates
// it), the configured columns, doc jsonb (unless doc: false), _rev text,
// the record's revision, _seq bigint, the feed position of the change it
// was written from (the numeric prefix of its sequence id: "42" and
// "42-g1AAAA…" are 42), and _doc_id text, the id of the record's
// document, indexed. Without create a
// missing table or column stops the pillow at start, with the ALTER TABLE
// that would fix it; the key column needs a primary key or unique index.
// Columns of an existing table keep their types: values are converted to
// them, and a type other than the configured one is logged.
//
// # Values
//
// Every value is sent as text and parsed by Postgres with the column
// type's input function, as a cast from text would: strings as they are
// (so a timestamptz column takes any date format Postgres reads), numbers
// in full, booleans as true/false, objects and lists as JSON; json and
// jsonb columns take any value as JSON; array columns (text[], int[])
// take lists. A missing field or null is NULL. Identifiers are quoted and
// values are bound or streamed, never spliced into SQL.
//
// # Writes
//
// A batch is written in one transaction. Records with the same id are
// reduced to one: the last. Records are upserted only over rows written
// from the same or an earlier feed position, and deletions remove only
// such rows, so that a delivery older than what a row holds (a reindex's
// catch-up replaying a change the live pillow has written since, a
// second writer) never overwrites it, while every later change of the
// feed does, whatever its revision: CouchDB's current revision of a
// conflicted document can have a lower generation than the one it
// replaces, and the feed's last change of a document is the truth. Records
// without a position (a document read again to retry its failure, a
// source whose sequence ids have no number) carry no order: they are
// written whatever the row's position, and any later change replaces
// them. When the feed goes back (its database was recreated), the engine
// stops the pillow and asks for a reindex: see the README.
//
// The sink is an component.DocSetWriter: after a batch's upserts and deletes,
// the rows of the batch's documents (by _doc_id) whose keys the documents'
// last changes no longer produce are deleted, unless they are of a newer
// generation, in the same transaction.
//
// Rows whose key is not in the table yet go in with COPY (text format,
// encoded while Postgres reads it); the others with one INSERT … ON
// CONFLICT DO UPDATE over unnest()ed arrays. The keys are looked up first,
// except after a batch that found none of its keys (an initial load, a
// reindex, a feed of new documents): then the whole batch goes in with one
// COPY, and is written again with the look-up if a key turns out to exist.
// See BenchmarkPostgres for the rates of both, beside a bare COPY.
//
// A record that Postgres rejects on its own (a value it cannot parse, a
// constraint) does not hold the batch: the batch is written again with the
// rejected records found by bisection under savepoints, and
// component.RecordErrors names exactly those; the rest are committed. When
// a batch has rejected records, the sink first checks that the table's
// column types are still those its statements were made for: after an
// ALTER COLUMN … TYPE while the pillow runs, it reads them again and
// writes the batch again (once), so that values the table now takes are
// not rejected under the old type. Any
// other error (connection refused or lost, timeout, server shutting down)
// fails the whole batch, which the engine retries with backoff while the
// checkpoint holds. A table or column that disappears while the pillow
// runs is checked again at the next write: created again with create,
// else the pillow stops.
//
// # Checkpoints
//
// The `postgres` checkpoint store keeps one row per pillow in a table
// (pillow text primary key, seq text, updated_at timestamptz), created
// when missing; sequence ids are stored verbatim. It keeps the pillows'
// record sets (component.RecordSets) in TABLE_records beside it. When a pillow's
// checkpoint store and one of its postgres sinks use the same server,
// database and user, that sink saves the checkpoint in the transaction of
// each batch: the table and the checkpoint never disagree, even after a
// crash (exactly once into that table).
//
// # Reindex
//
// `ptop reindex` rebuilds the table as TABLE__reindex, in the live table's
// schema, made as create: true would make it (with or without create),
// then swaps it in by renames in one transaction: readers and the running
// pillow's sink go on with the new table. The live table's other indexes
// and its privileges are carried over; TABLE__old is kept only when asked.
// The table's name must leave room for the suffix: at most 54 bytes. See
// rebuild.go.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dimagi/ptop/component"
)

func init() {
	component.RegisterSink("postgres", New)
	component.RegisterCheckpointStore("postgres", NewCheckpoints)
}

// Sink upserts records into a table.
type Sink struct {
	cfg       Config
	log       *slog.Logger
	poolCfg   *pgxpool.Config
	conn      string         // server, database and user, to compare with a checkpoint store
	table     pgx.Identifier // as configured, quoted in SQL
	tableName string         // as configured, for messages
	columns   []string       // data columns, in the configured order

	mu      sync.Mutex
	dst     dest // the table written
	dstGen  int  // counts changes of dst
	pool    *pgxpool.Pool
	sch     *schema      // nil until checked, and after a schema error
	cps     *Checkpoints // the checkpoint store in this database, if any
	cpReady bool         // its table exists

	// Rebuilds (rebuild.go): rebuildOf is the sink whose RebuildTarget
	// made this one; targets are the sinks this one's RebuildTarget made,
	// moved to this sink's table when Promote swaps it in.
	rebuildOf *Sink
	targets   []*Sink
	// promoteWait, when set, replaces promoteLockTimeout (tests).
	promoteWait time.Duration

	// allNew: the last batch found none of its keys in the table, so the
	// next one tries COPY for all its records at once.
	allNew atomic.Bool
}

// New makes a sink from its configuration. It makes no network call.
func New(cfg *Config, bc component.BuildContext) (component.Sink, error) {
	poolCfg, conn, err := poolConfig(cfg.DSN, 2)
	if err != nil {
		return nil, err
	}
	table, err := parseTable(cfg.Table, maxTableName)
	if err != nil {
		return nil, err
	}
	s := &Sink{
		cfg:       *cfg,
		log:       bc.Log,
		poolCfg:   poolCfg,
		conn:      conn,
		table:     pgx.Identifier(table),
		tableName: cfg.Table,
	}
	s.dst = dest{table: s.table, name: s.tableName, create: cfg.Create}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.cfg.Key == "" {
		s.cfg.Key = "_id"
	}
	if s.cfg.Timeout <= 0 {
		s.cfg.Timeout = component.Duration(DefaultTimeout)
	}
	// The order written in the file, else (a Config made in Go) by name.
	for _, c := range cfg.columnOrder {
		if _, ok := cfg.Columns[c]; ok && !slices.Contains(s.columns, c) {
			s.columns = append(s.columns, c)
		}
	}
	if len(s.columns) != len(cfg.Columns) {
		s.columns = s.columns[:0]
		for c := range cfg.Columns {
			s.columns = append(s.columns, c)
		}
		sort.Strings(s.columns)
	}
	for _, c := range s.columns {
		if c == "" || c == s.cfg.Key || reserved(c, s.cfg.Doc) || !typeRE.MatchString(strings.TrimSpace(cfg.Columns[c])) {
			return nil, fmt.Errorf("invalid column %q", c)
		}
	}
	return s, nil
}

// poolConfig parses a connection string; conn identifies the server,
// database and user. maxConns applies unless the string sets
// pool_max_conns.
func poolConfig(dsn string, maxConns int32) (*pgxpool.Config, string, error) {
	if msg := checkDSN(dsn); msg != "" {
		return nil, "", errors.New(msg)
	}
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, "", errors.New("invalid dsn: " + dsnError(err))
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		pc.MaxConns = maxConns
	}
	if !strings.Contains(dsn, "pool_max_conn_idle_time") {
		pc.MaxConnIdleTime = time.Minute
	}
	cc := pc.ConnConfig
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = 10 * time.Second
	}
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "ptop"
	}
	conn := fmt.Sprintf("%s\x00%d\x00%s\x00%s", cc.Host, cc.Port, cc.Database, cc.User)
	return pc, conn, nil
}

// Open implements component.Sink: it connects, checks the table (creating it
// with create: true) and prepares the statements.
func (s *Sink) Open(ctx context.Context) error {
	_, err := s.schema(ctx)
	return err
}

// getPool returns the connection pool, making it on first use.
func (s *Sink) getPool(ctx context.Context) (*pgxpool.Pool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool == nil {
		p, err := pgxpool.NewWithConfig(ctx, s.poolCfg)
		if err != nil {
			return nil, classify(err)
		}
		s.pool = p
	}
	return s.pool, nil
}

// dest is the table a sink writes. It is the configured one, except for
// the sink of a rebuild: the shadow table, then, once promoted, the
// configured one.
type dest struct {
	table  pgx.Identifier // quoted in SQL
	name   string         // for messages
	create bool           // create the table and missing columns
	shadow bool           // the shadow table of a rebuild
}

// schema returns the checked table's statements, checking it first when
// needed.
func (s *Sink) schema(ctx context.Context) (*schema, error) {
	s.mu.Lock()
	sch, d, gen := s.sch, s.dst, s.dstGen
	s.mu.Unlock()
	if sch != nil {
		return sch, nil
	}
	pool, err := s.getPool(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout.D())
	defer cancel()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, classify(err)
	}
	defer conn.Release()
	sch, err = s.ensureSchema(ctx, conn, d)
	if err != nil {
		return nil, classify(err)
	}
	s.mu.Lock()
	if s.dstGen == gen { // else the sink moved to another table meanwhile
		s.sch = sch
	}
	s.mu.Unlock()
	return sch, nil
}

// Write implements component.Sink.
func (s *Sink) Write(ctx context.Context, records []component.Record) error {
	return s.writeTx(ctx, records, nil, "", "", nil)
}

// WriteDocSets implements component.DocSetWriter: in the batch's transaction,
// after its records, the rows of the documents of sets whose keys the
// documents no longer produce are deleted (found by _doc_id), unless they
// were written from a later feed position than the set's change. With
// seq, the checkpoint is saved in it too, after recordRejected has taken
// the records Postgres rejected.
func (s *Sink) WriteDocSets(ctx context.Context, records []component.Record, sets []component.DocSet, pillow, seq string, recordRejected func(component.RecordErrors) error) error {
	if seq != "" {
		s.mu.Lock()
		cps := s.cps
		s.mu.Unlock()
		if cps == nil {
			return errors.New("postgres: a checkpoint to save without a checkpoint store in the same database")
		}
	} else {
		pillow, recordRejected = "", nil
	}
	return s.writeTx(ctx, records, sets, pillow, seq, recordRejected)
}

// SharesStore implements component.TransactionalSink: cps shares this sink's
// database when it is a postgres checkpoint store of the same server,
// database and user. The sink then saves checkpoints in cps's table.
func (s *Sink) SharesStore(cps component.CheckpointStore) bool {
	c, ok := cps.(*Checkpoints)
	if !ok || c.conn != s.conn {
		return false
	}
	s.mu.Lock()
	s.cps = c
	s.cpReady = false
	s.mu.Unlock()
	return true
}

// WriteCheckpointed implements component.TransactionalSink: the records and
// the pillow's checkpoint are committed together.
// The records Postgres rejects are handed to recordRejected before the
// commit; if it fails, the transaction is rolled back.
func (s *Sink) WriteCheckpointed(ctx context.Context, records []component.Record, pillow, seq string, recordRejected func(component.RecordErrors) error) error {
	s.mu.Lock()
	cps := s.cps
	s.mu.Unlock()
	if cps == nil {
		return errors.New("postgres: WriteCheckpointed without a checkpoint store in the same database")
	}
	if seq == "" {
		pillow = ""
	}
	return s.writeTx(ctx, records, nil, pillow, seq, recordRejected)
}

// Close implements component.Sink.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool != nil {
		s.pool.Close()
		s.pool = nil
	}
	s.sch = nil
	return nil
}

// errSlow says a batch has a record Postgres rejects: it is written again
// with the rejected records found one by one. errConflict says COPY met a
// row that exists: the batch is written again, upserting those.
// errStale says the table's column types changed since the sink
// prepared its statements: the batch is written again with new ones.
var (
	errSlow     = errors.New("a record was rejected")
	errConflict = errors.New("a row exists")
	errStale    = errors.New("the table's column types changed")
)

// How a transaction writes the upserts of a batch.
type mode int

const (
	// copyAll sends every record with COPY: the batch before found none of
	// its keys in the table (an initial load, a reindex, new documents).
	copyAll mode = iota
	// split looks the keys up first: COPY for the new rows, an upsert for
	// the others.
	split
	// slow upserts everything, finding rejected records by bisection.
	slow
)

// batch is one Write's work.
type batch struct {
	records  []component.Record
	ups      []row // one per id, values not encoded yet
	dels     []row
	sets     []component.DocSet // documents whose other rows go
	rejected component.RecordErrors
	// failed are the records rejected before the transaction (no id);
	// onRejected, when set, is given them and rejected before the commit.
	failed     component.RecordErrors
	onRejected func(component.RecordErrors) error
	// checked: the table's types were checked after records were
	// rejected (see schema.stale).
	checked bool
}

func (b *batch) reject(r row, err error) {
	b.rejected = append(b.rejected, component.RecordError{Index: r.index, Err: rejection(err)})
}

// writeTx writes a batch, then removes the other rows of the documents of
// sets, with pillow's checkpoint when seq is set. With recordRejected, the
// rejected records are handed to it before the commit instead of being
// returned.
func (s *Sink) writeTx(ctx context.Context, records []component.Record, sets []component.DocSet, pillow, seq string, recordRejected func(component.RecordErrors) error) error {
	sch, err := s.schema(ctx)
	if err != nil {
		return err
	}
	pool, err := s.getPool(ctx)
	if err != nil {
		return err
	}
	b := &batch{records: records, sets: sets}
	var failed component.RecordErrors
	rows := make([]row, 0, len(records))
	for i := range records {
		r, err := head(i, &records[i])
		if err != nil {
			failed = append(failed, component.RecordError{Index: i, Err: err})
			continue
		}
		rows = append(rows, r)
	}
	for _, r := range fold(rows) {
		if r.del {
			b.dels = append(b.dels, r)
		} else {
			b.ups = append(b.ups, r)
		}
	}
	if len(b.ups) == 0 && len(b.dels) == 0 && len(b.sets) == 0 && seq == "" && recordRejected == nil {
		return recordErrors(failed)
	}
	b.failed, b.onRejected = failed, recordRejected
	s.mu.Lock()
	cps, cpReady := s.cps, s.cpReady
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout.D())
	defer cancel()
	if seq != "" && !cpReady {
		if err := cps.ensureTable(ctx, pool); err != nil {
			return classify(err)
		}
		s.mu.Lock()
		s.cpReady = true
		s.mu.Unlock()
	}
	for refreshed := false; ; refreshed = true {
		b.rejected = b.rejected[:0]
		m := split
		if s.allNew.Load() {
			m = copyAll
		}
		err = s.transaction(ctx, pool, sch, b, m, cps, pillow, seq)
		if errors.Is(err, errConflict) {
			b.rejected = b.rejected[:0]
			err = s.transaction(ctx, pool, sch, b, split, cps, pillow, seq)
		}
		if errors.Is(err, errSlow) {
			b.rejected = b.rejected[:0]
			err = s.transaction(ctx, pool, sch, b, slow, cps, pillow, seq)
		}
		if err == nil && len(b.rejected) > 0 && !b.checked && !refreshed {
			// Written without a transaction of ours (one COPY): check now.
			var stale bool
			if stale, err = sch.stale(ctx, pool); err == nil && stale {
				err = errStale
			}
		}
		if !errors.Is(err, errStale) || refreshed {
			break
		}
		s.log.Info("the table's column types changed; writing the batch again with them", "table", sch.table.Sanitize())
		s.mu.Lock()
		if s.sch == sch {
			s.sch = nil
		}
		s.mu.Unlock()
		if sch, err = s.schema(ctx); err != nil {
			return err
		}
	}
	if err != nil {
		return s.writeError(err)
	}
	if recordRejected != nil {
		return nil // handed over before the commit
	}
	return recordErrors(append(failed, b.rejected...))
}

// writeError classifies a batch's error; a table or column gone missing
// or changed makes the next write check the table again. (0A000 is "cached
// plan must not change result type", after a table was replaced: pgx
// forgets a statement that failed, and the engine writes the batch again.
// The sink's statements return nothing that depends on the table, so a
// reindex's swap does not cause it; see TestLiveSinkFollowsPromote.)
func (s *Sink) writeError(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "42703" || pe.Code == "42804" || pe.Code == "0A000") {
		s.mu.Lock()
		s.sch = nil
		s.mu.Unlock()
	}
	return classify(err)
}

func recordErrors(errs component.RecordErrors) error {
	if len(errs) == 0 {
		return nil
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Index < errs[j].Index })
	return errs
}

// transaction writes the batch in one transaction. In copyAll and split
// modes it returns errConflict or errSlow (rolled back) when COPY meets an
// existing row or a record Postgres rejects; in slow mode rejected records
// are found by bisection.
func (s *Sink) transaction(ctx context.Context, pool *pgxpool.Pool, sch *schema, b *batch, m mode,
	cps *Checkpoints, pillow, seq string,
) error {
	if m == copyAll && len(b.dels) == 0 && len(b.sets) == 0 && seq == "" && b.onRejected == nil {
		// One COPY is a transaction of its own: no BEGIN and COMMIT
		// round trips.
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer conn.Release()
		return s.copyNew(ctx, conn.Conn().PgConn(), sch, b, b.ups, m)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if len(b.ups) > 0 {
		rest := b.ups // to upsert
		if m != slow {
			news := b.ups
			if m == split {
				old, err := existing(ctx, tx, sch, b.ups)
				if err != nil {
					return err
				}
				news, rest = make([]row, 0, len(b.ups)-len(old)), make([]row, 0, len(old))
				for i, r := range b.ups {
					if old[i] {
						rest = append(rest, r)
					} else {
						news = append(news, r)
					}
				}
				s.allNew.Store(len(old) == 0)
			} else {
				rest = nil
			}
			if err := s.copyNew(ctx, tx.Conn().PgConn(), sch, b, news, m); err != nil {
				return err
			}
		}
		// Values for the upsert's arrays.
		enc := sch.newEncoder()
		ready := make([]row, 0, len(rest))
		for _, r := range rest {
			vals, err := enc.values(&b.records[r.index], nil)
			if err != nil {
				b.reject(r, err)
				continue
			}
			r.vals = vals
			ready = append(ready, r)
		}
		if err := bisect(ctx, tx, ready, func(rs []row) error { return upsert(ctx, tx, sch, rs) }, b.reject); err != nil {
			return err
		}
	}
	if len(b.dels) > 0 {
		if err := bisect(ctx, tx, b.dels, func(rs []row) error { return deleteRows(ctx, tx, sch, rs) }, b.reject); err != nil {
			return err
		}
	}
	if len(b.sets) > 0 {
		if err := replaceDocs(ctx, tx, sch, b.sets); err != nil {
			return err
		}
	}
	if seq != "" {
		if err := cps.save(ctx, tx, pillow, seq); err != nil {
			return err
		}
	}
	if len(b.rejected) > 0 && !b.checked {
		// Rejected under the types the statements were made for: if the
		// table's differ now, they were rejected for nothing.
		b.checked = true
		stale, err := sch.stale(ctx, tx)
		if err != nil {
			return err
		}
		if stale {
			return errStale
		}
	}
	if b.onRejected != nil {
		if rej := append(append(component.RecordErrors(nil), b.failed...), b.rejected...); len(rej) > 0 {
			if err := b.onRejected(recordErrors(rej).(component.RecordErrors)); err != nil {
				return err
			}
		}
	}
	return tx.Commit(ctx)
}

// copyNew sends rows whose keys are not in the table with COPY.
func (s *Sink) copyNew(ctx context.Context, conn *pgconn.PgConn, sch *schema, b *batch, news []row, m mode) error {
	if len(news) == 0 {
		return nil
	}
	// The reader runs on a goroutine of pgconn's, which may outlive a lost
	// connection: it has an encoder of its own.
	cr := &copyReader{rows: news, records: b.records, enc: sch.newEncoder()}
	if _, err := conn.CopyFrom(ctx, cr, sch.copySQL); err != nil {
		var pe *pgconn.PgError
		if m == copyAll && errors.As(err, &pe) && pe.Code == "23505" {
			s.allNew.Store(false)
			return errConflict
		}
		if isRecordError(err) {
			return errSlow
		}
		return err
	}
	b.rejected = append(b.rejected, cr.rejected...)
	return nil
}

// existing returns which rows' keys are in the table.
func existing(ctx context.Context, tx pgx.Tx, sch *schema, ups []row) (map[int]bool, error) {
	keys := make([]string, len(ups))
	for i, r := range ups {
		keys[i] = r.key
	}
	rs, err := tx.Query(ctx, sch.existingSQL, keys)
	if err != nil {
		return nil, err
	}
	old := map[int]bool{}
	for rs.Next() {
		var ord int64
		if err := rs.Scan(&ord); err != nil {
			rs.Close()
			return nil, err
		}
		old[int(ord-1)] = true
	}
	if err := rs.Err(); err != nil {
		if isRecordError(err) { // a key its column's type cannot hold
			return nil, errSlow
		}
		return nil, err
	}
	return old, nil
}

// copyReader streams rows as COPY text lines, encoding their values as
// Postgres asks for more, so that the two work at the same time. A record
// whose values cannot be encoded is rejected and left out.
type copyReader struct {
	rows     []row
	records  []component.Record
	enc      *encoder
	rejected component.RecordErrors
	buf      []byte
	off      int
}

func (c *copyReader) Read(p []byte) (int, error) {
	for c.off >= len(c.buf) {
		if len(c.rows) == 0 {
			return 0, io.EOF
		}
		c.buf, c.off = c.buf[:0], 0
		for len(c.rows) > 0 && len(c.buf) < 32*1024 {
			r := c.rows[0]
			c.rows = c.rows[1:]
			var err error
			c.buf, err = c.enc.appendCopy(c.buf, &c.records[r.index], &r)
			if err != nil {
				c.rejected = append(c.rejected, component.RecordError{Index: r.index, Err: err})
			}
		}
	}
	n := copy(p, c.buf[c.off:])
	c.off += n
	return n, nil
}

// upsert writes rows with INSERT … ON CONFLICT over unnest()ed arrays.
func upsert(ctx context.Context, tx pgx.Tx, sch *schema, rows []row) error {
	ncols := 0
	if len(rows) > 0 {
		ncols = len(rows[0].vals)
	}
	keys := make([]string, len(rows))
	cols := make([][]pgtype.Text, ncols)
	for c := range cols {
		cols[c] = make([]pgtype.Text, len(rows))
	}
	revs := make([]pgtype.Text, len(rows))
	gens := make([]pgtype.Int8, len(rows))
	docs := make([]pgtype.Text, len(rows))
	for i := range rows {
		r := &rows[i]
		keys[i] = r.key
		for c, v := range r.vals {
			cols[c][i] = pgtype.Text{String: v.s, Valid: v.ok}
		}
		revs[i] = pgtype.Text{String: r.rev.s, Valid: r.rev.ok}
		gens[i] = pgtype.Int8{Int64: r.pos, Valid: r.hasP}
		docs[i] = pgtype.Text{String: r.docID.s, Valid: r.docID.ok}
	}
	args := make([]any, 0, ncols+4)
	args = append(args, keys)
	for _, c := range cols {
		args = append(args, c)
	}
	args = append(args, revs, gens, docs)
	_, err := tx.Exec(ctx, sch.upsertSQL, args...)
	return err
}

// deleteRows deletes the rows written from the same or an earlier position.
func deleteRows(ctx context.Context, tx pgx.Tx, sch *schema, rows []row) error {
	keys := make([]string, len(rows))
	gens := make([]pgtype.Int8, len(rows))
	for i, r := range rows {
		keys[i] = r.key
		gens[i] = pgtype.Int8{Int64: r.pos, Valid: r.hasP}
	}
	_, err := tx.Exec(ctx, sch.deleteSQL, keys, gens)
	return err
}

// replaceDocs deletes the rows of the documents of sets whose keys their
// sets do not name, unless of a newer generation than the set's revision:
// it looks the documents' rows up by _doc_id, then deletes the stale ones
// by key, as deletions are (the generation guard included).
func replaceDocs(ctx context.Context, tx pgx.Tx, sch *schema, sets []component.DocSet) error {
	docs := make([]string, 0, len(sets))
	bySet := make(map[string]*component.DocSet, len(sets))
	for i := range sets {
		ds := &sets[i]
		if strings.IndexByte(ds.DocID, 0) >= 0 {
			continue // no row can have it
		}
		docs = append(docs, ds.DocID)
		bySet[ds.DocID] = ds
	}
	rs, err := tx.Query(ctx, sch.docRowsSQL, docs)
	if err != nil {
		return err
	}
	var stale []row
	for rs.Next() {
		var key, doc string
		if err := rs.Scan(&key, &doc); err != nil {
			rs.Close()
			return err
		}
		ds := bySet[doc]
		if ds == nil || slices.Contains(ds.IDs, key) {
			continue
		}
		r := row{key: key, del: true}
		r.pos = component.SeqPosition(ds.Seq)
		r.hasP = r.pos >= 0
		stale = append(stale, r)
	}
	if err := rs.Err(); err != nil {
		return err
	}
	if len(stale) == 0 {
		return nil
	}
	return deleteRows(ctx, tx, sch, stale)
}

// bisect runs op on rows under a savepoint; when Postgres rejects a record
// it rolls back and tries each half, down to single rows, which it hands
// to reject. Other errors end it.
func bisect(ctx context.Context, tx pgx.Tx, rows []row, op func([]row) error, reject func(row, error)) error {
	if len(rows) == 0 {
		return nil
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	err = op(rows)
	if err == nil {
		return sp.Commit(ctx)
	}
	if rbErr := sp.Rollback(ctx); rbErr != nil {
		return rbErr
	}
	if !isRecordError(err) {
		return err
	}
	if len(rows) == 1 {
		reject(rows[0], err)
		return nil
	}
	mid := len(rows) / 2
	if err := bisect(ctx, tx, rows[:mid], op, reject); err != nil {
		return err
	}
	return bisect(ctx, tx, rows[mid:], op, reject)
}

// isRecordError reports whether Postgres rejected a value or a row for
// reasons of its own: a data exception (class 22: a value it cannot
// parse, out of range, too long), an integrity constraint (23: not null,
// check, unique, foreign key) or a limit (54: a value too large to index).
func isRecordError(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || len(pe.Code) != 5 {
		return false
	}
	switch pe.Code[:2] {
	case "22", "23", "54":
		return true
	}
	return false
}

// rejection is the error reported for a rejected record: Postgres's
// message, without the COPY or statement context that names other rows.
func rejection(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		msg := pe.Message
		if pe.Detail != "" {
			msg += " (" + pe.Detail + ")"
		}
		return fmt.Errorf("postgres rejected the record: %s (SQLSTATE %s)", msg, pe.Code)
	}
	return err
}

// classify marks the errors that retrying cannot fix as permanent: bad
// credentials, a database that does not exist, an invalid configuration.
func classify(err error) error {
	if err == nil || component.IsPermanent(err) {
		return err
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "28P01", "28000", "3D000":
			return component.Permanent(err)
		}
	}
	var pce *pgconn.ParseConfigError
	if errors.As(err, &pce) {
		return component.Permanent(errors.New("invalid dsn: " + dsnError(err)))
	}
	return err
}

// GuardsPositions implements component.PositionGuard: rows are kept over
// records of earlier changes.
func (s *Sink) GuardsPositions() bool { return true }

var (
	_ component.Sink              = (*Sink)(nil)
	_ component.TransactionalSink = (*Sink)(nil)
	_ component.PositionGuard     = (*Sink)(nil)
	_ component.DocSetWriter      = (*Sink)(nil)
)
