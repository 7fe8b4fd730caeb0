package testenv

import "syscall"

// sysProcAttr puts the server in its own process group (so Kill reaches any
// children too) and has the kernel kill it if the test binary dies without
// running its cleanups (panic, -timeout). Pdeathsig fires when the OS thread
// that started the child exits; the Go runtime only ends threads of goroutines
// that exit while locked with runtime.LockOSThread.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
