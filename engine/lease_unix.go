//go:build unix

package engine

import (
	"errors"
	"os"
	"syscall"
)

// processGone reports whether no process pid exists.
func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// pidNamespace names this process's PID namespace ("" when unknown: then
// no holder is ever judged gone by its pid).
func pidNamespace() string {
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return ""
	}
	return ns
}
