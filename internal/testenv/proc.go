//go:build unix

package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test servers run in process groups of their own (Setpgid), so that a
// signal reaches the server and whatever it started.

// signalGroup signals cmd's process group, or cmd alone if the group is
// gone.
func signalGroup(cmd *exec.Cmd, sig syscall.Signal) {
	if err := syscall.Kill(-cmd.Process.Pid, sig); err != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// exited reports whether done, closed when a server process exits, is.
func exited(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// awaitExit waits for a signalled server to exit: with grace > 0 its group
// is sent SIGKILL after grace; after 30 s more it gives up.
func awaitExit(cmd *exec.Cmd, done <-chan struct{}, sig syscall.Signal, grace time.Duration) error {
	if grace > 0 {
		select {
		case <-done:
			return nil
		case <-time.After(grace):
			signalGroup(cmd, syscall.SIGKILL)
		}
	}
	select {
	case <-done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("pid %d did not exit after signal %v", cmd.Process.Pid, sig)
	}
}

// Integration marks t as an integration test: what it needs starts a real
// server, a browser or the ptop binary. Under `go test -short` (the unit
// tier) it is skipped; but never in CI (CI set, as on the CI machine):
// there a skipped integration test would hide a missing service, so
// -short fails the test instead.
func Integration(t testing.TB, needs string) {
	t.Helper()
	if !testing.Short() {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("integration test (%s) under -short with CI set: CI runs every integration test", needs)
	}
	t.Skipf("integration test: %s; runs without -short", needs)
}

// logTail returns the last lines (up to 40, from the last 8 KB) of the log
// of the server named name at path, for failure messages.
func logTail(path, name string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return "--- " + name + " log (" + path + ") ---\n" + strings.Join(lines, "\n")
}

var swept sync.Map // prefix -> struct{}

// sweepStaleDirs removes, once per test binary and prefix, the scratch
// directories PREFIX<pid>-* under the system temp dir of test binaries that
// have exited (a shared server's directory outlives its test).
func sweepStaleDirs(prefix string) {
	if _, done := swept.LoadOrStore(prefix, struct{}{}); done {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*-*"))
	for _, d := range dirs {
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), prefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
}
