// Package sdnotify is a minimal client of systemd's service notification
// protocol (sd_notify(3)): it sends READY=1, RELOADING=1, STOPPING=1 and
// STATUS=... as one datagram each to the unix datagram socket named by
// $NOTIFY_SOCKET, so that a Type=notify unit is marked started only once
// every socket is bound.
//
// Owns: the wire format (newline-separated VAR=value assignments in one
// datagram) and addressing (a path, or an abstract socket name written with
// a leading '@', which is sent with a leading NUL byte instead). The
// AF_VSOCK form "vsock:CID:PORT" (systemd >= 253, for VMs) is not
// supported: Notify returns the connection error.
//
// Must never: block the caller for long (a send is one non-blocking
// datagram; a full or missing receiver is an error, not a wait), depend on
// libsystemd or any module beyond the standard library and golang.org/x/sys
// (for CLOCK_MONOTONIC), or do anything at
// all when $NOTIFY_SOCKET is unset or empty (every method is then a no-op
// returning nil, so callers need no "am I under systemd?" branch). It does
// not unset $NOTIFY_SOCKET (that would mutate process-wide state); callers
// that start children decide that themselves.
package sdnotify
