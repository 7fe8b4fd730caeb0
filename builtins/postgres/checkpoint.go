package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dimagi/ptop/component"
)

// Checkpoints keeps pillows' checkpoints in a table, one row per pillow:
// (pillow text primary key, seq text, updated_at timestamptz). Beside it,
// in TABLE_records, it keeps the record sets of the pillows
// (component.RecordSets): (pillow text, doc_id text, ids text[], primary key
// (pillow, doc_id)).
type Checkpoints struct {
	poolCfg *pgxpool.Config
	conn    string // server, database and user, as the sinks compare them
	table   pgx.Identifier
	sets    pgx.Identifier // TABLE_records

	mu         sync.Mutex
	pool       *pgxpool.Pool
	ready      bool // the table exists
	leaseReady bool // the lease table exists
	setsReady  bool // TABLE_records exists
}

// NewCheckpoints makes a checkpoint store from its configuration. It makes
// no network call: the table is created, when missing, on first use.
func NewCheckpoints(cfg *CheckpointConfig, _ component.BuildContext) (component.CheckpointStore, error) {
	poolCfg, conn, err := poolConfig(cfg.DSN, 1)
	if err != nil {
		return nil, err
	}
	tbl := cfg.Table
	if tbl == "" {
		tbl = DefaultCheckpointTable
	}
	table, err := parseTable(tbl, maxIdentifier)
	if err != nil {
		return nil, err
	}
	sets := append(pgx.Identifier(nil), table...)
	sets[len(sets)-1] += "_records"
	return &Checkpoints{poolCfg: poolCfg, conn: conn, table: pgx.Identifier(table), sets: sets}, nil
}

func (c *Checkpoints) getPool(ctx context.Context) (*pgxpool.Pool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pool == nil {
		p, err := pgxpool.NewWithConfig(ctx, c.poolCfg)
		if err != nil {
			return nil, classify(err)
		}
		c.pool = p
	}
	return c.pool, nil
}

// ensureTable creates the table if it is missing.
func (c *Checkpoints) ensureTable(ctx context.Context, q querier) error {
	c.mu.Lock()
	ready := c.ready
	c.mu.Unlock()
	if ready {
		return nil
	}
	stmt := "CREATE TABLE IF NOT EXISTS " + c.table.Sanitize() +
		" (pillow text PRIMARY KEY, seq text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
	if len(c.table) == 2 {
		stmt = "CREATE SCHEMA IF NOT EXISTS " + pgx.Identifier{c.table[0]}.Sanitize() + "; " + stmt
	}
	// Creating the same table at once from two connections can fail on a
	// catalog unique index; the lock makes the second wait and see it. The
	// statements run as one implicit transaction, which releases it.
	stmt = fmt.Sprintf("SELECT pg_advisory_xact_lock(%d); ", lockKey(c.table)) + stmt
	// Several statements in one Exec: the simple protocol, no arguments.
	if _, err := q.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("creating checkpoint table %s: %w", c.table.Sanitize(), err)
	}
	c.mu.Lock()
	c.ready = true
	c.mu.Unlock()
	return nil
}

// LoadCheckpoint implements component.CheckpointStore.
func (c *Checkpoints) LoadCheckpoint(ctx context.Context, pillow string) (string, error) {
	pool, err := c.getPool(ctx)
	if err != nil {
		return "", err
	}
	if err := c.ensureTable(ctx, pool); err != nil {
		return "", classify(err)
	}
	var seq string
	err = pool.QueryRow(ctx, "SELECT seq FROM "+c.table.Sanitize()+" WHERE pillow = $1", pillow).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", classify(err)
	}
	return seq, nil
}

// SaveCheckpoint implements component.CheckpointStore.
func (c *Checkpoints) SaveCheckpoint(ctx context.Context, pillow, seq string) error {
	pool, err := c.getPool(ctx)
	if err != nil {
		return err
	}
	if err := c.ensureTable(ctx, pool); err != nil {
		return classify(err)
	}
	return classify(c.save(ctx, pool, pillow, seq))
}

// save upserts pillow's row, in q's transaction when q is one.
func (c *Checkpoints) save(ctx context.Context, q querier, pillow, seq string) error {
	_, err := q.Exec(ctx, "INSERT INTO "+c.table.Sanitize()+" AS c (pillow, seq, updated_at) VALUES ($1, $2, now())"+
		" ON CONFLICT (pillow) DO UPDATE SET seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at", pillow, seq)
	return err
}

// ensureSets creates TABLE_records if it is missing.
func (c *Checkpoints) ensureSets(ctx context.Context, q querier) error {
	c.mu.Lock()
	ready := c.setsReady
	c.mu.Unlock()
	if ready {
		return nil
	}
	stmt := fmt.Sprintf("SELECT pg_advisory_xact_lock(%d); ", lockKey(c.sets))
	if len(c.sets) == 2 {
		stmt += "CREATE SCHEMA IF NOT EXISTS " + pgx.Identifier{c.sets[0]}.Sanitize() + "; "
	}
	stmt += "CREATE TABLE IF NOT EXISTS " + c.sets.Sanitize() +
		" (pillow text NOT NULL, doc_id text NOT NULL, ids text[] NOT NULL, PRIMARY KEY (pillow, doc_id))"
	if _, err := q.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("creating record sets table %s: %w", c.sets.Sanitize(), err)
	}
	c.mu.Lock()
	c.setsReady = true
	c.mu.Unlock()
	return nil
}

// LoadRecordSets implements component.RecordSets.
func (c *Checkpoints) LoadRecordSets(ctx context.Context, pillow string, docIDs []string) ([]component.RecordSet, error) {
	pool, err := c.getPool(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.ensureSets(ctx, pool); err != nil {
		return nil, classify(err)
	}
	docIDs = slices.DeleteFunc(slices.Clone(docIDs), hasNUL)
	rows, err := pool.Query(ctx, "SELECT doc_id, ids FROM "+c.sets.Sanitize()+" WHERE pillow = $1 AND doc_id = ANY($2::text[])", pillow, docIDs)
	if err != nil {
		return nil, classify(err)
	}
	var out []component.RecordSet
	for rows.Next() {
		var rs component.RecordSet
		if err := rows.Scan(&rs.DocID, &rs.IDs); err != nil {
			rows.Close()
			return nil, classify(err)
		}
		out = append(out, rs)
	}
	return out, classify(rows.Err())
}

// SaveRecordSets implements component.RecordSets, in one transaction.
func (c *Checkpoints) SaveRecordSets(ctx context.Context, pillow string, sets []component.RecordSet) ([]component.RecordSet, error) {
	pool, err := c.getPool(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.ensureSets(ctx, pool); err != nil {
		return nil, classify(err)
	}
	var upDocs, upIDs, gone []string
	for _, rs := range sets {
		if hasNUL(rs.DocID) || slices.ContainsFunc(rs.IDs, hasNUL) {
			continue // Postgres text cannot hold it; nor could a sink's row
		}
		if len(rs.IDs) == 0 {
			gone = append(gone, rs.DocID)
			continue
		}
		// ids travel as one JSON array per document: unnest cannot take
		// an array of arrays of different lengths.
		b, err := json.Marshal(rs.IDs)
		if err != nil {
			return nil, err
		}
		upDocs = append(upDocs, rs.DocID)
		upIDs = append(upIDs, string(b))
	}
	tbl := c.sets.Sanitize()
	b := &pgx.Batch{}
	if len(upDocs) > 0 {
		b.Queue("INSERT INTO "+tbl+" (pillow, doc_id, ids) SELECT $1, u.d, ARRAY(SELECT jsonb_array_elements_text(u.i::jsonb))"+
			" FROM unnest($2::text[], $3::text[]) AS u(d, i) ON CONFLICT (pillow, doc_id) DO UPDATE SET ids = EXCLUDED.ids",
			pillow, upDocs, upIDs)
	}
	if len(gone) > 0 {
		b.Queue("DELETE FROM "+tbl+" WHERE pillow = $1 AND doc_id = ANY($2::text[])", pillow, gone)
	}
	if b.Len() == 0 {
		return sets, nil
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return tx.SendBatch(ctx, b).Close() })
	if err != nil {
		return nil, classify(err)
	}
	return sets, nil
}

func hasNUL(s string) bool { return strings.IndexByte(s, 0) >= 0 }

// Close closes the store's connections.
func (c *Checkpoints) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pool != nil {
		c.pool.Close()
		c.pool = nil
	}
	return nil
}

var (
	_ component.CheckpointStore = (*Checkpoints)(nil)
	_ component.RecordSets      = (*Checkpoints)(nil)
)
