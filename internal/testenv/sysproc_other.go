//go:build !linux

package testenv

import "syscall"

// sysProcAttr: no process group or parent-death signal outside Linux;
// children are still stopped by t.Cleanup.
func sysProcAttr() *syscall.SysProcAttr { return nil }

func killGroup(int) {}
