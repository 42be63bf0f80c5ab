package fstrm

import (
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawWriter writes a connection's buffer with a raw, non-blocking send(2).
//
// net.Conn.Write goes through syscall.Syscall, which tells the Go scheduler
// the thread may block: that wakes the runtime's sysmon thread from its
// idle sleep, and sysmon then polls every 20 µs for a while. With one CPU
// and dnstap to a socket, those wake-ups were the largest cost after the
// packets themselves at 20 000 qps (bench/RESULTS.md). A send with
// MSG_DONTWAIT never blocks, so it needs no such hand-off; only when the
// socket buffer is full does the write wait, in the netpoller, under the
// caller's deadline. MSG_NOSIGNAL: a collector that went away gives EPIPE,
// not a signal.
type rawWriter struct {
	rc    syscall.RawConn
	fn    func(fd uintptr) bool // built once: a closure per write would allocate
	b     []byte
	err   error
	block bool
	waits *atomic.Uint64 // counts the writes that had to wait
}

func newRawWriter(c syscall.Conn, waits *atomic.Uint64) *rawWriter {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	w := &rawWriter{rc: rc, waits: waits}
	w.fn = w.send
	return w
}

func (w *rawWriter) send(fd uintptr) bool {
	for len(w.b) > 0 {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&w.b[0])), uintptr(len(w.b)),
			unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			w.b = w.b[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			return !w.block // wait in the netpoller only on the blocking pass
		default:
			w.err = os.NewSyscallError("send", e)
			return true
		}
	}
	return true
}

// write writes all of b to nc (the connection w was made from). It first
// tries without waiting; only if the socket buffer is full does it set
// nc's write deadline and wait for room.
func (w *rawWriter) write(b []byte, nc net.Conn, deadline time.Time) error {
	w.b, w.err, w.block = b, nil, false
	defer func() { w.b = nil }()
	if err := w.rc.Write(w.fn); err != nil {
		return err
	}
	if w.err != nil || len(w.b) == 0 {
		return w.err
	}
	// The deadline is cleared again afterwards: a deadline left in the
	// past would fail the next write's first, non-waiting try.
	w.waits.Add(1)
	_ = nc.SetWriteDeadline(deadline)
	defer func() { _ = nc.SetWriteDeadline(time.Time{}) }()
	w.block = true
	if err := w.rc.Write(w.fn); err != nil {
		return err
	}
	return w.err
}
