package responder

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// reusePort sets SO_REUSEPORT so several sockets share one port and the
// kernel spreads flows over them.
func reusePort(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting SO_REUSEPORT: %w", serr)
	}
	return nil
}

// setBuffers sets the socket buffers, trying the FORCE variants (which need
// CAP_NET_ADMIN and ignore rmem_max/wmem_max) before the plain ones.
func setBuffers(c *net.UDPConn, rcv, snd int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		set := func(force, plain, size int) error {
			if size <= 0 {
				return nil
			}
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, size) == nil {
				return nil
			}
			return unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, plain, size)
		}
		serr = errors.Join(set(unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, rcv),
			set(unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, snd))
	})
	return errors.Join(err, serr)
}

// batch is one worker's preallocated recvmmsg/sendmmsg state. Everything a
// packet touches is allocated here once; the loop allocates nothing.
type batch struct {
	rbuf, wbuf []byte // n × readBufLen, n × MaxAnswerLen
	names      []unix.RawSockaddrInet6
	riov, wiov []unix.Iovec
	rhdr, whdr []unix.Mmsghdr

	// Results of the RawConn callbacks; fields, not closure variables, so
	// the callbacks are created once.
	nmsg  int
	errno syscall.Errno
	wfrom int // first whdr entry still to send
	wto   int // one past the last
}

func newBatch(n int) *batch {
	b := &batch{
		rbuf:  make([]byte, n*readBufLen),
		wbuf:  make([]byte, n*MaxAnswerLen),
		names: make([]unix.RawSockaddrInet6, n),
		riov:  make([]unix.Iovec, n),
		wiov:  make([]unix.Iovec, n),
		rhdr:  make([]unix.Mmsghdr, n),
		whdr:  make([]unix.Mmsghdr, n),
	}
	for i := range n {
		b.riov[i].Base = &b.rbuf[i*readBufLen]
		b.riov[i].SetLen(readBufLen)
		b.rhdr[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.rhdr[i].Hdr.Iov = &b.riov[i]
		b.rhdr[i].Hdr.SetIovlen(1)
		b.wiov[i].Base = &b.wbuf[i*MaxAnswerLen]
		b.whdr[i].Hdr.Iov = &b.wiov[i]
		b.whdr[i].Hdr.SetIovlen(1)
	}
	return b
}

// recv is the RawConn.Read callback: one non-blocking recvmmsg. It returns
// false on EAGAIN so the runtime poller waits for the socket; EINTR is
// retried here, because the poller is edge-triggered and would not wake for
// data that is already queued.
//
// recv and send use RawSyscall, as the listener does (listener/conn_linux.go):
// with MSG_DONTWAIT they never block, and syscall.Syscall's hand-off to the
// scheduler woke sysmon. At 20 000 qps, alone on the proxy's CPU (bench/run.sh
// direct-cross), the responder used 16 CPU µs per query with Syscall and 9.2
// with RawSyscall: CPU the load CPU no longer spends beside dnsperf.
func (b *batch) recv(fd uintptr) bool {
	for i := range b.rhdr {
		b.rhdr[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		b.rhdr[i].Hdr.Flags = 0
	}
	n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.rhdr[0])),
		uintptr(len(b.rhdr)), unix.MSG_DONTWAIT, 0, 0)
	for e == unix.EINTR {
		n, _, e = unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.rhdr[0])),
			uintptr(len(b.rhdr)), unix.MSG_DONTWAIT, 0, 0)
	}
	if e == unix.EAGAIN {
		return false
	}
	b.nmsg, b.errno = int(n), e
	return true
}

// send is the RawConn.Write callback: one sendmmsg of whdr[wfrom:wto].
func (b *batch) send(fd uintptr) bool {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.whdr[b.wfrom])),
		uintptr(b.wto-b.wfrom), unix.MSG_DONTWAIT, 0, 0)
	for e == unix.EINTR {
		n, _, e = unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.whdr[b.wfrom])),
			uintptr(b.wto-b.wfrom), unix.MSG_DONTWAIT, 0, 0)
	}
	if e == unix.EAGAIN {
		return false
	}
	b.nmsg, b.errno = int(n), e
	return true
}

// serveConn is one worker: read a batch, answer each datagram into the
// write slab, send the answers in one sendmmsg (repeated for partial sends),
// until the socket is closed.
func serveConn(c *net.UDPConn, z *Zone, ctr *counters, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	b := newBatch(n)
	recv, send := b.recv, b.send
	for {
		if err := rc.Read(recv); err != nil {
			if isClosed(err) {
				return nil
			}
			return fmt.Errorf("recvmmsg: %w", err)
		}
		if b.errno != 0 {
			return fmt.Errorf("recvmmsg: %w", b.errno)
		}
		got := b.nmsg
		ctr.received.Add(uint64(got))
		k := 0
		for i := 0; i < got; i++ {
			h := &b.rhdr[i]
			if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
				ctr.truncated.Add(1)
				continue
			}
			q := b.rbuf[i*readBufLen : i*readBufLen+int(h.Len)]
			out := b.wbuf[k*MaxAnswerLen : (k+1)*MaxAnswerLen]
			m, o := z.Answer(out, q)
			ctr.outcomes[o].Add(1)
			if m == 0 {
				continue
			}
			b.wiov[k].SetLen(m)
			b.whdr[k].Hdr.Name = h.Hdr.Name
			b.whdr[k].Hdr.Namelen = h.Hdr.Namelen
			k++
		}
		b.wfrom, b.wto = 0, k
		for b.wfrom < b.wto {
			if err := rc.Write(send); err != nil {
				if isClosed(err) {
					return nil
				}
				return fmt.Errorf("sendmmsg: %w", err)
			}
			if b.errno != 0 || b.nmsg <= 0 {
				// The first message failed: count it and go on with the
				// rest (e.g. EPERM from a firewall, EMSGSIZE).
				ctr.sendFailed.Add(1)
				b.wfrom++
				continue
			}
			ctr.sent.Add(uint64(b.nmsg))
			b.wfrom += b.nmsg
		}
	}
}
