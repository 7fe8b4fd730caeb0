package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/dimagi/ptop/component"
	"github.com/jackc/pgx/v5"
)

// Leases (component.LeaseStore) are rows of the table "<checkpoint table>_lease",
// created on first use beside the checkpoint table:
//
//	(name text primary key, holder text, ttl_ms bigint, renewed timestamptz,
//	 space text, version bigint)
//
// A write is an UPDATE … WHERE version = the version read (or an INSERT
// that conflicts with nothing, for the first): the compare-and-swap.

func (c *Checkpoints) leaseTable() pgx.Identifier {
	t := append(pgx.Identifier(nil), c.table...)
	t[len(t)-1] += "_lease"
	return t
}

// ensureLeaseTable creates the lease table if it is missing.
func (c *Checkpoints) ensureLeaseTable(ctx context.Context) (querier, error) {
	pool, err := c.getPool(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	ready := c.leaseReady
	c.mu.Unlock()
	if ready {
		return pool, nil
	}
	t := c.leaseTable()
	stmt := fmt.Sprintf("SELECT pg_advisory_xact_lock(%d); ", lockKey(t)) +
		"CREATE TABLE IF NOT EXISTS " + t.Sanitize() +
		" (name text PRIMARY KEY, holder text NOT NULL, ttl_ms bigint NOT NULL, renewed timestamptz NOT NULL," +
		" space text NOT NULL DEFAULT '', version bigint NOT NULL)"
	if len(t) == 2 {
		stmt = "CREATE SCHEMA IF NOT EXISTS " + pgx.Identifier{t[0]}.Sanitize() + "; " + stmt
	}
	if _, err := pool.Exec(ctx, stmt); err != nil {
		return nil, classify(fmt.Errorf("creating lease table %s: %w", t.Sanitize(), err))
	}
	c.mu.Lock()
	c.leaseReady = true
	c.mu.Unlock()
	return pool, nil
}

// ReadLease implements component.LeaseStore.
func (c *Checkpoints) ReadLease(ctx context.Context, name string) (component.Lease, error) {
	q, err := c.ensureLeaseTable(ctx)
	if err != nil {
		return component.Lease{}, err
	}
	var l component.Lease
	var ttl, version int64
	err = q.QueryRow(ctx, "SELECT holder, ttl_ms, renewed, space, version FROM "+c.leaseTable().Sanitize()+" WHERE name = $1", name).
		Scan(&l.Holder, &ttl, &l.Renewed, &l.Space, &version)
	if errors.Is(err, pgx.ErrNoRows) {
		return component.Lease{}, nil
	}
	if err != nil {
		return component.Lease{}, classify(fmt.Errorf("reading lease %s: %w", name, err))
	}
	l.TTL = time.Duration(ttl) * time.Millisecond
	l.Version = strconv.FormatInt(version, 10)
	return l, nil
}

// WriteLease implements component.LeaseStore.
func (c *Checkpoints) WriteLease(ctx context.Context, name, prev string, l component.Lease) (string, error) {
	q, err := c.ensureLeaseTable(ctx)
	if err != nil {
		return "", err
	}
	t := c.leaseTable().Sanitize()
	var version int64
	if prev == "" {
		err = q.QueryRow(ctx, "INSERT INTO "+t+" (name, holder, ttl_ms, renewed, space, version) VALUES ($1, $2, $3, $4, $5, 1)"+
			" ON CONFLICT (name) DO NOTHING RETURNING version", name, l.Holder, l.TTL.Milliseconds(), l.Renewed, l.Space).Scan(&version)
	} else {
		prevN, perr := strconv.ParseInt(prev, 10, 64)
		if perr != nil {
			return "", fmt.Errorf("lease %s: %w (version %q)", name, component.ErrLeaseConflict, prev)
		}
		err = q.QueryRow(ctx, "UPDATE "+t+" SET holder = $2, ttl_ms = $3, renewed = $4, space = $5, version = version + 1"+
			" WHERE name = $1 AND version = $6 RETURNING version", name, l.Holder, l.TTL.Milliseconds(), l.Renewed, l.Space, prevN).Scan(&version)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("lease %s: %w", name, component.ErrLeaseConflict)
	}
	if err != nil {
		return "", classify(fmt.Errorf("writing lease %s: %w", name, err))
	}
	return strconv.FormatInt(version, 10), nil
}

var _ component.LeaseStore = (*Checkpoints)(nil)
