package testenv

import "syscall"

// sysProcAttr puts a child in its own process group (so anything it starts
// can be stopped with it) and makes the kernel kill it when the test binary
// dies, so a test killed by go test's -timeout leaves no DNS server running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup kills what is left of the process group a child led: only
// processes the harness started (the child and its descendants).
func killGroup(pid int) { _ = syscall.Kill(-pid, syscall.SIGKILL) }
