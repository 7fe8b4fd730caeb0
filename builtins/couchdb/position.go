package couchdb

import (
	"context"
	"encoding/json"
	"io"
	"net/http"

	"github.com/dimagi/ptop/component"
	"github.com/go-kivik/kivik/v4/couchdb/chttp"
)

// A feed filtered by the server (selector, design-document filter) sends
// nothing for the changes it filters out, and the continuous feed never
// says how far it has read: a pillow whose last changes were filtered out
// would stay behind them for ever, one or more changes "pending". So on a
// heartbeat (the feed is quiet) the source asks a normal feed, from the
// position it has reached, for one change: none, and its last_seq is how
// far the server has read with nothing to pass on. The source then hands
// that position on (a Change with only Seq), which the pillow checkpoints.
//
// No change is skipped: a change after the position that passes the
// filter is in the answer (and nothing is handed on), and the continuous
// feed delivers every change after last_seq after the position.

// serverFiltered reports whether the server filters the feed.
func (s *Source) serverFiltered() bool { return s.cfg.Selector != nil || s.cfg.Filter != "" }

// passedFiltered hands on the position the server has read to, when it is
// past f.seq with nothing for the pillow in between.
func (f *follower) passedFiltered(ctx context.Context) error {
	if f.seq == "" || f.seq == "now" {
		return nil
	}
	last, err := f.s.filteredTo(ctx, f.seq)
	if err != nil || last == "" || last == f.seq {
		return err
	}
	if have, at := seqNumber(last), seqNumber(f.seq); have >= 0 && at >= 0 && have <= at {
		return nil // not further on
	}
	select {
	case f.out <- component.Change{Seq: last}:
		f.seq = last
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// filteredTo returns the last_seq of a normal feed from since when the
// server passes no change after since, else "".
func (s *Source) filteredTo(ctx context.Context, since string) (string, error) {
	opts := s.changesOptions(since)
	opts.Query.Set("feed", "normal")
	opts.Query.Set("limit", "1")
	opts.Query.Del("include_docs")
	opts.Query.Del("heartbeat")
	res, err := s.feed.DoReq(ctx, http.MethodPost, s.changesPath(), opts)
	if err != nil {
		return "", s.errorf("reading the feed's position: %w", err)
	}
	defer func() { _ = res.Body.Close() }()
	if err := chttp.ResponseError(res); err != nil {
		return "", s.errorf("reading the feed's position: %w", err)
	}
	var body struct {
		Results []json.RawMessage `json:"results"`
		LastSeq json.RawMessage   `json:"last_seq"`
	}
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&body); err != nil {
		return "", s.errorf("reading the feed's position: %w", err)
	}
	if len(body.Results) > 0 {
		return "", nil // a change to pass on: the continuous feed brings it
	}
	last, err := seqString(body.LastSeq)
	if err != nil {
		return "", s.errorf("reading the feed's position: %w", err)
	}
	return last, nil
}
