package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// output collects a child's stdout and stderr and lets a test wait for a
// line without polling: every Write closes the current "changed" channel.
type output struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// snapshot returns the complete lines so far and the channel that will be
// closed on the next write.
func (o *output) snapshot() ([]string, chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.buf.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		s = ""
	}
	var lines []string
	if s != "" {
		lines = strings.Split(s, "\n")
	}
	return lines, o.changed
}

// process is one child started by the harness.
type process struct {
	name    string
	cmd     *exec.Cmd
	out     *output
	done    chan struct{} // closed once Wait has returned
	waitErr error         // valid after done is closed
}

// startProcess starts path with args; stdout and stderr both go to out.
// The child is killed with SIGKILL if the test binary dies first
// (Pdeathsig on Linux), so a crashed or timed-out test leaves no server
// behind; it leads its own process group, which stop kills.
func startProcess(name, dir, path string, args ...string) (*process, error) {
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	out := newOutput()
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = sysProcAttr()
	// A descendant that keeps the output pipe open must not keep Wait
	// from returning once the child itself has exited.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

var errExited = errors.New("process exited")

// waitLine waits until a complete output line satisfies match, the process
// exits, or the deadline passes.
func (p *process) waitLine(match func(string) bool, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		lines, changed := p.out.snapshot()
		for _, l := range lines {
			if match(l) {
				return l, nil
			}
		}
		select {
		case <-changed:
		case <-p.done:
			// Output may have been written just before exit.
			lines, _ := p.out.snapshot()
			for _, l := range lines {
				if match(l) {
					return l, nil
				}
			}
			return "", fmt.Errorf("%s %w (%v) before the expected line", p.name, errExited, p.waitErr)
		case <-deadline.C:
			return "", fmt.Errorf("%s: expected line not seen within %v", p.name, timeout)
		}
	}
}

// stop sends sig and waits up to timeout for the process to exit; then it
// kills it. It reports whether the process exited within the timeout, and
// its wait error.
func (p *process) stop(sig syscall.Signal, timeout time.Duration) (bool, error) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(sig)
	}
	select {
	case <-p.done:
		killGroup(p.pid()) // descendants left behind, if any
		return true, p.waitErr
	case <-time.After(timeout):
		killGroup(p.pid())
		_ = p.cmd.Process.Kill()
		<-p.done
		return false, p.waitErr
	}
}

// killOnCleanup registers a cleanup that stops p (SIGTERM, then SIGKILL
// after a bound) and logs its output when the test failed.
func killOnCleanup(t testing.TB, p *process) {
	t.Cleanup(func() {
		if ok, _ := p.stop(syscall.SIGTERM, 10*time.Second); !ok {
			t.Errorf("testenv: %s (pid %d) ignored SIGTERM for 10s and was killed", p.name, p.pid())
		}
		if t.Failed() {
			t.Logf("testenv: output of %s (pid %d):\n%s", p.name, p.pid(), p.out.String())
		}
	})
}
