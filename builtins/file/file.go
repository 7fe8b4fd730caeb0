// Package file is the file source and the file sink.
//
// The source replays a dump of a changes feed, one row per line as
// `_changes?feed=continuous&include_docs=true` writes them:
//
//	source: {file: {path: changes.jsonl}}
//
// It keeps no checkpoint of its own and ends at the end of the file; a
// pillow that keeps one elsewhere (checkpoint: {postgres: …}) resumes
// after the row of the saved seq.
//
// The sink appends one JSON object per line, for debugging, demos and
// tests, and flushes before it acknowledges a batch:
//
//	sinks:
//	  - file: {path: out.jsonl}   # "-" for stdout
//
// Lines are {"action":"index","id":ID,"doc":RECORD} and
// {"action":"delete","id":ID}. Relative paths are taken from the working
// directory.
package file

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	json "github.com/goccy/go-json"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/couchrow"
)

func init() {
	component.RegisterSource("file", NewSource)
	component.RegisterSink("file", NewSink)
}

// SourceConfig is `source: {file: …}`.
type SourceConfig struct {
	Path string `yaml:"path" ptop:"required" doc:"The changes-feed dump to read, one _changes row per line (as feed=continuous&include_docs=true writes them)."`
}

// Validate implements component.Validator.
func (c *SourceConfig) Validate(ch component.Check) {
	if ch.Has("path") && c.Path == "" {
		ch.Errorf("path", "path must not be empty")
	}
}

// Source reads changes from a file.
type Source struct {
	path string
}

// NewSource makes a file source; the file is opened when it runs.
func NewSource(cfg *SourceConfig, _ component.BuildContext) (component.Source, error) {
	return &Source{path: cfg.Path}, nil
}

// Run implements component.Source. With since empty the file is read from its
// start; otherwise from after the row whose seq is since (a checkpoint
// kept in another store, such as Postgres): the rows up to it were
// processed by an earlier run. A since that no row of the file has is an
// error, rather than a reason to read everything again.
func (s *Source) Run(ctx context.Context, since string, out chan<- component.Change) error {
	f, err := os.Open(s.path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	if since == "0" {
		since = "" // the start of the feed
	}
	r := bufio.NewReaderSize(f, 1<<20)
	for lineNo := 1; ; lineNo++ {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: gather it whole.
			long := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = r.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if len(bytes.TrimSpace(line)) > 0 {
			c := parseRow(line, lineNo)
			if c != nil && since != "" {
				if c.Err == nil && c.Seq == since {
					since = "" // what follows is new
				}
				c = nil
			}
			if c != nil {
				select {
				case out <- *c:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		if err == io.EOF {
			if since != "" {
				return component.Permanent(fmt.Errorf("%s: no row has the checkpoint's seq %q; the file is not the one the checkpoint was saved from", s.path, since))
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// parseRow turns a line into a change, or nil for lines that carry none
// (the feed's closing {"last_seq":…}).
func parseRow(line []byte, lineNo int) *component.Change {
	r, err := couchrow.Parse(line)
	if err != nil {
		return &component.Change{Err: fmt.Errorf("line %d: %w", lineNo, err)}
	}
	if r.ID == "" && r.LastSeq != nil {
		return nil // the dump's end
	}
	c, err := r.Change()
	if err != nil {
		c.Err = fmt.Errorf("line %d: %w", lineNo, err)
	}
	return &c
}

// SinkConfig is `- file: …` in sinks.
type SinkConfig struct {
	Path string `yaml:"path" ptop:"required" doc:"The file records are appended to, one JSON line each; \"-\" for standard output. Its directory is created when missing; no other file sink may write the same file."`
	// Sync calls fsync after each batch, for durability across a crash of
	// the machine, not just of ptop.
	Sync bool `yaml:"sync" doc:"Call fsync after each batch, for durability across a crash of the machine, not just of ptop."`
}

// Validate implements component.Validator.
func (c *SinkConfig) Validate(ch component.Check) {
	if ch.Has("path") && c.Path == "" {
		ch.Errorf("path", "path must not be empty (use \"-\" for stdout)")
	}
	if c.Path != "" && c.Path != "-" {
		// Two sinks appending to one file would interleave their lines.
		if abs, err := filepath.Abs(c.Path); err == nil {
			ch.Claim("path", "file path", abs)
		}
	}
}

// Sink appends records to a file as JSON lines.
type Sink struct {
	cfg SinkConfig
	mu  sync.Mutex
	f   *os.File
	w   *bufio.Writer
	buf bytes.Buffer
	enc *json.Encoder
}

// NewSink makes a file sink; the file is opened by Open.
func NewSink(cfg *SinkConfig, _ component.BuildContext) (component.Sink, error) {
	return &Sink{cfg: *cfg}, nil
}

// Open implements component.Sink. The file's directory is created when
// missing. A path that cannot be opened (a directory, no permission) is a
// permanent error: retrying would not change it.
func (s *Sink) Open(context.Context) error {
	if s.cfg.Path == "-" {
		s.f = os.Stdout
	} else {
		if err := os.MkdirAll(filepath.Dir(s.cfg.Path), 0o755); err != nil {
			return component.Permanent(err)
		}
		f, err := os.OpenFile(s.cfg.Path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return component.Permanent(err)
		}
		if err := endPartialLine(f); err != nil {
			_ = f.Close()
			return fmt.Errorf("%s: %w", s.cfg.Path, err)
		}
		s.f = f
	}
	s.w = bufio.NewWriterSize(s.f, 1<<16)
	s.enc = json.NewEncoder(&s.buf)
	s.enc.SetEscapeHTML(false)
	return nil
}

// ownLine is how every line the sink writes starts.
var ownLine = []byte(`{"action":"`)

// endPartialLine deals with what follows the file's last newline. A line
// of the sink's own is the part of a batch that a crash (kill -9) cut
// short: its changes were not checkpointed, so it is dropped and written
// again whole. Anything else is someone else's text and is kept, ended
// with a newline so that the next record starts a line of its own.
func endPartialLine(f *os.File) error {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 || !st.Mode().IsRegular() {
		return err
	}
	size := st.Size()
	keep := int64(0) // where the last line starts
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		start := max(end-int64(len(buf)), 0)
		n, err := f.ReadAt(buf[:end-start], start)
		if err != nil && err != io.EOF {
			return err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			keep = start + int64(i) + 1
			break
		}
		end = start
	}
	if keep == size {
		return nil
	}
	head := make([]byte, min(int64(len(ownLine)), size-keep))
	if _, err := f.ReadAt(head, keep); err != nil && err != io.EOF {
		return err
	}
	if bytes.HasPrefix(ownLine, head) {
		return f.Truncate(keep)
	}
	_, err = f.Write([]byte{'\n'})
	return err
}

type line struct {
	Action string `json:"action"`
	ID     string `json:"id"`
	Doc    any    `json:"doc,omitempty"`
}

// Write implements component.Sink: the batch is written and flushed to the
// file before it returns.
func (s *Sink) Write(_ context.Context, records []component.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs component.RecordErrors
	for i := range records {
		r := &records[i]
		l := line{Action: "index", ID: r.ID, Doc: r.Doc}
		if r.Delete {
			l = line{Action: "delete", ID: r.ID}
		}
		s.buf.Reset()
		if err := s.enc.Encode(l); err != nil {
			errs = append(errs, component.RecordError{Index: i, Err: fmt.Errorf("encoding the record: %w", err)})
			continue
		}
		if _, err := s.w.Write(s.buf.Bytes()); err != nil {
			return err
		}
	}
	if err := s.w.Flush(); err != nil {
		return err
	}
	if s.cfg.Sync && s.f != os.Stdout {
		if err := s.f.Sync(); err != nil {
			return err
		}
	}
	if errs != nil {
		return errs
	}
	return nil
}

// Close implements component.Sink.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.w.Flush()
	if s.f != os.Stdout {
		err = errors.Join(err, s.f.Close())
	}
	s.f = nil
	return err
}

var (
	_ component.Source = (*Source)(nil)
	_ component.Sink   = (*Sink)(nil)
)
