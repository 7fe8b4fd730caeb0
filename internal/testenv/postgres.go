//go:build unix

package testenv

// PostgreSQL for tests: a throwaway cluster made with initdb (PostgreSQL 15
// from Debian's packages, which scripts/test.sh prepare installs).
//
//	pg := testenv.StartPostgres(t)           // a cluster of its own
//	pg.Exec(t, "CREATE TABLE x (a int)")
//	// ... point the code under test at pg.DSN() ...
//	pg.Stop(t); pg.Restart(t)                 // same port, same data
//
//	dsn := testenv.SharedPostgres(t).NewDatabase(t)   // one cluster per test binary,
//	                                                  // a fresh database per test
//
// The cluster listens on 127.0.0.1 on a free port (its unix socket is in its
// own temporary directory), trusts every local connection, and runs with
// fsync=off: fast, and safe against a kill of the server (a commit is
// durable once acknowledged), not against a crash of the machine. The superuser is "postgres" and the database "ptop".
//
// initdb and postgres refuse to run as root; as root (CI) they run as the
// "postgres" user when there is one, else as "nobody", and the cluster's
// directory is theirs.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresInstall is the command that installs the server on Debian.
const PostgresInstall = "apt-get update && apt-get install -y postgresql-15"

// Postgres is a PostgreSQL cluster started for tests.
type Postgres struct {
	Host string // 127.0.0.1
	Port int
	User string // the superuser, "postgres"
	DB   string // the database made at start, "ptop"
	// Dir holds the cluster: data/, sock/ (the unix socket) and server.log.
	Dir string

	bin     string              // directory of initdb and postgres
	cred    *syscall.Credential // who runs the server; nil for the current user
	dataDir string
	sockDir string
	logPath string

	mu   sync.Mutex
	proc *pgProc // nil when not running
}

type pgProc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// StartPostgres makes and starts a cluster of its own for t on a free
// loopback port, with a database "ptop". It is killed and removed when the
// test ends. Tests that stop or restart the server need one of their own;
// others can share one with SharedPostgres.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	Integration(t, "starts PostgreSQL")
	p, err := startPostgres()
	if p != nil {
		t.Cleanup(p.destroy)
	}
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

var shared struct {
	mu  sync.Mutex
	pg  *Postgres
	err error
}

// SharedPostgres returns the test binary's shared cluster, starting it on
// first use. Tests must not stop it; each should work in its own database
// (NewDatabase) or its own tables. Call StopSharedPostgres from TestMain to
// remove it at the end; otherwise the server dies with the test binary
// (Linux) but its temporary directory stays.
func SharedPostgres(t testing.TB) *Postgres {
	t.Helper()
	Integration(t, "starts PostgreSQL")
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.pg == nil && shared.err == nil {
		shared.pg, shared.err = startPostgres()
		if shared.err != nil && shared.pg != nil {
			shared.pg.destroy()
			shared.pg = nil
		}
	}
	if shared.err != nil {
		t.Fatalf("testenv: %v", shared.err)
	}
	return shared.pg
}

// StopSharedPostgres kills the shared cluster, if one was started, and
// removes its directory.
func StopSharedPostgres() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.pg != nil {
		shared.pg.destroy()
		shared.pg = nil
	}
}

// DSN is the connection string of the cluster's "ptop" database.
func (p *Postgres) DSN() string { return p.DSNFor(p.DB) }

// DSNFor is the connection string of database db.
func (p *Postgres) DSNFor(db string) string {
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", p.User, p.Host, p.Port, db)
}

var dbSeq atomic.Int64

var nonWord = regexp.MustCompile(`[^a-z0-9_]+`)

// NewDatabase creates a database for t (named after the test) and returns
// its connection string; it is dropped when the test ends.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	name := nonWord.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	name = fmt.Sprintf("t%d_%s", dbSeq.Add(1), name)
	p.Exec(t, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	t.Cleanup(func() {
		if !p.Running() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, p.DSNFor("postgres")); err == nil {
			conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			conn.Close(ctx)
		}
	})
	return p.DSNFor(name)
}

// Exec runs SQL (several statements when there are no args) in the "ptop"
// database and fails the test on error.
func (p *Postgres) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	p.ExecIn(t, p.DSN(), sql, args...)
}

// ExecIn runs SQL in the database of dsn and fails the test on error.
func (p *Postgres) ExecIn(t testing.TB, dsn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("testenv: connect to postgres: %v\n%s", err, p.LogTail())
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("testenv: %s: %v", sql, err)
	}
}

// Query runs a query in the database of dsn and returns its rows, each a
// slice of column values as pgx decodes them (int64, string, time.Time,
// map[string]any for jsonb, nil for NULL, …). It fails the test on error.
func (p *Postgres) Query(t testing.TB, dsn, sql string, args ...any) [][]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("testenv: connect to postgres: %v\n%s", err, p.LogTail())
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("testenv: %s: %v", sql, err)
	}
	var out [][]any
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatalf("testenv: %s: %v", sql, err)
		}
		out = append(out, vals)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("testenv: %s: %v", sql, err)
	}
	return out
}

// Stop shuts the server down ("fast" shutdown: clients are disconnected,
// the data is written) and waits for it to exit, killing it after 10 s. It
// does nothing when the server is not running.
func (p *Postgres) Stop(t testing.TB) {
	t.Helper()
	if err := p.kill(syscall.SIGINT, 10*time.Second); err != nil {
		t.Fatalf("testenv: stop postgres: %v", err)
	}
}

// Kill kills the server and its backends with SIGKILL and waits for them to
// exit. The next start recovers from the write-ahead log.
func (p *Postgres) Kill(t testing.TB) {
	t.Helper()
	if err := p.kill(syscall.SIGKILL, 0); err != nil {
		t.Fatalf("testenv: kill postgres: %v", err)
	}
}

// Restart stops a running server (Stop) and starts it again on the same
// port with the same data, waiting until it accepts connections.
func (p *Postgres) Restart(t testing.TB) {
	t.Helper()
	p.Stop(t)
	if err := p.startRetrying(5 * time.Second); err != nil {
		t.Fatalf("testenv: restart postgres: %v\n%s", err, p.LogTail())
	}
}

// Running reports whether the server process is alive.
func (p *Postgres) Running() bool {
	p.mu.Lock()
	pr := p.proc
	p.mu.Unlock()
	if pr == nil {
		return false
	}
	return !exited(pr.done)
}

// LogTail returns the end of the server's log, for failure messages.
func (p *Postgres) LogTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no postgres log: %v)", err)
	}
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return "--- postgres log (" + p.logPath + ") ---\n" + strings.Join(lines, "\n")
}

// PostgresBinDir returns the directory holding initdb and postgres:
// $PTOP_PG_BINDIR if set, else that of the initdb on PATH (symlinks
// resolved), else the newest /usr/lib/postgresql/*/bin (Debian keeps them
// off PATH there).
func PostgresBinDir() (string, error) {
	ok := func(dir string) bool {
		for _, b := range []string{"initdb", "postgres"} {
			if st, err := os.Stat(filepath.Join(dir, b)); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv("PTOP_PG_BINDIR"); dir != "" {
		if !ok(dir) {
			return "", fmt.Errorf("PTOP_PG_BINDIR=%s has no initdb and postgres", dir)
		}
		return dir, nil
	}
	if path, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(path); err == nil && ok(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
		if ok(filepath.Dir(path)) {
			return filepath.Dir(path), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if ok(d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("PostgreSQL not found (no initdb on PATH nor in /usr/lib/postgresql/*/bin): install it with `%s` (scripts/test.sh prepare does), or set PTOP_PG_BINDIR", PostgresInstall)
}

// pgVersion is the major version in /usr/lib/postgresql/VERSION/bin.
func pgVersion(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// serverUser returns who runs initdb and postgres: nil (this process's
// user) unless running as root, which PostgreSQL refuses.
func serverUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: false, Groups: []uint32{}}, nil
	}
	return nil, errors.New("running as root, and there is no user postgres or nobody to run PostgreSQL as (it refuses root)")
}

// startPostgres makes a cluster and starts it. On error the returned
// Postgres, if not nil, still needs destroy.
func startPostgres() (*Postgres, error) {
	bin, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverUser()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ptop-pg-")
	if err != nil {
		return nil, err
	}
	p := &Postgres{
		Host: "127.0.0.1", User: "postgres", DB: "ptop", Dir: dir,
		bin: bin, cred: cred,
		dataDir: filepath.Join(dir, "data"),
		sockDir: filepath.Join(dir, "sock"),
		logPath: filepath.Join(dir, "server.log"),
	}
	// The server's user must reach its directories.
	if err := os.Chmod(dir, 0o755); err != nil {
		return p, err
	}
	for _, d := range []string{p.dataDir, p.sockDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return p, err
		}
		if cred != nil {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return p, err
			}
		}
	}
	initdb := p.command(filepath.Join(bin, "initdb"), "-D", p.dataDir, "-U", p.User,
		"--auth=trust", "--no-sync", "--no-instructions", "--locale=C", "--encoding=UTF8")
	if out, err := initdb.CombinedOutput(); err != nil {
		return p, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	// The port from FreePort can be taken before the server binds it.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if p.Port, err = FreePort(); err != nil {
			return p, err
		}
		if lastErr = p.start(); lastErr == nil || !p.logContains("already in use") {
			break
		}
	}
	if lastErr != nil {
		return p, fmt.Errorf("%v\n%s", lastErr, p.LogTail())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSNFor("postgres"))
	if err != nil {
		return p, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+p.DB); err != nil {
		return p, err
	}
	return p, nil
}

// command prepares a PostgreSQL program to run as the server's user, with
// no PG* variables of ours leaking in.
func (p *Postgres) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = p.Dir
	env := []string{"LC_ALL=C", "TZ=UTC"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "LC_") && !strings.HasPrefix(kv, "LANG") && !strings.HasPrefix(kv, "TZ=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	cmd.SysProcAttr = sysProcAttr()
	cmd.SysProcAttr.Credential = p.cred
	return cmd
}

// startRetrying starts the server, trying again for a while when the port
// or the shared memory of a killed predecessor is not released yet.
func (p *Postgres) startRetrying(patience time.Duration) error {
	deadline := time.Now().Add(patience)
	for {
		err := p.start()
		if err == nil || time.Now().After(deadline) ||
			!(p.logContains("already in use") || p.logContains("pre-existing shared memory") || p.logContains("lock file")) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// start launches postgres on p.Port and waits until it accepts
// connections; on failure the process is killed and the error returned.
func (p *Postgres) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		return errors.New("postgres is already running")
	}
	// Start each attempt with an empty log, so that the retry checks see
	// only this attempt's messages.
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := p.command(filepath.Join(p.bin, "postgres"), "-D", p.dataDir,
		"-p", strconv.Itoa(p.Port),
		"-k", p.sockDir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=100",
		"-c", "shared_buffers=64MB",
		"-c", "log_min_messages=warning",
		"-c", "logging_collector=off",
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	pr := &pgProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		pr.waitErr = cmd.Wait()
		close(pr.done)
	}()
	p.proc = pr
	if err := p.waitReady(pr); err != nil {
		signalGroup(pr.cmd, syscall.SIGKILL)
		<-pr.done
		waitGroupGone(pr.cmd.Process.Pid, 5*time.Second)
		p.proc = nil
		return err
	}
	return nil
}

// waitReady connects until the server answers, exits or StartTimeout passes.
func (p *Postgres) waitReady(pr *pgProc) error {
	deadline := time.Now().Add(StartTimeout)
	for {
		select {
		case <-pr.done:
			return fmt.Errorf("postgres on port %d exited during startup: %v", p.Port, pr.waitErr)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, p.DSNFor("postgres"))
		if err == nil {
			conn.Close(ctx)
			cancel()
			select {
			case <-pr.done: // someone else answered on this port
				return fmt.Errorf("postgres on port %d exited during startup: %v", p.Port, pr.waitErr)
			default:
				return nil
			}
		}
		cancel()
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections on port %d within %v (last error: %v)", p.Port, StartTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill signals the server's process group and waits for the postmaster and
// its backends to exit; with grace > 0 it sends SIGKILL after grace.
func (p *Postgres) kill(sig syscall.Signal, grace time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr := p.proc
	if pr == nil {
		return nil
	}
	p.proc = nil
	if sig == syscall.SIGKILL {
		signalGroup(pr.cmd, sig)
	} else {
		// Shutdown signals go to the postmaster only: it stops its backends.
		_ = pr.cmd.Process.Signal(sig)
	}
	if err := awaitExit(pr.cmd, pr.done, sig, grace); err != nil {
		return err
	}
	if sig == syscall.SIGKILL {
		// Backends hold the shared memory a new postmaster checks.
		signalGroup(pr.cmd, syscall.SIGKILL)
		waitGroupGone(pr.cmd.Process.Pid, 10*time.Second)
	}
	return nil
}

// waitGroupGone waits until no process is left in process group pgid.
func waitGroupGone(pgid int, patience time.Duration) {
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// destroy kills the server and removes its directory.
func (p *Postgres) destroy() {
	_ = p.kill(syscall.SIGKILL, 0)
	_ = os.RemoveAll(p.Dir)
}

func (p *Postgres) logContains(s string) bool {
	b, err := os.ReadFile(p.logPath)
	return err == nil && strings.Contains(string(b), s)
}
