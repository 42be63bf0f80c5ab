package listener

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ListenTCP opens a TCP listening socket on addr with SO_REUSEPORT (so a
// second process can take over the address during a restart), IPV6_V6ONLY
// on IPv6 sockets, and SO_TIMESTAMPNS, which accepted sockets inherit.
// Options the kernel refuses are returned as warnings, never ignored.
func ListenTCP(ctx context.Context, addr netip.AddrPort) (*net.TCPListener, []string, error) {
	network := "tcp4"
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		network = "tcp6"
	}
	var warnings []string
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
				serr = fmt.Errorf("setting SO_REUSEPORT: %w", err)
				return
			}
			if network == "tcp6" {
				if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
					warnings = append(warnings, fmt.Sprintf("IPV6_V6ONLY: %v", err))
				}
			}
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
				warnings = append(warnings, fmt.Sprintf("SO_TIMESTAMPNS: %v", err))
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(ctx, network, addr.String())
	if err != nil {
		return nil, nil, fmt.Errorf("listening on tcp %s: %w", addr, err)
	}
	return ln.(*net.TCPListener), warnings, nil
}

// DialTCP connects to addr from a kernel-chosen port with SO_TIMESTAMPNS on,
// so answers read with a StampReader carry kernel receive times. It reports
// whether the option took.
func DialTCP(ctx context.Context, addr netip.AddrPort) (*net.TCPConn, bool, error) {
	network := "tcp4"
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		network = "tcp6"
	}
	ts := false
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			ts = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) == nil
		})
	}}
	c, err := d.DialContext(ctx, network, addr.String())
	if err != nil {
		return nil, false, fmt.Errorf("connecting to upstream tcp %s: %w", addr, err)
	}
	return c.(*net.TCPConn), ts, nil
}

// setupAccepted turns on SO_TIMESTAMPNS on an accepted socket (Linux
// inherits it from the listener; setting it again costs one syscall per
// connection and makes a listener without it still stamp) and applies a
// fixed send buffer when sndbuf > 0 (which turns off the kernel's
// autotuning for that socket: tests use it to make a non-reading client
// block the writer quickly).
func setupAccepted(rc syscall.RawConn, sndbuf int) (timestamps bool) {
	_ = rc.Control(func(fd uintptr) {
		timestamps = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) == nil
		if sndbuf > 0 {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf)
		}
	})
	return timestamps
}

// tcpOOBSize fits one SCM_TIMESTAMPNS control message with room to spare
// (the kernel sends nothing else on a TCP socket with our options).
var tcpOOBSize = unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))) + 32

// StampReader reads a TCP socket with recvmsg(2) so every read returns the
// kernel receive time (SO_TIMESTAMPNS) of the data it delivered. Linux
// stamps a TCP read with the time of the last socket buffer it consumed
// (tcp_recvmsg → tcp_update_recv_tstamps); segments that waited in the
// receive queue may have been merged into an earlier buffer and then carry
// that buffer's (earlier) time. One StampReader per connection, used by one
// goroutine; it allocates nothing per read.
type StampReader struct {
	rc    syscall.RawConn
	msg   unix.Msghdr
	iov   unix.Iovec
	oob   []byte
	fn    func(fd uintptr) bool
	n     int
	errno syscall.Errno
}

// NewStampReader returns a StampReader for c.
func NewStampReader(c *net.TCPConn) (*StampReader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &StampReader{}
	r.init(rc)
	return r, nil
}

func (r *StampReader) init(rc syscall.RawConn) {
	r.rc = rc
	r.oob = make([]byte, tcpOOBSize)
	r.fn = r.recv
}

func (r *StampReader) recv(fd uintptr) bool {
	for {
		r.msg.Control = &r.oob[0]
		r.msg.SetControllen(len(r.oob))
		r.msg.Flags = 0
		n, _, e := unix.RawSyscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&r.msg)), unix.MSG_DONTWAIT)
		if e == unix.EINTR {
			continue // Go's own reads retry EINTR; the poller may not wake again
		}
		if e == unix.EAGAIN {
			return false // park in the netpoller until readable (deadlines apply)
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// Read reads at most len(p) bytes, blocking until at least one is
// available, the connection's read deadline passes (os.ErrDeadlineExceeded)
// or it is closed (net.ErrClosed). stamp is the kernel receive time in Unix
// nanoseconds, 0 when the kernel gave none. End of stream is io.EOF.
func (r *StampReader) Read(p []byte) (n int, stamp int64, err error) {
	if len(p) == 0 {
		return 0, 0, nil
	}
	r.iov.Base = &p[0]
	r.iov.SetLen(len(p))
	r.msg.Iov = &r.iov
	r.msg.SetIovlen(1)
	r.n, r.errno = 0, 0
	if err := r.rc.Read(r.fn); err != nil {
		return 0, 0, err
	}
	if r.errno != 0 {
		return 0, 0, os.NewSyscallError("recvmsg", r.errno)
	}
	if r.n == 0 {
		return 0, 0, io.EOF
	}
	if cl := int(r.msg.Controllen); cl > 0 {
		stamp, _, _, _, _ = ParseControl(r.oob[:min(cl, len(r.oob))])
	}
	return r.n, stamp, nil
}

// ReadFull reads exactly len(p) bytes and returns the stamp of the read that
// completed them.
func (r *StampReader) ReadFull(p []byte) (stamp int64, err error) {
	got := 0
	for got < len(p) {
		n, st, err := r.Read(p[got:])
		got += n
		if n > 0 {
			stamp = st
		}
		if err != nil {
			if err == io.EOF && got > 0 {
				err = io.ErrUnexpectedEOF
			}
			return stamp, err
		}
	}
	return stamp, nil
}

// directWriter writes a length-prefixed message with one non-blocking
// writev(2), so a reply to a client that keeps up costs one syscall and no
// copy. It is used under the connection's write lock only.
type directWriter struct {
	rc    syscall.RawConn
	hdr   [2]byte
	iov   [2]unix.Iovec
	fn    func(fd uintptr)
	niov  int
	n     int
	errno syscall.Errno
}

func (w *directWriter) init(rc syscall.RawConn) {
	w.rc = rc
	w.fn = w.writev
}

func (w *directWriter) writev(fd uintptr) {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(w.niov))
		if e == unix.EINTR {
			continue
		}
		if e == unix.EAGAIN {
			e, n = 0, 0
		}
		w.n, w.errno = int(n), e
		return
	}
}

// write tries to send the 2-byte length and msg now. It returns how many of
// the len(msg)+2 bytes the kernel took (possibly 0 when the send buffer is
// full). Control is used, not Write, because Write refuses to run once a
// write deadline has passed, and this path never waits.
func (w *directWriter) write(msg []byte) (int, error) {
	w.hdr[0], w.hdr[1] = byte(len(msg)>>8), byte(len(msg))
	w.iov[0].Base = &w.hdr[0]
	w.iov[0].SetLen(2)
	w.iov[1].Base = &msg[0]
	w.iov[1].SetLen(len(msg))
	w.niov = 2
	w.n, w.errno = 0, 0
	if err := w.rc.Control(w.fn); err != nil {
		return 0, err
	}
	// The iovecs point into msg; drop them so msg is not kept reachable.
	w.iov[1].Base = nil
	if w.errno != 0 {
		return 0, os.NewSyscallError("writev", w.errno)
	}
	return w.n, nil
}
