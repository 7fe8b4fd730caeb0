// Command ptop follows CouchDB changes feeds through pillows (YAML
// pipelines) into Elasticsearch, Postgres, TCP and file sinks.
package main

import (
	"cmp"
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
	"syscall"
	"time"

	"github.com/dimagi/ptop/engine"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = ""

const usage = `ptop follows CouchDB _changes feeds through pillows into sinks.

Usage:
  ptop run [DIR] [--pillow NAME]...   run the pillows in DIR (default pipelines/)
  ptop validate [--strict] [DIR]...   load and compile pillows; touch no network
  ptop reindex NAME [--keep-old]      rebuild a pillow's index or table from the start, then flip
  ptop status [DIR]                   checkpoint, pending changes and failed changes per pillow
  ptop tap NAME [--limit N]           print a running pillow's changes as they pass, one JSON line each
  ptop top                            a live terminal dashboard of a running ptop's pillows
  ptop errors [NAME]                  list failed changes; also: errors retry NAME [ID]..., errors purge [NAME [ID]...]
  ptop test [DIR] [-v]                run the examples in NAME.test.yaml beside each pillow NAME.yaml
  ptop schema                         print the JSON Schema of a pillow file, for editors
  ptop version                        print the version

Run 'ptop COMMAND -h' for a command's options.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	// Everything logs through slog: until a command sets its own logger,
	// the default one writes slog's text lines (not the log package's
	// "2026/12/02 14:14:07 INFO …") to stderr.
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, nil)))
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "errors":
		return cmdErrors(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "tap":
		return cmdTap(args[1:], stdout, stderr)
	case "top":
		return cmdTop(args[1:], stdout, stderr)
	case "reindex":
		return cmdReindex(args[1:], stdout, stderr)
	case "test":
		return cmdTest(args[1:], stdout, stderr)
	case "schema":
		return cmdSchema(args[1:], stdout, stderr)
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

// versionString is the -ldflags version, else the module's version and
// the VCS revision the binary was built from (go build and go install
// record them), e.g. "v0.3.0" or "devel 511e5bb3c1d2 2026-12-02T17:00:00Z
// (modified)".
func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return buildVersion(bi)
}

func buildVersion(bi *debug.BuildInfo) string {
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	var rev, at string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" || strings.Contains(v, rev[:min(len(rev), 12)]) {
		return v // a released or pseudo-version already names its revision
	}
	v += " " + rev[:min(len(rev), 12)]
	if at != "" {
		v += " " + at
	}
	if modified {
		v += " (modified)"
	}
	return v
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
	fs := newFlagSet("validate", "validate [--strict] [DIR or FILE]...", stderr)
	strict := fs.Bool("strict", false, "treat warnings (an environment variable that is not set) as errors")
	paths, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(paths) == 0 {
		paths = []string{"pipelines"}
	}
	// An unset variable is a warning: validate runs where the production
	// secrets are not (a pillow author's machine, a CI job); run refuses it.
	var warnings engine.Errors
	opts := engine.LoadOptions{Warnings: &warnings}
	if *strict {
		opts = engine.LoadOptions{}
	}
	specs, err := engine.LoadWith(opts, paths...)
	if err != nil {
		printLoadErrors(stderr, err)
		return 1
	}
	if len(warnings) > 0 {
		_ = warnings.Err() // sorts them by position
		for _, w := range warnings {
			fmt.Fprintf(stderr, "%s: warning: %s\n", w.Pos, w.Msg)
		}
		fmt.Fprintf(stderr, "%d warning%s (ptop run needs these variables; --strict makes warnings errors)\n", len(warnings), plural(len(warnings)))
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
	httpAddr := fs.String("http", "127.0.0.1:9180", "serve /metrics, /healthz, /status, the status page and /tap on this address (empty: no listener)")
	httpToken := fs.String("http-token", "", "token /tap requires (Authorization: Bearer); without one /tap answers only on a loopback address (default $PTOP_HTTP_TOKEN)")
	historyEvery := fs.Duration("history-every", 5*time.Second, "how often the status page's charts (the last hour) take a sample")
	leaseTTL := fs.Duration("lease-ttl", 10*time.Second, "a pillow runs only while this process holds its lease in the checkpoint store, renewed every ttl/3; "+
		"another process waits as a standby and takes over when it is released or expires (0: no lease, nothing stops two processes running one pillow)")
	lagWindow := fs.Duration("lag-window", 3*time.Minute, "a pillow whose pending changes keep growing for this long is unhealthy (\"falling behind\"); 0: never")
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
	slog.SetDefault(log) // sources and sinks log through it
	load := func() ([]*engine.Spec, error) {
		specs, err := engine.Load(dir)
		if err != nil || len(only) == 0 {
			return specs, err
		}
		byName := map[string]*engine.Spec{}
		for _, s := range specs {
			byName[s.Name] = s
		}
		var picked []*engine.Spec
		for _, n := range only {
			s, ok := byName[n]
			if !ok {
				return nil, fmt.Errorf("no pillow named %q in %s", n, dir)
			}
			picked = append(picked, s)
		}
		return picked, nil
	}
	specs, err := load()
	if err != nil {
		printLoadErrors(stderr, err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *leaseTTL < 0 {
		fmt.Fprintln(stderr, "ptop run: --lease-ttl must not be negative")
		return 2
	}
	holder := engine.NewHolder()
	log.Info("ptop starting", "version", versionString(), "pillows", specNames(specs), "holder", holder)
	reg, metrics := newRegistry()
	if *lagWindow == 0 {
		*lagWindow = -1
	}
	runner := engine.NewRunner(engine.RunOptions{Log: log, DrainTimeout: *drain, Metrics: metrics, LeaseTTL: *leaseTTL, Holder: holder, LagWindow: *lagWindow})
	if *httpAddr != "" {
		srv, err := serveHTTP(*httpAddr, runner, reg, log, httpOptions{Token: cmp.Or(*httpToken, os.Getenv("PTOP_HTTP_TOKEN")), HistoryEvery: *historyEvery})
		if err != nil {
			fmt.Fprintf(stderr, "ptop run: --http: %v\n", err)
			return 1
		}
		defer func() { _ = srv.Close() }()
		log.Info("serving /metrics, /healthz and /status", "addr", srv.addr.String())
	}
	runner.Apply(specs)

	// SIGHUP re-reads the directory; reloads run one at a time.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			reload(log, runner, load)
		}
	}()

	err = runner.Wait(ctx)
	if ctx.Err() != nil {
		log.Info("stopping: draining and checkpointing")
		err = runner.Stop()
	}
	if err != nil {
		log.Error("ptop stopped with failed pillows", "error", err)
		return 1
	}
	log.Info("ptop stopped")
	return 0
}

// reload loads the directory again and applies it, or logs every problem
// and leaves the running pillows as they are.
func reload(log *slog.Logger, runner *engine.Runner, load func() ([]*engine.Spec, error)) {
	log.Info("SIGHUP: reloading")
	specs, err := load()
	if err != nil {
		var es engine.Errors
		if errors.As(err, &es) {
			for _, e := range es {
				log.Error("reload: invalid pillow", "problem", e.Error())
			}
		} else {
			log.Error("reload: invalid pillow", "problem", err.Error())
		}
		res := runner.Refused(err)
		log.Error("reload refused: nothing changed", "problems", max(len(es), 1), "unchanged", strings.Join(res.Unchanged, ","))
		return
	}
	res := runner.Apply(specs)
	log.Info("reload applied",
		"started", strings.Join(res.Started, ","), "stopped", strings.Join(res.Stopped, ","),
		"restarted", strings.Join(res.Restarted, ","), "unchanged", strings.Join(res.Unchanged, ","))
}
