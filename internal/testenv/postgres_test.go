//go:build unix

package testenv

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestPostgresStartStopRestart(t *testing.T) {
	t.Parallel()
	pg := StartPostgres(t)
	if pg.Host != "127.0.0.1" || pg.Port == 0 {
		t.Fatalf("host %q port %d", pg.Host, pg.Port)
	}
	if want := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/ptop?sslmode=disable", pg.Port); pg.DSN() != want {
		t.Fatalf("DSN %q, want %q", pg.DSN(), want)
	}
	pg.Exec(t, "CREATE TABLE x (a int primary key, s text); INSERT INTO x VALUES (1, 'one')")
	pg.Exec(t, "INSERT INTO x VALUES ($1, $2)", 2, "two")
	rows := pg.Query(t, pg.DSN(), "SELECT a, s FROM x ORDER BY a")
	if fmt.Sprint(rows) != "[[1 one] [2 two]]" {
		t.Fatalf("rows %v", rows)
	}
	if got := pg.Query(t, pg.DSN(), "SHOW fsync")[0][0]; got != "off" {
		t.Fatalf("fsync = %v", got)
	}

	// A client sees the shutdown, and the data survives it.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	pg.Stop(t)
	if pg.Running() {
		t.Fatal("running after Stop")
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a query succeeded on a stopped server")
	}
	port := pg.Port
	pg.Restart(t)
	if pg.Port != port || !pg.Running() {
		t.Fatalf("restarted on port %d (was %d), running %v", pg.Port, port, pg.Running())
	}
	if n := pg.Query(t, pg.DSN(), "SELECT count(*) FROM x")[0][0]; n != int64(2) {
		t.Fatalf("count after restart %v", n)
	}

	// SIGKILL: committed data is recovered from the log.
	pg.Exec(t, "INSERT INTO x VALUES (3, 'three')")
	pg.Kill(t)
	pg.Restart(t)
	if n := pg.Query(t, pg.DSN(), "SELECT count(*) FROM x")[0][0]; n != int64(3) {
		t.Fatalf("count after kill %v", n)
	}
}

func TestPostgresCleanup(t *testing.T) {
	t.Parallel()
	var dir string
	var pid int
	t.Run("inner", func(t *testing.T) {
		pg := StartPostgres(t)
		dir = pg.Dir
		pid = pg.proc.cmd.Process.Pid
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory %s still there: %v", dir, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("postgres pid %d still alive after the test", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie ("Z") has exited.
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

// NewDatabase gives each test of a shared cluster (SharedPostgres, used by
// builtins/postgres, whose TestMain removes it) a database of its own.
func TestPostgresNewDatabase(t *testing.T) {
	t.Parallel()
	pg := StartPostgres(t)
	a, b := pg.NewDatabase(t), pg.NewDatabase(t)
	if a == b {
		t.Fatalf("same database twice: %s", a)
	}
	pg.ExecIn(t, a, "CREATE TABLE only_in_a (x int)")
	if n := pg.Query(t, b, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'")[0][0]; n != int64(0) {
		t.Fatalf("table of database a seen in b")
	}
}

func TestPostgresBinDir(t *testing.T) {
	dir, err := PostgresBinDir()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PTOP_PG_BINDIR", t.TempDir())
	if _, err := PostgresBinDir(); err == nil || !strings.Contains(err.Error(), "no initdb") {
		t.Fatalf("bad PTOP_PG_BINDIR: %v", err)
	}
	t.Setenv("PTOP_PG_BINDIR", dir)
	if got, err := PostgresBinDir(); got != dir || err != nil {
		t.Fatalf("PTOP_PG_BINDIR=%s: %s, %v", dir, got, err)
	}
}
