package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	// down holds, by sink name, the error of a sink that is failing whole
	// batches: the pillow is unhealthy until it recovers.
	down sync.Map
	// errCount is the size of the pillow's error store, as last known.
	errCount atomic.Int64
	// startTime and checkpointTime are Unix nanoseconds.
	startTime, checkpointTime atomic.Int64
	lastSeqNum                int64 // numeric prefix of the last seq seen, for rewinds; batcher only
}

func (p *Pillow) started() time.Time      { return unixNano(p.startTime.Load()) }
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
		reasons = append(reasons, fmt.Sprintf("sink %s: %v", k, v))
		return true
	})
	return len(reasons) == 0, reasons
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
}

// Run reads the pillow's feed from its checkpoint and writes what it makes
// into its sinks until ctx is cancelled or the feed ends. After ctx is
// cancelled it stops reading, flushes what it has read, checkpoints and
// returns nil. A batch is checkpointed only once every sink has
// acknowledged it and its failures are recorded.
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

	p.startTime.Store(time.Now().UnixNano())
	p.lastSeqNum = -1
	since := ""
	if p.cps != nil {
		var err error
		err = retry(ctx, p.log, "load checkpoint", func() error {
			since, err = p.cps.LoadCheckpoint(ctx, p.opts.CheckpointName)
			return err
		})
		if err != nil {
			return startErr(s.Name, "loading the checkpoint", err)
		}
		p.Stats.Checkpoint.Store(since)
	}
	if since == "" {
		since = p.opts.Since
	}
	for _, o := range s.outputs {
		if err := retry(ctx, p.log.With("sink", o.Name), "open sink", func() error { return o.Sink.Open(ctx) }); err != nil {
			p.closeSinks()
			return startErr(s.Name, "opening sink "+o.Name, err)
		}
	}
	defer p.closeSinks()
	// A checkpoint store of its own (not the source) holds connections.
	if c, ok := p.cps.(io.Closer); ok && any(p.cps) != any(s.source) {
		defer c.Close()
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
	changes := make(chan Change, s.Batch.Size)
	var srcErr error
	go func() {
		defer close(changes)
		srcErr = s.source.Run(read, since, changes)
	}()
	retries := make(chan []Change)
	if p.reader != nil {
		go p.retrier(read, retries)
	}
	batches := make(chan *batch, 1)
	go p.batcher(changes, retries, batches)
	processed := make(chan *batch, 1)
	go func() {
		defer close(processed)
		for b := range batches {
			p.process(workers, b)
			processed <- b
		}
	}()
	// Checkpoints are saved in the background, the latest one replacing
	// any not yet saved: a save (a round trip to the source's server) does
	// not hold up the next batch's write.
	cpCh := make(chan string, 1)
	cpDone := make(chan struct{})
	go func() {
		defer close(cpDone)
		for seq := range cpCh {
			if err := p.cps.SaveCheckpoint(work, p.opts.CheckpointName, seq); err != nil {
				p.log.Warn("checkpoint not saved; the next one will cover it", "seq", seq, "error", err)
				continue
			}
			p.Stats.Checkpoint.Store(seq)
			p.checkpointTime.Store(time.Now().UnixNano())
		}
	}()
	var writeErr error
	for b := range processed {
		if writeErr != nil {
			continue // drain the pipeline; nothing more is checkpointed
		}
		if writeErr = p.write(work, b); writeErr != nil {
			stopReading()
			continue
		}
		if b.retry {
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
		case cpCh <- b.lastSeq:
		default:
			select {
			case <-cpCh: // a newer position replaces one not saved yet
			default:
			}
			cpCh <- b.lastSeq
		}
	}
	close(cpCh)
	<-cpDone
	if writeErr != nil {
		if IsPermanent(writeErr) {
			return fmt.Errorf("pillow %s: %w", s.Name, writeErr)
		}
		p.log.Warn("stopped before everything read was written; it is read again on the next start", "error", writeErr)
		return nil
	}
	if srcErr != nil && !errors.Is(srcErr, context.Canceled) {
		return fmt.Errorf("pillow %s: source: %w", s.Name, srcErr)
	}
	p.log.Info("pillow stopped", "checkpoint", p.Stats.Checkpoint.Load())
	return nil
}

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
			if cur == nil {
				cur = &batch{changes: make([]Change, 0, size)}
				timer.Reset(wait)
			}
			cur.changes = append(cur.changes, c)
			if c.Seq != "" {
				cur.lastSeq = c.Seq
				p.checkRewind(c.Seq)
			}
			if len(cur.changes) >= size {
				flush()
			}
		case <-timer.C:
			flush()
		case cs := <-retries:
			out <- &batch{changes: cs, retry: true}
		}
	}
}

// checkRewind notices a feed whose sequence goes backwards by its numeric
// prefix: a CouchDB cluster failover, or a restored database.
func (p *Pillow) checkRewind(seq string) {
	n := seqNumber(seq)
	if n < 0 {
		return
	}
	if n < p.lastSeqNum {
		p.log.Warn("sequence rewind: the feed went back", "from", p.lastSeqNum, "to", seq)
		p.opts.Metrics.rewinds.WithLabelValues(p.Spec.Name).Inc()
	}
	p.lastSeqNum = n
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
		if c.Doc == nil && c.RawDoc != nil {
			if err := json.Unmarshal(c.RawDoc, &c.Doc); err != nil {
				fail(c, "decode", fmt.Errorf("decoding the document: %w", err))
				continue
			}
			c.RawDoc = nil
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
			recs = append(recs, Record{ID: c.ID, DocID: c.ID, Rev: c.Rev, Seq: c.Seq, Doc: c.Doc})
			left(c, len(recs)-1)
			continue
		}
		n := len(recs)
		var err error
		if recs, err = w.transform.run(c, recs); err != nil {
			recs = recs[:n]
			fail(c, "transform", err)
			continue
		}
		left(c, n)
	}
	return recs, touches, fails, filtered
}

// write hands a batch to every sink, retrying each until it acknowledges,
// and records the batch's failures. A sink that saves the checkpoint in its
// own transaction goes last, once the others have acknowledged the batch
// and its failures are recorded. It fails only when ctx ends first.
func (p *Pillow) write(ctx context.Context, b *batch) error {
	if b.sets == nil && b.docSets == nil {
		if err := p.planSets(ctx, b); err != nil {
			return err
		}
	}
	var mu sync.Mutex
	writeTo := func(o NamedSink) error {
		start := time.Now()
		defer func() {
			p.opts.Metrics.writeSeconds.WithLabelValues(p.Spec.Name, o.Name).Observe(time.Since(start).Seconds())
		}()
		return retry(ctx, p.log.With("sink", o.Name), "write", func() error {
			var err error
			if dw, ok := o.Sink.(DocSetWriter); ok {
				seq := ""
				if o.Name == p.txSink {
					seq = b.lastSeq
				}
				if len(b.records) > 0 || len(b.docSets) > 0 || seq != "" {
					err = dw.WriteDocSets(ctx, b.records, b.docSets, p.opts.CheckpointName, seq)
				}
			} else if ts, ok := o.Sink.(TransactionalSink); ok && o.Name == p.txSink {
				err = ts.WriteCheckpointed(ctx, b.records, p.opts.CheckpointName, b.lastSeq)
			} else if len(b.records) > 0 {
				err = o.Sink.Write(ctx, b.records)
			}
			var re RecordErrors
			if err == nil {
				p.opts.Metrics.records.WithLabelValues(p.Spec.Name, o.Name).Add(float64(len(b.records)))
			} else if errors.As(err, &re) {
				p.opts.Metrics.records.WithLabelValues(p.Spec.Name, o.Name).Add(float64(len(b.records) - len(re)))
				mu.Lock()
				for _, e := range re {
					r := b.records[e.Index]
					b.failures = append(b.failures, Failure{
						Pillow: p.Spec.Name, Hash: p.Spec.Hash, Stage: "sink:" + o.Name, Err: e.Err, Time: time.Now(),
						Change: Change{ID: r.DocID, Rev: r.Rev, Seq: r.Seq, Deleted: r.Delete},
					})
				}
				mu.Unlock()
				err = nil
			}
			if err != nil {
				p.down.Store(o.Name, err)
			} else {
				p.down.Delete(o.Name)
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
	recorded := 0
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
	delay := 100 * time.Millisecond
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
		wait := delay/2 + rand.N(delay/2+1)
		log.Warn(what+" failed; retrying", "attempt", attempt, "in", wait.Round(time.Millisecond), "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		delay = min(delay*2, 30*time.Second)
	}
}
