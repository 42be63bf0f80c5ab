package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen opens a receiving unixgram socket like systemd's notify socket.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listening on %q: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv reads one datagram; the deadline only bounds a broken test.
func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("reading notification: %v", err)
	}
	return string(buf[:n])
}

// shortDir gives a socket directory whose paths fit sun_path (108 bytes);
// t.TempDir() under a long TMPDIR may not.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func TestNotifyPathSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "notify")
	c := listen(t, path)
	n := New(path)
	if !n.Enabled() {
		t.Fatal("not enabled with a socket")
	}
	steps := []struct {
		name string
		send func() error
		want string
	}{
		{"ready", func() error { return n.Ready("") }, "READY=1\n"},
		{"ready with status", func() error { return n.Ready("serving 2 sockets") }, "READY=1\nSTATUS=serving 2 sockets\n"},
		{"status", func() error { return n.Status("draining") }, "STATUS=draining\n"},
		{"stopping", n.Stopping, "STOPPING=1\n"},
		{"raw", func() error { return n.Notify("ERRNO=98", "STATUS=bind failed") }, "ERRNO=98\nSTATUS=bind failed\n"},
	}
	for _, s := range steps {
		if err := s.send(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := recv(t, c); got != s.want {
			t.Errorf("%s: got %q, want %q", s.name, got, s.want)
		}
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@tapproxy-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	c := listen(t, name)
	t.Setenv(EnvSocket, name)
	n := FromEnv()
	if err := n.Ready(""); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, c); got != "READY=1\n" {
		t.Errorf("got %q", got)
	}
}

func TestReloadingCarriesMonotonic(t *testing.T) {
	path := filepath.Join(shortDir(t), "notify")
	c := listen(t, path)
	if err := New(path).Reloading(); err != nil {
		t.Fatal(err)
	}
	got := recv(t, c)
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if lines[0] != "RELOADING=1" {
		t.Fatalf("got %q", got)
	}
	if len(lines) == 2 {
		v, ok := strings.CutPrefix(lines[1], "MONOTONIC_USEC=")
		if us, err := strconv.ParseInt(v, 10, 64); !ok || err != nil || us <= 0 {
			t.Errorf("bad MONOTONIC_USEC line %q", lines[1])
		}
	} else if len(lines) != 1 {
		t.Errorf("got %q", got)
	}
}

func TestNoSocketIsNoOp(t *testing.T) {
	t.Setenv(EnvSocket, "")
	for name, n := range map[string]*Notifier{"env": FromEnv(), "empty": New(""), "nil": nil, "zero": {}} {
		if n.Enabled() {
			t.Errorf("%s: enabled", name)
		}
		for _, err := range []error{n.Ready("x"), n.Stopping(), n.Status("x"), n.Reloading(), n.Notify("READY=1")} {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	path := filepath.Join(shortDir(t), "notify")
	c := listen(t, path)
	n := New(path)
	for _, bad := range []string{"STATUS=two\nlines", "READY", "X=\x00"} {
		if err := n.Notify(bad); !errors.Is(err, ErrBadState) {
			t.Errorf("Notify(%q) = %v, want ErrBadState", bad, err)
		}
	}
	// Nothing was sent for the refused states: the next datagram is ours.
	if err := n.Stopping(); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, c); got != "STOPPING=1\n" {
		t.Errorf("got %q", got)
	}
	// No receiver: an error, not a hang.
	gone := New(filepath.Join(shortDir(t), "nobody"))
	if err := gone.Ready(""); err == nil {
		t.Error("sending to a missing socket succeeded")
	}
}
