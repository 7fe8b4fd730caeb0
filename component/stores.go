package component

import (
	"context"
	"errors"
	"time"
)

// What a checkpoint store may keep besides checkpoints: the leases that let
// one process run a pillow at a time, and the record sets that let records
// follow their document. The engine decides; a store only reads and writes.

// LeaseStore is implemented by checkpoint stores that can keep leases
// beside the checkpoints.
type LeaseStore interface {
	// ReadLease returns the lease called name; a zero Lease (Version "")
	// when it has never been written.
	ReadLease(ctx context.Context, name string) (Lease, error)
	// WriteLease replaces the lease called name with l if its version is
	// still prev ("": never written), and returns the new version. When
	// another process wrote it since, it returns an error that wraps
	// ErrLeaseConflict.
	WriteLease(ctx context.Context, name, prev string, l Lease) (version string, err error)
}

// Lease is the state of a lease.
type Lease struct {
	Holder  string        // the process that holds it; "" when released
	TTL     time.Duration // how long the holder may go without renewing
	Renewed time.Time     // when the holder last renewed, by its clock
	// Space identifies the holder's host and PID namespace, so that a
	// standby beside it can tell that it died.
	Space   string
	Version string // set by the store; changes with every write
}

// ErrLeaseConflict is wrapped by LeaseStore.WriteLease when another
// process changed the lease first.
var ErrLeaseConflict = errors.New("the lease was changed by another process")

// RecordSet is the ids of the records a document was last written with.
type RecordSet struct {
	DocID string
	IDs   []string
	// Version is the store's own mark of the entry read (a CouchDB
	// revision), handed back by Save; empty for a new entry.
	Version string
}

// RecordSets keeps the record sets of pillows' documents. A checkpoint
// store (or a source keeping checkpoints) that implements it keeps them
// beside the checkpoints of the same pillows.
type RecordSets interface {
	// LoadRecordSets returns the entries of the given documents of pillow;
	// documents without one are left out.
	LoadRecordSets(ctx context.Context, pillow string, docIDs []string) ([]RecordSet, error)
	// SaveRecordSets writes entries of pillow, each with the Version it
	// was read with; a set without IDs removes the document's entry. It
	// returns the entries as saved, with their new versions.
	SaveRecordSets(ctx context.Context, pillow string, sets []RecordSet) ([]RecordSet, error)
}
