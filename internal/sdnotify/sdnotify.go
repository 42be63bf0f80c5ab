package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// EnvSocket is the environment variable systemd sets for Type=notify units.
const EnvSocket = "NOTIFY_SOCKET"

// ErrBadState is returned for a state that cannot be sent: a STATUS text
// with a newline would be read as a second assignment.
var ErrBadState = errors.New("sdnotify: invalid state")

// writeTimeout bounds one send: systemd reads its notify socket promptly,
// and a receiver that does not must not stall the caller (the datagram
// socket is non-blocking underneath; the deadline covers the rest).
const writeTimeout = time.Second

// Notifier sends notifications to one socket. The zero value and a nil
// *Notifier are valid and do nothing.
type Notifier struct {
	addr *net.UnixAddr
}

// New returns a Notifier for the given socket address ("" gives a no-op
// Notifier). An address starting with '@' names an abstract socket.
func New(socket string) *Notifier {
	if socket == "" {
		return &Notifier{}
	}
	// The Go runtime maps a leading '@' to the abstract namespace (a
	// leading NUL in sun_path) on Linux, which is what systemd means by it.
	return &Notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}}
}

// FromEnv returns a Notifier for $NOTIFY_SOCKET.
func FromEnv() *Notifier { return New(os.Getenv(EnvSocket)) }

// Enabled reports whether notifications go anywhere.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// Notify sends the given assignments ("READY=1", "STATUS=...") in one
// datagram. With no socket it does nothing and returns nil.
func (n *Notifier) Notify(assignments ...string) error {
	if !n.Enabled() || len(assignments) == 0 {
		return nil
	}
	for _, a := range assignments {
		if !strings.Contains(a, "=") || strings.ContainsAny(a, "\n\x00") {
			return fmt.Errorf("%w: %q (want one VAR=value without newlines)", ErrBadState, a)
		}
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sdnotify: connecting to %s: %w", n.addr.Name, err)
	}
	defer c.Close()
	if err := c.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	if _, err := c.Write([]byte(strings.Join(assignments, "\n") + "\n")); err != nil {
		return fmt.Errorf("sdnotify: sending to %s: %w", n.addr.Name, err)
	}
	return nil
}

// Ready tells systemd start-up is complete (every socket bound); status,
// if not empty, is sent along as STATUS=.
func (n *Notifier) Ready(status string) error {
	if status == "" {
		return n.Notify("READY=1")
	}
	return n.Notify("READY=1", "STATUS="+status)
}

// Reloading tells systemd a reload (SIGHUP) began; send Ready when it is
// done. MONOTONIC_USEC lets Type=notify-reload units (systemd >= 253) match
// the two.
func (n *Notifier) Reloading() error {
	if us, ok := monotonicUsec(); ok {
		return n.Notify("RELOADING=1", fmt.Sprintf("MONOTONIC_USEC=%d", us))
	}
	return n.Notify("RELOADING=1")
}

// Stopping tells systemd shutdown began (draining in-flight queries).
func (n *Notifier) Stopping() error { return n.Notify("STOPPING=1") }

// Status sets the free-form status line `systemctl status` shows.
func (n *Notifier) Status(s string) error { return n.Notify("STATUS=" + s) }
