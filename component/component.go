// Package component is what a source, a sink or a checkpoint store is
// written against: the records and changes that flow through a pillow, the
// interfaces a component implements, its configuration hooks (Duration,
// Check, Validator, Defaulter) and the Register functions its package calls
// from init. The engine, which runs pillows, depends on this package; a
// component needs nothing else from ptop.
//
// builtins/file/example_sink_test.go is a complete, runnable sink.
package component

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Change is one row of a changes feed.
//
// A Change with only Seq set (no ID, no Err) is a position: the feed has
// passed Seq with nothing to process since the last change sent, as when
// the server filtered out the rest (a selector). The engine processes
// nothing for it and checkpoints Seq once what came before is written.
type Change struct {
	// Seq is the feed's sequence id, opaque: an integer ("42", CouchDB 1.x
	// and PouchDB) or a string ("42-g1AAAA…", CouchDB 2+), kept verbatim.
	Seq     string
	ID      string
	Rev     string
	Deleted bool
	// Doc is the decoded document. A source may leave it nil and set RawDoc
	// instead; the engine then decodes it on a worker, off the source's
	// goroutine.
	Doc    map[string]any
	RawDoc []byte
	// Err, when set, says the source could not read this change (a row it
	// could not parse). The change goes to error handling with it; its Seq
	// still counts as processed.
	Err error
}

// IsPosition reports whether c is a position only (see Change).
func (c *Change) IsPosition() bool { return c.ID == "" && c.Err == nil && c.Seq != "" }

// Record is one write to a sink: an index of a record the transform
// returned, or a delete of a record its document no longer produces (the
// document was deleted, filtered out, or its transform returns other ids;
// see the engine's RecordSets).
type Record struct {
	ID     string // the record's _id if the transform set one, else DocID
	DocID  string // the source document's id
	Rev    string // the source document's revision ("3-abc")
	Seq    string // the change's sequence id
	Delete bool
	// Doc is the record's content, nil for deletes. From the engine it
	// is a json.RawMessage holding a JSON object: the document as the
	// feed sent it (no transform; numbers exact), or what the transform
	// returned, encoded as JSON.stringify would (its key order kept).
	// Other producers (tests, tools) may give a map[string]any.
	Doc any
}

// Source reads a changes feed.
type Source interface {
	// Run sends changes after since to out, in feed order, until ctx is
	// done or the feed ends. An empty since means the configured start.
	// It reconnects by itself after network errors, resuming after the last
	// change it sent. It returns nil when the feed has ended (a file was
	// read to its end), ctx.Err() when cancelled, and any other error when
	// it cannot go on (bad credentials, missing database).
	Run(ctx context.Context, since string, out chan<- Change) error
}

// CheckpointStore keeps each pillow's position in its feed. A Source that
// implements it keeps the checkpoints of the pillows that read from it.
type CheckpointStore interface {
	// LoadCheckpoint returns the saved sequence id, or "" if none.
	LoadCheckpoint(ctx context.Context, pillow string) (string, error)
	// SaveCheckpoint stores seq as the pillow's position.
	SaveCheckpoint(ctx context.Context, pillow, seq string) error
}

// Sink writes records somewhere.
type Sink interface {
	// Open connects and checks the destination. It is called once, before
	// the first Write.
	Open(ctx context.Context) error
	// Write stores records, in order. A nil error acknowledges all of them
	// durably. A *RecordErrors acknowledges all but the records it names,
	// which failed for reasons of their own (rejected by the server) and go
	// to error handling. Any other error means nothing is acknowledged: the
	// engine retries the whole batch with backoff.
	Write(ctx context.Context, records []Record) error
	// Close releases connections. Written records are already durable.
	Close() error
}

// TransactionalSink is a sink that can save a pillow's checkpoint in the
// same transaction as a batch's records, when the pillow's checkpoint store
// lives in the same database: after a crash, records and checkpoint are
// then never out of step (exactly-once into that sink).
type TransactionalSink interface {
	Sink
	// SharesStore reports whether cps keeps its checkpoints in this sink's
	// database, where WriteCheckpointed can update them.
	SharesStore(cps CheckpointStore) bool
	// WriteCheckpointed writes records like Write and saves seq as
	// pillow's checkpoint, atomically. records may be empty (a batch whose
	// changes were all filtered out); seq may be empty (no change of the
	// batch had one), and then only the records are written.
	//
	// The records the server rejects are handed to recordRejected before
	// the transaction commits, so that the checkpoint never passes a
	// rejected record whose failure is not recorded; they are then
	// acknowledged (not returned as RecordErrors). If recordRejected fails,
	// nothing is committed and its error is returned: the engine retries
	// the batch. recordRejected may be nil: rejected records are then
	// returned as RecordErrors, after the commit.
	WriteCheckpointed(ctx context.Context, records []Record, pillow, seq string, recordRejected func(RecordErrors) error) error
}

// DocSet is what a batch leaves of one document: the ids of the records
// its last change in the batch produced (none when it was deleted or
// filtered out), with that change's revision and sequence id.
type DocSet struct {
	DocID, Rev, Seq string
	IDs             []string
}

// DocSetWriter is a sink that knows which document each of its records
// came from (the postgres sink's _doc_id column), and so removes by itself
// the records a document no longer produces: the engine keeps no record
// sets for it (see the engine's RecordSets).
type DocSetWriter interface {
	Sink
	// WriteDocSets writes records like Write and, in the same
	// transaction, removes every record of the documents of sets whose id
	// is not in its set (rows written from a later feed position than the
	// set's stay). records may be empty. When seq is set, it also saves
	// seq as pillow's checkpoint, with recordRejected called before the
	// commit, as TransactionalSink.WriteCheckpointed does.
	WriteDocSets(ctx context.Context, records []Record, sets []DocSet, pillow, seq string, recordRejected func(RecordErrors) error) error
}

// Rebuildable is a sink whose destination `ptop reindex` can rebuild beside
// the live one: a new physical index behind an alias, a shadow table.
type Rebuildable interface {
	Sink
	// RebuildTarget returns a sink that writes into the new destination,
	// creating it if missing and reusing it if it exists (a reindex resumes
	// after an interruption), or, when fresh, discarding what exists and
	// creating it anew (a reindex that starts from the beginning). id
	// names that destination's creation (an index's uuid, a table's oid):
	// it changes when the destination is dropped and made again, so that a
	// reindex's checkpoint is only resumed into the destination it was
	// saved for. The sink is opened and closed like any sink.
	RebuildTarget(ctx context.Context, fresh bool) (target Sink, id string, err error)
	// Promote makes the new destination the live one, atomically (an alias
	// flip, tables swapped by rename in one transaction), so that the live
	// pillow's writes go to it from then on; the old destination is
	// dropped unless keepOld. It returns a description of what it did.
	Promote(ctx context.Context, keepOld bool) (string, error)
}

// RecordError is the failure of one record of a batch.
type RecordError struct {
	Index int // in the batch given to Write
	Err   error
}

// RecordErrors lists the records of a batch that a sink rejected.
type RecordErrors []RecordError

func (e RecordErrors) Error() string {
	if len(e) == 1 {
		return fmt.Sprintf("record %d: %v", e[0].Index, e[0].Err)
	}
	return fmt.Sprintf("%d records rejected, first: record %d: %v", len(e), e[0].Index, e[0].Err)
}

// Failure is a change that could not be processed on its own: its row was
// unreadable, its transform threw or ran out of time, or a sink rejected its
// record.
type Failure struct {
	Pillow string
	Hash   string // the pillow definition (Spec.Hash) it failed under
	Change Change
	Stage  string // "source", "decode", "filter", "transform" or "sink:NAME"
	Err    error
	Time   time.Time
}

// ErrorEntry is a failed change as an error store keeps it: one entry per
// pillow and document.
type ErrorEntry struct {
	Pillow, DocID string
	Seq, Rev      string // of the change that failed last
	Hash          string // the pillow definition it failed under last
	Stage, Error  string
	Attempts      int
	FirstFailed   time.Time
	LastFailed    time.Time
	// NextAttempt is when the pillow tries the document again; zero when it
	// has given up (after its max_attempts): only `ptop errors retry`, or a
	// new definition of the pillow, tries it again.
	NextAttempt time.Time
}

// ErrorStore keeps failed changes durably, so that they are retried and can
// be listed; the pillow's checkpoint passes a change once its failure is
// recorded. Entries are keyed by (pillow, document id).
type ErrorStore interface {
	// Record stores f: a new entry with Attempts 1, or one more attempt of
	// the document's entry. NextAttempt is LastFailed+next(Attempts), or
	// zero when next returns 0 or less.
	Record(ctx context.Context, f Failure, next func(attempts int) time.Duration) (ErrorEntry, error)
	// List returns the entries of pillow ("" for every pillow), by
	// pillow and document id.
	List(ctx context.Context, pillow string) ([]ErrorEntry, error)
	// Clear removes an entry, if there is one.
	Clear(ctx context.Context, pillow, docID string) error
	// Retry makes entries due now (all of pillow's when ids is empty),
	// given-up ones included, and returns how many it matched. With pillow
	// "", ids name documents of every pillow.
	Retry(ctx context.Context, pillow string, ids []string) (int, error)
	// Purge removes entries (all of pillow's when ids is empty; with pillow
	// "", those ids of every pillow, or everything) and returns how many.
	Purge(ctx context.Context, pillow string, ids []string) (int, error)
}

// ErrorStoreProvider is implemented by sources that keep the error store
// of the pillows that read from them (the couchdb source keeps it in a
// database next to the source's).
type ErrorStoreProvider interface {
	ErrorStore() (ErrorStore, error)
}

// DocReader is implemented by sources that can read a document's current
// version, which a retry of a failed change processes. A document that is
// deleted or missing comes back as a deletion (with its tombstone's
// revision when known).
type DocReader interface {
	ReadDoc(ctx context.Context, id string) (Change, error)
}

// FeedStatus is implemented by sources that follow a live feed, so that
// health checks can tell a quiet feed from a dead one.
type FeedStatus interface {
	// LastActivity is when the feed last sent anything, a change or a
	// heartbeat; zero before it first does. Connecting is not activity: a
	// feed that connects and then says nothing is not alive.
	LastActivity() time.Time
	// StallAfter is how long a live feed may stay silent.
	StallAfter() time.Duration
}

// FeedErrorer is implemented by sources that follow a live feed and can
// say why it is not connected.
type FeedErrorer interface {
	// FeedError returns when the connection attempts began to fail and
	// the last one's error, or a nil error while the feed is connected and
	// delivering. The error names what to fix ("cannot reach HOST: …").
	FeedError() (since time.Time, err error)
}

// PendingCounter is implemented by sources that can tell how far behind a
// position is.
type PendingCounter interface {
	// Pending returns how many changes follow since (for CouchDB 2+ an
	// estimate from the sequence ids' numeric prefixes).
	Pending(ctx context.Context, since string) (int64, error)
}

// StartResolver is implemented by sources whose configured start is
// relative to the time the pillow starts ("now"). Before a pillow with no
// checkpoint reads anything, the engine asks for the position that start
// means and saves it as the checkpoint, so that changes made while the
// pillow is stopped before its first checkpoint are not skipped.
type StartResolver interface {
	// ResolveStart returns the feed position the configured start means
	// now, or "" when it needs no resolving (an absolute position).
	ResolveStart(ctx context.Context) (string, error)
}

// PositionGuard is implemented by sinks that keep a record only over one
// written from an earlier feed position (see SeqPosition): when the feed
// goes back (its database was recreated or restored), they would refuse
// the new changes, so the engine stops the pillow and asks for a reindex.
type PositionGuard interface {
	GuardsPositions() bool
}

// SeqPosition is a change's position in its feed: the numeric prefix of
// its sequence id ("42" or "42-g1AAAA…" is 42), which grows along one
// feed; -1 when the sequence id has none.
func SeqPosition(seq string) int64 {
	var n int64
	i := 0
	for ; i < len(seq) && seq[i] >= '0' && seq[i] <= '9'; i++ {
		if n > (1<<62)/10 {
			return -1
		}
		n = n*10 + int64(seq[i]-'0')
	}
	if i == 0 {
		return -1
	}
	return n
}

// CheckpointTimer is implemented by checkpoint stores that know when a
// checkpoint was saved.
type CheckpointTimer interface {
	CheckpointTime(ctx context.Context, pillow string) (time.Time, error)
}

// LogErrorStore only logs failures, at error level: for sources that keep
// no error store (the file source). Its logger is expected to name the
// pillow. Nothing is retried.
type LogErrorStore struct{ Log *slog.Logger }

// Record logs f.
func (s LogErrorStore) Record(_ context.Context, f Failure, _ func(int) time.Duration) (ErrorEntry, error) {
	s.Log.Error("change failed", ClipAttr("id", f.Change.ID), "seq", f.Change.Seq, "stage", f.Stage, slog.String("error", ClipWords(f.Err.Error())))
	return ErrorEntry{Pillow: f.Pillow, DocID: f.Change.ID, Attempts: 1, Error: f.Err.Error()}, nil
}

// List returns nothing: a log keeps no entries.
func (LogErrorStore) List(context.Context, string) ([]ErrorEntry, error) { return nil, nil }

// Clear does nothing.
func (LogErrorStore) Clear(context.Context, string, string) error { return nil }

// Retry does nothing.
func (LogErrorStore) Retry(context.Context, string, []string) (int, error) { return 0, nil }

// Purge does nothing.
func (LogErrorStore) Purge(context.Context, string, []string) (int, error) { return 0, nil }

// BuildContext is what a source or sink constructor knows of its pillow.
// Constructors must not touch the network; that is Open's and Run's job.
type BuildContext struct {
	Pillow string       // the pillow's name
	File   string       // the pillow file's path
	Dir    string       // its directory, for relative paths
	Log    *slog.Logger // tagged with the pillow's name
	// AddToHash adds the content of a file the definition depends on (a
	// mapping file) to the pillow's hash, so that a reload notices its
	// change.
	AddToHash func(data []byte)
}

// Permanent marks an error that retrying cannot fix, such as bad
// credentials or a missing database: the engine stops the pillow with it
// instead of retrying.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}
