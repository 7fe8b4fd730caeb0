package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dimagi/ptop/engine"
)

const errorsUsage = `errors [NAME] [--dir DIR]              list failed changes (of pillow NAME)
       ptop errors retry NAME [ID]... [--dir DIR] retry them at the next poll of the running pillow
       ptop errors purge [NAME [ID]...] [--dir DIR] delete them`

func cmdErrors(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("errors", errorsUsage, stderr)
	dir := fs.String("dir", "pipelines", "the pillows' directory")
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
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if action == "list" {
		fmt.Fprintln(tw, "PILLOW\tID\tATTEMPTS\tSTAGE\tLAST FAILED\tNEXT ATTEMPT\tERROR")
	}
	total, rc := 0, 0
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
				rc = 1
				continue
			}
			for _, e := range es {
				next := "gave up"
				if !e.NextAttempt.IsZero() {
					next = e.NextAttempt.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", e.Pillow, e.DocID, e.Attempts, e.Stage,
					e.LastFailed.Local().Format(time.DateTime), next, oneLine(e.Error, 100))
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
				rc = 1
				continue
			}
			total += n
		}
	}
	tw.Flush()
	switch action {
	case "list":
		fmt.Fprintf(stdout, "%d failed change%s\n", total, plural(total))
	case "retry":
		fmt.Fprintf(stdout, "%d failed change%s due for a retry now\n", total, plural(total))
	case "purge":
		fmt.Fprintf(stdout, "%d failed change%s purged\n", total, plural(total))
	}
	return rc
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
