package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dimagi/ptop/engine"
)

func cmdReindex(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("reindex", "reindex NAME [--dir DIR] [--keep-old]", stderr)
	dir := fs.String("dir", "pipelines", "the pillows' directory")
	keepOld := fs.Bool("keep-old", false, "keep the index or table that the rebuilt one replaces")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	resume := fs.String("resume", "", `after a reindex that stopped while flipping: "flipped" or "restart"`)
	leaseTTL := fs.Duration("lease-ttl", 10*time.Second, "hold the lease NAME.reindex in the checkpoint store while reindexing, so that a second reindex of the pillow refuses to start (0: no lease)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "ptop reindex: name one pillow")
		return 2
	}
	log, err := newLogger(stderr, "text", *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "ptop reindex:", err)
		return 2
	}
	slog.SetDefault(log) // sources and sinks log through it
	specs, err := engine.Load(*dir)
	if err != nil {
		printLoadErrors(stderr, err)
		return 1
	}
	var spec *engine.Spec
	for _, s := range specs {
		if s.Name == pos[0] {
			spec = s
		}
	}
	if spec == nil {
		fmt.Fprintf(stderr, "ptop reindex: no pillow named %q in %s\n", pos[0], *dir)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// A reindex has nothing to reload: SIGHUP (a closed terminal, a
	// reload sent to every ptop) must not kill it halfway.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Warn("SIGHUP ignored: a reindex does not reload; stop it with SIGINT or SIGTERM (it resumes when run again)")
		}
	}()
	bar := newProgressBar(stderr)
	if *resume != "" && *resume != "flipped" && *resume != "restart" {
		fmt.Fprintln(stderr, `ptop reindex: --resume is "flipped" or "restart"`)
		return 2
	}
	err = engine.Reindex(ctx, spec, engine.ReindexOptions{Log: log, KeepOld: *keepOld, Progress: bar.show, Resume: *resume, LeaseTTL: *leaseTTL})
	bar.end()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(stderr, "ptop reindex: interrupted; run it again to resume from where it stopped\n")
		} else {
			fmt.Fprintln(stderr, "ptop reindex:", err)
		}
		return 1
	}
	fmt.Fprintf(stdout, "reindex of %s complete\n", spec.Name)
	return 0
}

// progressBar draws the reindex's progress: one line redrawn in place on a
// terminal, a line every ten seconds elsewhere.
type progressBar struct {
	w     io.Writer
	tty   bool
	last  time.Time
	drawn bool
}

func newProgressBar(w io.Writer) *progressBar {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progressBar{w: w, tty: tty}
}

func (b *progressBar) show(p engine.ReindexProgress) {
	if !b.tty && time.Since(b.last) < 10*time.Second {
		return
	}
	b.last = time.Now()
	frac := 1.0
	if p.Target > 0 {
		frac = min(float64(p.Done)/float64(p.Target), 1)
	}
	const width = 30
	fill := int(frac * width)
	eta := "?"
	if p.ETA >= 0 {
		eta = p.ETA.Round(time.Second).String()
	}
	line := fmt.Sprintf("%-8s [%s%s] %3.0f%%  %d/%d  %.0f changes/s  ETA %s",
		p.Phase, strings.Repeat("#", fill), strings.Repeat(".", width-fill), frac*100, p.Done, p.Target, p.Rate, eta)
	if b.tty {
		fmt.Fprintf(b.w, "\r%s\x1b[K", line)
		b.drawn = true
	} else {
		fmt.Fprintln(b.w, line)
	}
}

func (b *progressBar) end() {
	if b.drawn {
		fmt.Fprintln(b.w)
	}
}
