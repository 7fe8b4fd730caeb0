package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dimagi/ptop/engine"
)

const errorsUsage = `errors [NAME] [-v | --json] [--dir DIR] list failed changes (of pillow NAME); -v: whole errors, --json: one JSON object a line
       ptop errors retry NAME [ID]... [--dir DIR] retry them at the next poll of the running pillow
       ptop errors purge [NAME [ID]...] [--dir DIR] delete them`

func cmdErrors(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("errors", errorsUsage, stderr)
	dir := fs.String("dir", "pipelines", "the pillows' directory")
	verbose := fs.Bool("v", false, "list: print each error whole, under its entry")
	asJSON := fs.Bool("json", false, "list: print each entry as one JSON object a line, the error whole")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	action := "list"
	if len(pos) > 0 && (pos[0] == "retry" || pos[0] == "purge") {
		action, pos = pos[0], pos[1:]
	}
	if action == "retry" && len(pos) == 0 {
		fmt.Fprintln(stderr, "ptop errors retry: name the pillow")
		return 2
	}
	if action == "list" && len(pos) > 1 {
		fmt.Fprintln(stderr, "ptop errors: one pillow name at most")
		return 2
	}
	specs, err := engine.Load(*dir)
	if err != nil {
		printLoadErrors(stderr, err)
		return 1
	}
	name, ids := "", []string(nil)
	if len(pos) > 0 {
		name, ids = pos[0], pos[1:]
	}
	var picked []*engine.Spec
	for _, s := range specs {
		if name == "" || s.Name == name {
			picked = append(picked, s)
		}
	}
	if name != "" && len(picked) == 0 {
		fmt.Fprintf(stderr, "ptop errors: no pillow named %q in %s\n", name, *dir)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if *verbose && *asJSON {
		fmt.Fprintln(stderr, "ptop errors: -v or --json, not both")
		return 2
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	enc := json.NewEncoder(stdout)
	// The header comes with the first row, or at the end when every store
	// was read: a store that could not be read has no "0 failed changes".
	headed := false
	header := func() {
		if action == "list" && !*asJSON && !headed {
			fmt.Fprintln(tw, "PILLOW\tID\tATTEMPTS\tSTAGE\tLAST FAILED\tNEXT ATTEMPT\tERROR")
			headed = true
		}
	}
	total, rc, unread := 0, 0, 0
	for _, s := range picked {
		store, ok := errorStore(s)
		if !ok {
			if name != "" {
				fmt.Fprintf(stderr, "ptop errors: pillow %s keeps no error store (its source logs failures only)\n", s.Name)
				rc = 1
			}
			continue
		}
		switch action {
		case "list":
			es, err := store.List(ctx, s.Name)
			if err != nil {
				fmt.Fprintf(stderr, "ptop errors: %s: %v\n", s.Name, err)
				rc, unread = 1, unread+1
				continue
			}
			for _, e := range es {
				header()
				if *asJSON {
					if err := enc.Encode(errorJSON(e)); err != nil {
						fmt.Fprintf(stderr, "ptop errors: %v\n", err)
						return 1
					}
					continue
				}
				next := "gave up"
				if !e.NextAttempt.IsZero() {
					next = e.NextAttempt.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", e.Pillow, e.DocID, e.Attempts, e.Stage,
					e.LastFailed.Local().Format(time.DateTime), next, oneLine(e.Error, 100))
				if *verbose {
					// The whole error, indented under its row; a tab
					// writer cell would be as wide as the longest error.
					tw.Flush()
					fmt.Fprintf(stdout, "    seq %s, rev %s, first failed %s\n", e.Seq, e.Rev, e.FirstFailed.Local().Format(time.DateTime))
					for _, l := range strings.Split(strings.TrimRight(e.Error, "\n"), "\n") {
						fmt.Fprintf(stdout, "    %s\n", l)
					}
				}
			}
			total += len(es)
		case "retry", "purge":
			f := store.Retry
			if action == "purge" {
				f = store.Purge
			}
			n, err := f(ctx, s.Name, ids)
			if err != nil {
				fmt.Fprintf(stderr, "ptop errors %s: %s: %v\n", action, s.Name, err)
				rc, unread = 1, unread+1
				continue
			}
			total += n
		}
	}
	if unread == 0 {
		header()
	}
	tw.Flush()
	if unread > 0 {
		if total > 0 {
			fmt.Fprintf(stdout, "%d failed change%s in the error stores that could be read\n", total, plural(total))
		}
		return rc
	}
	switch action {
	case "list":
		if !*asJSON {
			fmt.Fprintf(stdout, "%d failed change%s\n", total, plural(total))
		}
	case "retry":
		fmt.Fprintf(stdout, "%d failed change%s due for a retry now\n", total, plural(total))
	case "purge":
		fmt.Fprintf(stdout, "%d failed change%s purged\n", total, plural(total))
	}
	return rc
}

// errorJSON is an error store entry as `ptop errors --json` prints it.
func errorJSON(e engine.ErrorEntry) any {
	var next *time.Time
	if !e.NextAttempt.IsZero() {
		next = &e.NextAttempt
	}
	return struct {
		Pillow      string     `json:"pillow"`
		ID          string     `json:"id"`
		Seq         string     `json:"seq"`
		Rev         string     `json:"rev"`
		Stage       string     `json:"stage"`
		Error       string     `json:"error"`
		Attempts    int        `json:"attempts"`
		FirstFailed time.Time  `json:"first_failed"`
		LastFailed  time.Time  `json:"last_failed"`
		NextAttempt *time.Time `json:"next_attempt"` // null: gave up
	}{e.Pillow, e.DocID, e.Seq, e.Rev, e.Stage, e.Error, e.Attempts, e.FirstFailed, e.LastFailed, next}
}

// errorStore is the durable error store of a pillow, if its source keeps
// one.
func errorStore(s *engine.Spec) (engine.ErrorStore, bool) {
	p, ok := s.Src().(engine.ErrorStoreProvider)
	if !ok {
		return nil, false
	}
	es, err := p.ErrorStore()
	return es, err == nil
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n-1] + "…"
	}
	return s
}
