package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/dimagi/ptop/component"
	json "github.com/goccy/go-json"
)

// RunOptions are the process-wide settings of a running pillow.
type RunOptions struct {
	Log *slog.Logger
	// Errors overrides where failed changes go; by default the source keeps
	// them when it implements ErrorStoreProvider, else they are logged.
	Errors ErrorStore
	// Checkpoints overrides where the position is kept; by default the
	// source keeps it when it implements CheckpointStore, else nowhere.
	Checkpoints CheckpointStore
	// Metrics counts what the pillows do; nil counts into metrics that are
	// registered nowhere.
	Metrics *Metrics
	// CheckpointName is the name the checkpoint is kept under; default the
	// pillow's name. (A reindex keeps its own position beside the live
	// pillow's, while its failures go to the live pillow's error store.)
	CheckpointName string
	// Since is where to start when there is no checkpoint; default the
	// source's configured start.
	Since string
	// NoRetries leaves the error store's entries to another run of the
	// pillow: failures are recorded, but none is retried.
	NoRetries bool
	// RecordSets overrides where the record ids of each document are kept
	// (see RecordSets); by default in the checkpoint store when it keeps
	// them, else in memory.
	RecordSets RecordSets
	// DrainTimeout bounds the flush after ctx is cancelled: what is not
	// written by then is not checkpointed either, and is read again on the
	// next start. Default 10s.
	DrainTimeout time.Duration
	// LeaseTTL, when positive, makes a pillow run only while this process
	// holds its lease (see LeaseStore), when its checkpoint store keeps
	// leases: another process running the pillow waits as a standby.
	LeaseTTL time.Duration
	// Holder names this process in leases; default NewHolder().
	Holder string
	// LagWindow is how long the pending changes may keep growing before the
	// pillow is unhealthy ("falling behind"); default 3m, negative: never.
	LagWindow time.Duration
}

// Stats are a running pillow's counters.
type Stats struct {
	Seen, Filtered, Written, Failed, Batches atomic.Int64
	Checkpoint                               atomic.Value // string
}

// Pillow is a pillow being run.
type Pillow struct {
	Spec  *Spec
	Stats Stats
	opts  RunOptions
	log   *slog.Logger
	cps   CheckpointStore
	// txSink names the sink that saves the checkpoint in its own
	// transaction, if any: it is written last, with the checkpoint.
	txSink string
	errs   ErrorStore
	sets   RecordSets // where documents' record ids are kept; nil when no sink needs them
	// docSetWriters: some sink is a DocSetWriter, which each batch gives
	// the record ids its documents now have.
	docSetWriters bool
	// multi: the pillow has written record sets (see recordsets.go); writer only
	multi  bool
	reader DocReader // re-reads documents for retries; nil: no retries
	// failed holds the ids of documents with an entry in the error store,
	// so that a later success clears it. Only the write stage uses it.
	failed map[string]bool
	// down holds, by what failed ("sink NAME", "error store", "opening
	// sink NAME", …), the error of a step the pillow is retrying: the
	// pillow is unhealthy until it succeeds.
	down sync.Map
	// retrying holds the ids of documents the retrier has sent and whose
	// batch is not yet written: they are not sent again meanwhile, so an
	// entry never gets more than max_attempts attempts.
	retrying sync.Map
	// lease, when set, is the lease the pillow runs under: once it is lost
	// (or about to expire unrenewed), writes and checkpoints stop at once,
	// without a drain.
	lease *leaseKeeper
	// errCount is the size of the pillow's error store, as last known.
	errCount atomic.Int64
	// startTime, readTime (when the source started, 0 while it does not
	// run) and checkpointTime are Unix nanoseconds.
	startTime, readTime, checkpointTime atomic.Int64
	lastSeqNum                          int64 // numeric prefix of the last seq seen, for rewinds; batcher only
	taps                                taps  // see Pillow.Tap
}

func (p *Pillow) started() time.Time      { return unixNano(p.startTime.Load()) }
func (p *Pillow) reading() time.Time      { return unixNano(p.readTime.Load()) }
func (p *Pillow) checkpointed() time.Time { return unixNano(p.checkpointTime.Load()) }

func unixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Health reports whether the pillow's sinks are taking its batches, and if
// not, why.
func (p *Pillow) Health() (ok bool, reasons []string) {
	p.down.Range(func(k, v any) bool {
		reasons = append(reasons, fmt.Sprintf("%s: %v", k, v))
		return true
	})
	sort.Strings(reasons)
	return len(reasons) == 0, reasons
}

// tracked is retry that keeps the pillow unhealthy, with label and the
// last error as the reason, from the first failure until f succeeds.
func (p *Pillow) tracked(ctx context.Context, log *slog.Logger, label, what string, f func() error) error {
	err := retry(ctx, log, what, func() error {
		err := f()
		if err != nil && !IsPermanent(err) {
			p.down.Store(label, err)
		}
		return err
	})
	p.down.Delete(label)
	return err
}

// NewPillow prepares spec to run.
func NewPillow(spec *Spec, opts RunOptions) *Pillow {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 10 * time.Second
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	if opts.CheckpointName == "" {
		opts.CheckpointName = spec.Name
	}
	log := opts.Log.With("pillow", spec.Name)
	p := &Pillow{Spec: spec, opts: opts, log: log, cps: opts.Checkpoints, errs: opts.Errors}
	if p.errs == nil {
		if esp, ok := spec.source.(ErrorStoreProvider); ok {
			es, err := esp.ErrorStore()
			if err != nil {
				log.Error("no error store; failed changes are only logged", "error", err)
			} else {
				p.errs = es
			}
		}
	}
	if p.errs == nil {
		p.errs = LogErrorStore{Log: log}
	}
	if !opts.NoRetries {
		p.reader, _ = spec.source.(DocReader)
	}
	if p.cps == nil {
		p.cps = spec.cps
	}
	p.sets = opts.RecordSets
	needSets := false
	for _, o := range spec.outputs {
		if _, ok := o.Sink.(DocSetWriter); ok {
			p.docSetWriters = true
		} else {
			needSets = true
		}
	}
	if p.sets == nil && needSets {
		if rs, ok := p.cps.(RecordSets); ok {
			p.sets = rs
		} else {
			if p.cps != nil {
				log.Warn("the checkpoint store keeps no record sets: they are kept in memory, and records a document stops producing before a restart stay in the sinks")
			}
			p.sets = &MemRecordSets{}
		}
	}
	if p.cps != nil {
		for _, o := range spec.outputs {
			if ts, ok := o.Sink.(TransactionalSink); ok && ts.SharesStore(p.cps) {
				p.txSink = o.Name
				break
			}
		}
	}
	return p
}

// batch is a run of consecutive changes on its way through the pillow.
type batch struct {
	changes  []Change
	records  []Record
	touches  []touch // what each change left of its document, in order
	sets     *docSets
	docSets  []DocSet // for DocSetWriters: each document's last touch
	failures []Failure
	lastSeq  string
	filtered int
	retry    bool // documents read again to retry their failures: no checkpoint
	// rewind, when set, ends the pillow: the feed went back, and a sink
	// keeps records by feed position (see checkRewind).
	rewind error
}

// Run reads the pillow's feed from its checkpoint and writes what it makes
// into its sinks until ctx is cancelled or the feed ends. After ctx is
// cancelled it stops reading, flushes what it has read, checkpoints and
// returns nil. A batch is checkpointed only once every sink has
// acknowledged it and its failures are recorded.
//
// The stages, each a goroutine: the source reads changes; the batcher
// (with the retrier's due retries) cuts them into batches; the processor
// runs filter and transform on the workers; the writer (Run itself)
// writes each batch to the sinks in order; the checkpoint saver saves the
// latest position in the background.
func (p *Pillow) Run(ctx context.Context) error {
	s := p.Spec
	// work outlives ctx by the drain timeout, so that a stop can flush.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopDrain := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(p.opts.DrainTimeout, cancelWork)
		context.AfterFunc(work, func() { t.Stop() })
	})
	defer stopDrain()
	if p.lease != nil {
		defer context.AfterFunc(p.lease.lost, cancelWork)()
	}

	p.startTime.Store(time.Now().UnixNano())
	p.checkpointTime.Store(0)
	p.down.Clear()
	since, err := p.startPosition(ctx)
	if err != nil {
		return err
	}
	if err := p.openSinks(ctx); err != nil {
		return err
	}
	defer p.closeSinks()
	// A checkpoint store of its own (not the source) holds connections.
	if c, ok := p.cps.(io.Closer); ok && any(p.cps) != any(s.source) {
		defer func() { _ = c.Close() }()
	}
	p.log.Info("pillow started", "since", since, "sinks", len(s.outputs))

	workers, err := p.newWorkers()
	if err != nil {
		return err
	}
	if err := p.loadFailed(ctx); err != nil {
		return startErr(s.Name, "reading the error store", err)
	}
	if err := p.loadMarker(ctx); err != nil {
		return startErr(s.Name, "reading the record sets", err)
	}
	// read stops the source and the retrier: when ctx is done, or when a
	// sink fails for good.
	read, stopReading := context.WithCancel(ctx)
	defer stopReading()
	processed, sourceErr := p.startReading(read, since, workers)
	saves, saved := p.startCheckpointSaver(work)
	writeErr, rewound := p.writeAll(work, processed, saves, stopReading)
	close(saves)
	<-saved
	if rewound && p.cps != nil {
		// Saved again, into the recreated database when it holds the
		// checkpoints: the next start goes back again and stops again,
		// until a reindex moves the checkpoint to the new feed.
		if cp, _ := p.Stats.Checkpoint.Load().(string); cp != "" {
			if err := p.cps.SaveCheckpoint(work, p.opts.CheckpointName, cp); err != nil {
				p.log.Warn("checkpoint not saved again after the feed went back", "seq", cp, "error", err)
			}
		}
	}
	if writeErr != nil {
		if errors.Is(writeErr, ErrLeaseLost) {
			p.log.Warn("stopped writing: the lease is lost; what was read is read again by the new holder", "error", writeErr)
			return writeErr
		}
		if IsPermanent(writeErr) {
			return fmt.Errorf("pillow %s: %w", s.Name, writeErr)
		}
		p.log.Warn("stopped before everything read was written; it is read again on the next start", "error", writeErr)
		return nil
	}
	if err := sourceErr(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("pillow %s: source: %w", s.Name, err)
	}
	p.log.Info("pillow stopped", "checkpoint", p.Stats.Checkpoint.Load())
	return nil
}

// startPosition loads the checkpoint and returns where the feed is read
// from: after the checkpoint, else the start resolved and saved now (a
// "now" is fixed before anything is read), else the configured start.
func (p *Pillow) startPosition(ctx context.Context) (string, error) {
	s := p.Spec
	p.lastSeqNum = -1
	since := ""
	if p.cps != nil {
		var err error
		err = p.tracked(ctx, p.log, "loading the checkpoint", "load checkpoint", func() error {
			since, err = p.cps.LoadCheckpoint(ctx, p.opts.CheckpointName)
			return err
		})
		if err != nil {
			return "", startErr(s.Name, "loading the checkpoint", err)
		}
		p.Stats.Checkpoint.Store(since)
	}
	p.lastSeqNum = seqNumber(since)
	if since == "" && p.opts.Since == "" && p.cps != nil {
		// A start relative to now ("now") is fixed and saved before
		// anything is read: should the pillow stop before its first
		// checkpoint, it resumes from there rather than from a later now.
		if sr, ok := s.source.(StartResolver); ok {
			var at string
			err := retry(ctx, p.log, "resolve the start position", func() error {
				var err error
				if at, err = sr.ResolveStart(ctx); err != nil || at == "" {
					return err
				}
				return p.cps.SaveCheckpoint(ctx, p.opts.CheckpointName, at)
			})
			if err != nil {
				return "", startErr(s.Name, "resolving the start position", err)
			}
			if at != "" {
				p.log.Info("start position resolved and saved", "since", at)
				since = at
				p.Stats.Checkpoint.Store(since)
			}
		}
	}
	if since == "" {
		since = p.opts.Since
	}
	return since, nil
}

// openSinks opens every sink, retrying each until it opens; the pillow is
// unhealthy meanwhile. On failure the sinks already open are closed.
func (p *Pillow) openSinks(ctx context.Context) error {
	for _, o := range p.Spec.outputs {
		// An Open that neither succeeds nor fails (a peer that never
		// answers) makes the pillow unhealthy too.
		var mu sync.Mutex
		opened := false
		slow := time.AfterFunc(slowOpen, func() {
			mu.Lock()
			defer mu.Unlock()
			if !opened {
				p.down.LoadOrStore("sink "+o.Name, errNotOpen)
			}
		})
		err := p.tracked(ctx, p.log.With("sink", o.Name), "sink "+o.Name, "open sink", func() error {
			err := o.Sink.Open(ctx)
			if err != nil {
				err = fmt.Errorf("not open: %w", err)
			}
			return err
		})
		slow.Stop()
		mu.Lock()
		opened = true
		p.down.Delete("sink " + o.Name)
		mu.Unlock()
		if err != nil {
			p.closeSinks()
			return startErr(p.Spec.Name, "opening sink "+o.Name, err)
		}
	}
	return nil
}

// startReading starts the source, the retrier, the batcher and the
// processor, and returns the processed batches in feed order; the channel
// closes once the source has stopped (read done, or the feed ended) and
// everything read is processed. sourceErr then tells why the source
// stopped.
func (p *Pillow) startReading(read context.Context, since string, workers []*worker) (processed <-chan *batch, sourceErr func() error) {
	s := p.Spec
	changes := make(chan Change, s.Batch.Size)
	var srcErr error
	p.readTime.Store(time.Now().UnixNano())
	go func() {
		defer close(changes)
		defer p.readTime.Store(0)
		srcErr = s.source.Run(read, since, changes)
	}()
	retries := make(chan []Change)
	if p.reader != nil {
		go p.retrier(read, retries)
	}
	batches := make(chan *batch, 1)
	go p.batcher(changes, retries, batches)
	out := make(chan *batch, 1)
	go func() {
		defer close(out)
		for b := range batches {
			p.process(workers, b)
			out <- b
		}
	}()
	// srcErr is written before changes is closed, which closes batches
	// and then out: reading it once out is drained is ordered after.
	return out, func() error { return srcErr }
}

// startCheckpointSaver saves checkpoints in the background, the latest one
// replacing any not yet saved: a save (a round trip to the source's
// server) does not hold up the next batch's write. Close saves and wait
// for saved to stop it.
func (p *Pillow) startCheckpointSaver(work context.Context) (saves chan string, saved <-chan struct{}) {
	saves = make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for seq := range saves {
			if err := p.lease.check(); err != nil {
				continue
			}
			if err := p.cps.SaveCheckpoint(work, p.opts.CheckpointName, seq); err != nil {
				p.log.Warn("checkpoint not saved; the next one will cover it", "seq", seq, "error", err)
				continue
			}
			p.Stats.Checkpoint.Store(seq)
			p.checkpointTime.Store(time.Now().UnixNano())
		}
	}()
	return saves, done
}

// writeAll writes the processed batches in order and hands each written
// batch's position to the checkpoint saver. After a write fails (for good,
// or because work ended) it stops reading and drains the pipeline without
// writing or checkpointing anything more. rewound says the feed went back
// under a position-guarded sink.
func (p *Pillow) writeAll(work context.Context, processed <-chan *batch, saves chan string, stopReading func()) (writeErr error, rewound bool) {
	for b := range processed {
		if writeErr != nil {
			continue // drain the pipeline; nothing more is checkpointed
		}
		if b.rewind != nil {
			rewound = true
			writeErr = Permanent(b.rewind)
			stopReading()
			continue
		}
		if writeErr = p.write(work, b); writeErr != nil {
			stopReading()
			continue
		}
		if p.taps.active.Load() {
			p.taps.send(b)
		}
		if b.retry {
			for _, c := range b.changes {
				p.retrying.Delete(c.ID)
			}
			continue
		}
		if b.lastSeq == "" || p.cps == nil {
			continue
		}
		if p.txSink != "" { // saved with the batch
			p.Stats.Checkpoint.Store(b.lastSeq)
			p.checkpointTime.Store(time.Now().UnixNano())
			continue
		}
		select {
		case saves <- b.lastSeq:
		default:
			select {
			case <-saves: // a newer position replaces one not saved yet
			default:
			}
			saves <- b.lastSeq
		}
	}
	return writeErr, rewound
}

// errNotOpen is a sink's health when its first Open has not returned
// after slowOpen.
var errNotOpen = errors.New("not open yet")

const slowOpen = time.Second

// startErr is what Run returns when it could not start: nil when it was
// stopped meanwhile, the error when it is permanent.
func startErr(pillow, what string, err error) error {
	if IsPermanent(err) {
		return fmt.Errorf("pillow %s: %s: %w", pillow, what, err)
	}
	return nil
}

func (p *Pillow) closeSinks() {
	for _, o := range p.Spec.outputs {
		if err := o.Sink.Close(); err != nil {
			p.log.Warn("closing sink", "sink", o.Name, "error", err)
		}
	}
}

// batcher groups changes into batches of Batch.Size, sending a smaller one
// when Batch.Wait has passed since its first change.
func (p *Pillow) batcher(in <-chan Change, retries <-chan []Change, out chan<- *batch) {
	defer close(out)
	size, wait := p.Spec.Batch.Size, p.Spec.Batch.Wait.D()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var cur *batch
	rewound := false // the pillow ends: what follows is not processed
	flush := func() {
		if cur != nil {
			out <- cur
			cur = nil
		}
		timer.Stop()
	}
	for {
		select {
		case c, ok := <-in:
			if !ok {
				flush()
				return
			}
			if rewound {
				continue
			}
			if c.Seq != "" {
				if err := p.checkRewind(c.Seq); err != nil {
					// The changes before it are written; none after.
					flush()
					out <- &batch{rewind: err}
					rewound = true
					continue
				}
			}
			if cur == nil {
				cur = &batch{changes: make([]Change, 0, size)}
				timer.Reset(wait)
			}
			if c.IsPosition() {
				cur.lastSeq = c.Seq // nothing to process: only a checkpoint
				continue
			}
			cur.changes = append(cur.changes, c)
			if c.Seq != "" {
				cur.lastSeq = c.Seq
			}
			if len(cur.changes) >= size {
				flush()
			}
		case <-timer.C:
			flush()
		case cs := <-retries:
			if !rewound {
				out <- &batch{changes: cs, retry: true}
			}
		}
	}
}

// checkRewind notices a feed whose sequence goes backwards by its numeric
// prefix (from the checkpoint on): a database recreated or restored, a
// CouchDB cluster failover. When a sink keeps records by feed position
// (PositionGuard), the positions of the changes that follow are lower
// than those of the records it holds, and it would refuse them: the
// pillow must not go on mixing the two, and checkRewind returns the
// error that stops it. Otherwise a rewind is logged and counted.
func (p *Pillow) checkRewind(seq string) error {
	n := seqNumber(seq)
	if n < 0 {
		return nil
	}
	if n < p.lastSeqNum {
		p.opts.Metrics.rewinds.WithLabelValues(p.Spec.Name).Inc()
		for _, o := range p.Spec.outputs {
			if g, ok := o.Sink.(PositionGuard); ok && g.GuardsPositions() {
				return fmt.Errorf("the feed went back from position %d to %s (its database was recreated or restored, or a cluster node failed over): "+
					"sink %s keeps records by feed position and would refuse the new changes; run ptop reindex %s, which rebuilds the sinks from the new feed",
					p.lastSeqNum, seq, o.Name, p.Spec.Name)
			}
		}
		p.log.Warn("sequence rewind: the feed went back", "from", p.lastSeqNum, "to", seq)
	}
	p.lastSeqNum = n
	return nil
}

// worker holds what one goroutine needs to run filter and transform.
type worker struct {
	filter    *filterRunner
	transform *jsRunner
}

func (p *Pillow) newWorkers() ([]*worker, error) {
	n := p.Spec.Workers
	if n == 0 {
		n = runtime.GOMAXPROCS(0)
	}
	ws := make([]*worker, n)
	for i := range ws {
		w := &worker{}
		if p.Spec.filter != nil {
			w.filter = &filterRunner{f: p.Spec.filter}
		}
		if p.Spec.transform != nil {
			r, err := p.Spec.transform.newRunner()
			if err != nil {
				return nil, err
			}
			w.transform = r
		}
		ws[i] = w
	}
	return ws, nil
}

// minChunk is the smallest share of a batch worth handing to another
// goroutine.
const minChunk = 64

// process runs filter and transform over a batch, split in order across
// the workers.
func (p *Pillow) process(ws []*worker, b *batch) {
	n := min(len(ws), (len(b.changes)+minChunk-1)/minChunk)
	if n <= 1 {
		b.records, b.touches, b.failures, b.filtered = p.processChunk(ws[0], b.changes)
	} else {
		type part struct {
			records  []Record
			touches  []touch
			failures []Failure
			filtered int
		}
		parts := make([]part, n)
		var wg sync.WaitGroup
		per := (len(b.changes) + n - 1) / n
		for i := 0; i < n; i++ {
			lo, hi := i*per, min((i+1)*per, len(b.changes))
			wg.Add(1)
			go func() {
				defer wg.Done()
				pt := &parts[i]
				pt.records, pt.touches, pt.failures, pt.filtered = p.processChunk(ws[i], b.changes[lo:hi])
			}()
		}
		wg.Wait()
		total := 0
		for _, pt := range parts {
			total += len(pt.records)
		}
		b.records = make([]Record, 0, total)
		for _, pt := range parts {
			b.records = append(b.records, pt.records...)
			b.touches = append(b.touches, pt.touches...)
			b.failures = append(b.failures, pt.failures...)
			b.filtered += pt.filtered
		}
	}
	p.Stats.Seen.Add(int64(len(b.changes)))
	p.Stats.Filtered.Add(int64(b.filtered))
	m, name := p.opts.Metrics, p.Spec.Name
	m.changes.WithLabelValues(name, "seen").Add(float64(len(b.changes)))
	m.changes.WithLabelValues(name, "filtered").Add(float64(b.filtered))
	m.batchSize.WithLabelValues(name).Observe(float64(len(b.changes)))
}

func (p *Pillow) processChunk(w *worker, cs []Change) (recs []Record, touches []touch, fails []Failure, filtered int) {
	s := p.Spec
	recs = make([]Record, 0, len(cs))
	touches = make([]touch, 0, len(cs))
	// left records that the change c left its document with: recs[from:].
	left := func(c *Change, from int) {
		t := touch{doc: c.ID, rev: c.Rev, seq: c.Seq}
		if n := len(recs) - from; n > 0 {
			t.ids = make([]string, n)
			for i, r := range recs[from:] {
				t.ids[i] = r.ID
			}
		}
		touches = append(touches, t)
	}
	fail := func(c *Change, stage string, err error) {
		fails = append(fails, Failure{Pillow: s.Name, Hash: s.Hash, Change: *c, Stage: stage, Err: err, Time: time.Now()})
	}
	for i := range cs {
		c := &cs[i]
		switch {
		case c.Err != nil:
			fail(c, "source", c.Err)
			continue
		case !s.IncludeDesign && strings.HasPrefix(c.ID, "_design/"):
			filtered++
			continue
		case c.Deleted:
			if s.SkipDeletes {
				filtered++
			} else {
				recs = append(recs, Record{ID: c.ID, DocID: c.ID, Rev: c.Rev, Seq: c.Seq, Delete: true})
				left(c, len(recs))
			}
			continue
		}
		if s.MaxDocBytes > 0 && len(c.RawDoc) > s.MaxDocBytes {
			fail(c, "decode", fmt.Errorf("the document is %d bytes, more than max_doc_bytes (%d)", len(c.RawDoc), s.MaxDocBytes))
			continue
		}
		if c.Doc == nil && c.RawDoc == nil {
			// A feed read without include_docs, or a row whose doc the
			// server left out: there is nothing to filter or write.
			fail(c, "source", errors.New("the change has no document (the feed row has no doc)"))
			continue
		}
		if w.filter == nil && w.transform == nil && c.Doc == nil && c.RawDoc != nil {
			// Passed through as the feed sent it: big and precise numbers,
			// key order and all, are the sink's to write exactly.
			raw, err := passthrough(c.RawDoc)
			if err != nil {
				fail(c, "decode", err)
				continue
			}
			recs = append(recs, Record{ID: c.ID, DocID: c.ID, Rev: c.Rev, Seq: c.Seq, Doc: raw})
			left(c, len(recs)-1)
			continue
		}
		var raw []byte // the document's text, for the order of doc's keys
		if c.Doc == nil && c.RawDoc != nil {
			if err := json.Unmarshal(c.RawDoc, &c.Doc); err != nil {
				fail(c, "decode", fmt.Errorf("decoding the document: %w", err))
				continue
			}
			raw, c.RawDoc = c.RawDoc, nil
		}
		if w.filter != nil {
			ok, err := w.filter.match(c)
			if err != nil {
				fail(c, "filter", err)
				continue
			}
			if !ok {
				filtered++
				if !s.KeepFiltered {
					left(c, len(recs))
				}
				continue
			}
		}
		if w.transform == nil {
			var doc any = c.Doc
			if raw != nil {
				// As the feed sent it, as without a filter.
				b, err := passthrough(raw)
				if err != nil {
					fail(c, "decode", err)
					continue
				}
				doc = b
			}
			recs = append(recs, Record{ID: c.ID, DocID: c.ID, Rev: c.Rev, Seq: c.Seq, Doc: doc})
			left(c, len(recs)-1)
			continue
		}
		n := len(recs)
		var err error
		if recs, err = w.transform.run(c, raw, recs); err != nil {
			recs = recs[:n]
			fail(c, "transform", err)
			continue
		}
		left(c, n)
	}
	return recs, touches, fails, filtered
}

// passthrough returns a document's bytes as a record's content: a JSON
// object, unchanged but for invalid UTF-8, which becomes U+FFFD as it
// would through a decoder.
func passthrough(raw []byte) (json.RawMessage, error) {
	b := bytes.TrimSpace(raw)
	if !utf8.Valid(b) {
		b = bytes.ToValidUTF8(b, []byte("\uFFFD"))
	}
	if len(b) == 0 || b[0] != '{' || !json.Valid(b) {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("decoding the document: %w", err)
		}
		return nil, errors.New("decoding the document: not a JSON object")
	}
	return json.RawMessage(b), nil
}

// write hands a batch to every sink, retrying each until it acknowledges,
// and records the batch's failures. A sink that saves the checkpoint in its
// own transaction goes last, once the others have acknowledged the batch
// and its failures are recorded. It fails only when ctx ends first.
func (p *Pillow) write(ctx context.Context, b *batch) error {
	if err := p.lease.check(); err != nil {
		return err
	}
	if b.sets == nil && b.docSets == nil {
		if err := p.planSets(ctx, b); err != nil {
			return err
		}
	}
	var mu sync.Mutex
	// sinkFailures are the failures of records o rejected.
	sinkFailures := func(o NamedSink, re RecordErrors) []Failure {
		fs := make([]Failure, 0, len(re))
		for _, e := range re {
			r := b.records[e.Index]
			fs = append(fs, Failure{
				Pillow: p.Spec.Name, Hash: p.Spec.Hash, Stage: "sink:" + o.Name, Err: e.Err, Time: time.Now(),
				Change: Change{ID: r.DocID, Rev: r.Rev, Seq: r.Seq, Deleted: r.Delete},
			})
		}
		return fs
	}
	// recorded counts the failures stored in the error store.
	recorded := 0
	writeTo := func(o NamedSink) error {
		start := time.Now()
		defer func() {
			p.opts.Metrics.writeSeconds.WithLabelValues(p.Spec.Name, o.Name).Observe(time.Since(start).Seconds())
		}()
		return retry(ctx, p.log.With("sink", o.Name), "write", func() error {
			if err := p.lease.check(); err != nil {
				return Permanent(err)
			}
			var err error
			// The transaction that moves the checkpoint commits only once
			// the records it rejected are in the error store. The others'
			// failures are recorded already; an attempt whose commit failed
			// leaves none behind.
			var onRejected func(RecordErrors) error
			if o.Name == p.txSink {
				base := len(b.failures)
				onRejected = func(re RecordErrors) error {
					b.failures = append(b.failures[:base], sinkFailures(o, re)...)
					recorded = min(recorded, base)
					for ; recorded < len(b.failures); recorded++ {
						if err := p.tryRecord(ctx, b.failures[recorded]); err != nil {
							return fmt.Errorf("recording a record the sink rejected: %w", err)
						}
					}
					return nil
				}
			}
			if dw, ok := o.Sink.(DocSetWriter); ok {
				seq := ""
				if o.Name == p.txSink {
					seq = b.lastSeq
				}
				if len(b.records) > 0 || len(b.docSets) > 0 || seq != "" {
					err = dw.WriteDocSets(ctx, b.records, b.docSets, p.opts.CheckpointName, seq, onRejected)
				}
			} else if ts, ok := o.Sink.(TransactionalSink); ok && o.Name == p.txSink {
				err = ts.WriteCheckpointed(ctx, b.records, p.opts.CheckpointName, b.lastSeq, onRejected)
			} else if len(b.records) > 0 {
				err = o.Sink.Write(ctx, b.records)
			}
			var re RecordErrors
			if err == nil {
				p.opts.Metrics.records.WithLabelValues(p.Spec.Name, o.Name).Add(float64(len(b.records)))
			} else if errors.As(err, &re) {
				p.opts.Metrics.records.WithLabelValues(p.Spec.Name, o.Name).Add(float64(len(b.records) - len(re)))
				mu.Lock()
				b.failures = append(b.failures, sinkFailures(o, re)...)
				mu.Unlock()
				err = nil
			}
			if err != nil {
				p.down.Store("sink "+o.Name, err)
			} else {
				p.down.Delete("sink " + o.Name)
			}
			return err
		})
	}
	var last *NamedSink
	var others []NamedSink
	for i, o := range p.Spec.outputs {
		if o.Name == p.txSink {
			last = &p.Spec.outputs[i]
		} else {
			others = append(others, o)
		}
	}
	errs := make([]error, len(others))
	var wg sync.WaitGroup
	for i, o := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = writeTo(o)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	record := func() error {
		for ; recorded < len(b.failures); recorded++ {
			if err := p.recordFailure(ctx, b.failures[recorded]); err != nil {
				return err
			}
		}
		return nil
	}
	if err := record(); err != nil {
		return err
	}
	if last != nil {
		if err := writeTo(*last); err != nil {
			return err
		}
		if err := record(); err != nil {
			return err
		}
	}
	if err := p.commitSets(ctx, b); err != nil {
		return err
	}
	if err := p.clearSucceeded(ctx, b); err != nil {
		return err
	}
	p.Stats.Written.Add(int64(len(b.records)))
	p.Stats.Failed.Add(int64(len(b.failures)))
	m, name := p.opts.Metrics, p.Spec.Name
	failedDocs := map[string]bool{}
	for _, f := range b.failures {
		failedDocs[f.Change.ID] = true
	}
	m.changes.WithLabelValues(name, "failed").Add(float64(len(b.failures)))
	m.changes.WithLabelValues(name, "processed").Add(float64(max(len(b.changes)-b.filtered-len(failedDocs), 0)))
	p.Stats.Batches.Add(1)
	return nil
}

// retry calls f until it succeeds, fails permanently or ctx ends, backing
// off exponentially from 100ms to 30s with jitter, and logs each failure.
func retry(ctx context.Context, log *slog.Logger, what string, f func() error) error {
	var backoff component.Backoff
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil {
			if attempt > 1 {
				log.Info(what+" succeeded after retries", "attempts", attempt)
			}
			return nil
		}
		if IsPermanent(err) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := backoff.Next()
		log.Warn(what+" failed; retrying", "attempt", attempt, "in", wait.Round(time.Millisecond), "error", err)
		if err := component.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}
