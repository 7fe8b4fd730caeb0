package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/dimagi/ptop/engine"
)

// cmdStatus prints each pillow's checkpoint, pending changes, error store
// size and last checkpoint time, read from the servers: it needs no running
// ptop.
func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("status", "status [DIR] [--pillow NAME]...", stderr)
	var only stringList
	fs.Var(&only, "pillow", "only this pillow (repeatable)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 1 {
		fmt.Fprintln(stderr, "ptop status: one directory at most")
		return 2
	}
	dir := "pipelines"
	if len(pos) == 1 {
		dir = pos[0]
	}
	specs, err := engine.Load(dir)
	if err != nil {
		printLoadErrors(stderr, err)
		return 1
	}
	want := map[string]bool{}
	for _, n := range only {
		want[n] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PILLOW\tCHECKPOINT\tPENDING\tERRORS\tLAST CHECKPOINT\tLEASE HELD BY")
	rc, shown := 0, 0
	for _, s := range specs {
		if len(want) > 0 && !want[s.Name] {
			continue
		}
		shown++
		row, err := pillowStatus(ctx, s)
		if err != nil {
			fmt.Fprintf(stderr, "ptop status: %s: %v\n", s.Name, err)
			rc = 1
		}
		fmt.Fprintln(tw, row)
	}
	tw.Flush()
	if len(want) > 0 && shown < len(want) {
		fmt.Fprintf(stderr, "ptop status: some of %v are not pillows in %s\n", []string(only), dir)
		return 1
	}
	return rc
}

func pillowStatus(ctx context.Context, s *engine.Spec) (string, error) {
	seq, pending, errs, last, holder := "-", "-", "-", "-", "-"
	var firstErr error
	keep := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	if cps := s.Checkpoints(); cps != nil {
		cp, err := cps.LoadCheckpoint(ctx, s.Name)
		switch {
		case err != nil:
			keep(err)
		case cp == "":
			seq = "(none)"
		default:
			seq = cp
		}
		if ct, ok := cps.(engine.CheckpointTimer); ok && err == nil && cp != "" {
			if t, err := ct.CheckpointTime(ctx, s.Name); err != nil {
				keep(err)
			} else if !t.IsZero() {
				last = t.Local().Format(time.DateTime) + " (" + time.Since(t).Round(time.Second).String() + " ago)"
			}
		}
		if pc, ok := s.Src().(engine.PendingCounter); ok && err == nil {
			since := cp
			if since == "" {
				since = "0"
			}
			if n, err := pc.Pending(ctx, since); err != nil {
				keep(err)
			} else {
				pending = strconv.FormatInt(n, 10)
			}
		}
	}
	if ls, ok := s.Checkpoints().(engine.LeaseStore); ok {
		if l, err := ls.ReadLease(ctx, s.Name); err != nil {
			keep(err)
		} else if l.Holder != "" {
			holder = l.Holder
			if !l.Renewed.IsZero() {
				holder += " (renewed " + time.Since(l.Renewed).Round(time.Second).String() + " ago)"
			}
		}
	}
	if store, ok := errorStore(s); ok {
		if es, err := store.List(ctx, s.Name); err != nil {
			keep(err)
		} else {
			errs = strconv.Itoa(len(es))
		}
	}
	return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", s.Name, seq, pending, errs, last, holder), firstErr
}
