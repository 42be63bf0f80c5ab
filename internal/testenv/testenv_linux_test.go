package testenv

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestStopKillsDescendants: a child that leaves a descendant holding its
// output pipe must still be stopped within a bound, and the descendant
// killed with it.
func TestStopKillsDescendants(t *testing.T) {
	p, err := startProcess("sh", t.TempDir(), "/bin/sh", "-c", "sleep 600 & echo child=$!; wait")
	if err != nil {
		t.Fatal(err)
	}
	line, err := p.waitLine(func(l string) bool { return strings.HasPrefix(l, "child=") }, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var child int
	if _, err := fmt.Sscanf(line, "child=%d", &child); err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	if ok, _ := p.stop(syscall.SIGTERM, time.Minute); !ok {
		t.Fatal("sh did not exit on SIGTERM")
	}
	// stop killed the group: wait (bounded) for the descendant to exit.
	// A pidfd becomes readable when the process exits, child or not.
	fd, err := unix.PidfdOpen(child, 0)
	if err != nil {
		if err == unix.ESRCH {
			return // already gone and reaped
		}
		t.Fatalf("pidfd_open(%d): %v", child, err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int((30 * time.Second).Milliseconds()))
	if err != nil || n != 1 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		t.Fatalf("descendant %d still running 30s after stop (poll %d, %v): %s", child, n, err, b)
	}
}
