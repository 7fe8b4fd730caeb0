package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dimagi/ptop/engine"
)

// Checkpoints keeps pillows' checkpoints in a table, one row per pillow:
// (pillow text primary key, seq text, updated_at timestamptz).
type Checkpoints struct {
	poolCfg *pgxpool.Config
	conn    string // server, database and user, as the sinks compare them
	table   pgx.Identifier

	mu         sync.Mutex
	pool       *pgxpool.Pool
	ready      bool // the table exists
	leaseReady bool // the lease table exists
}

// NewCheckpoints makes a checkpoint store from its configuration. It makes
// no network call: the table is created, when missing, on first use.
func NewCheckpoints(cfg *CheckpointConfig, _ engine.BuildContext) (engine.CheckpointStore, error) {
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
	return &Checkpoints{poolCfg: poolCfg, conn: conn, table: pgx.Identifier(table)}, nil
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

// LoadCheckpoint implements engine.CheckpointStore.
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

// SaveCheckpoint implements engine.CheckpointStore.
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

var _ engine.CheckpointStore = (*Checkpoints)(nil)
