// Command ptop follows CouchDB changes feeds through pillows (YAML
// pipelines) into Elasticsearch, Postgres, TCP and file sinks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dimagi/ptop/engine"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = ""

const usage = `ptop follows CouchDB _changes feeds through pillows into sinks.

Usage:
  ptop run [DIR] [--pillow NAME]...   run the pillows in DIR (default pipelines/)
  ptop validate [DIR or FILE]...      load and compile pillows; touch no network
  ptop version                        print the version

Run 'ptop COMMAND -h' for a command's options.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "ptop", versionString())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "ptop: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// newFlagSet makes a command's flag set; -h prints its usage.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: ptop %s\n\nOptions:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseInterspersed parses flags that may come before or after the
// positional arguments, as in `ptop run pipelines/ --pillow x`.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("validate", "validate [DIR or FILE]...", stderr)
	paths, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(paths) == 0 {
		paths = []string{"pipelines"}
	}
	specs, err := engine.Load(paths...)
	if err != nil {
		printLoadErrors(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%d pillow%s OK: %s\n", len(specs), plural(len(specs)), specNames(specs))
	return 0
}

func printLoadErrors(w io.Writer, err error) {
	var es engine.Errors
	if errors.As(err, &es) {
		for _, e := range es {
			fmt.Fprintln(w, e)
		}
		fmt.Fprintf(w, "%d problem%s found\n", len(es), plural(len(es)))
		return
	}
	fmt.Fprintln(w, err)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func specNames(specs []*engine.Spec) string {
	ns := make([]string, len(specs))
	for i, s := range specs {
		ns[i] = s.Name
	}
	return strings.Join(ns, ", ")
}

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, got %q", format)
}

func cmdRun(args []string, stderr io.Writer) int {
	fs := newFlagSet("run", "run [DIR] [--pillow NAME]...", stderr)
	var only stringList
	fs.Var(&only, "pillow", "run only this pillow (repeatable)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	drain := fs.Duration("drain-timeout", 10*time.Second, "on SIGTERM/SIGINT, how long to keep flushing before exiting")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 1 {
		fmt.Fprintln(stderr, "ptop run: one directory at most")
		return 2
	}
	dir := "pipelines"
	if len(pos) == 1 {
		dir = pos[0]
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "ptop run:", err)
		return 2
	}
	specs, err := engine.Load(dir)
	if err != nil {
		printLoadErrors(stderr, err)
		return 1
	}
	if len(only) > 0 {
		byName := map[string]*engine.Spec{}
		for _, s := range specs {
			byName[s.Name] = s
		}
		specs = specs[:0:0]
		for _, n := range only {
			s, ok := byName[n]
			if !ok {
				fmt.Fprintf(stderr, "ptop run: no pillow named %q in %s\n", n, dir)
				return 1
			}
			specs = append(specs, s)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			log.Warn("SIGHUP: reloading is not available in this version; restart ptop to apply changes")
		}
	}()

	log.Info("ptop starting", "version", versionString(), "pillows", specNames(specs))
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for _, s := range specs {
		p := engine.NewPillow(s, engine.RunOptions{Log: log, DrainTimeout: *drain})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Run(ctx); err != nil {
				log.Error("pillow failed", "pillow", s.Name, "error", err)
				mu.Lock()
				failed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if failed > 0 {
		log.Error("ptop stopped", "failed_pillows", failed)
		return 1
	}
	log.Info("ptop stopped")
	return 0
}
