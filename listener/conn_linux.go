package listener

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options are the socket settings for a listening or upstream socket.
type Options struct {
	// ReusePort sets SO_REUSEPORT so several sockets (one per worker)
	// share one address and the kernel spreads flows across them.
	ReusePort bool
	// RcvBuf and SndBuf, when > 0, request buffer sizes. SO_RCVBUFFORCE /
	// SO_SNDBUFFORCE are tried first (they need CAP_NET_ADMIN and ignore
	// net.core.rmem_max), then SO_RCVBUF / SO_SNDBUF.
	RcvBuf, SndBuf int
	// PktInfo asks for the destination address of each datagram; needed
	// on wildcard binds so replies leave from the address the client used.
	PktInfo bool
	// LocalAddr, when valid, is the address DialUDP binds before it
	// connects: an explicit source port chosen by the caller (upstream
	// source-port rotation, RFC 5452 §10). Invalid (the zero value): the
	// kernel picks the port. ListenUDP ignores it. A port in use fails
	// with an error that wraps syscall.EADDRINUSE.
	LocalAddr netip.AddrPort
}

// Features records which options the kernel accepted and the effective
// buffer sizes, so start-up can report them and metrics are registered only
// for what works (a refused option is never silent).
type Features struct {
	Timestamps  bool // SO_TIMESTAMPNS
	DropCounter bool // SO_RXQ_OVFL
	PktInfo     bool // IP_PKTINFO / IPV6_RECVPKTINFO
	ReusePort   bool
	RcvBuf      int // effective SO_RCVBUF as the kernel reports it
	SndBuf      int
	// Warnings lists each option the kernel refused, with the error.
	Warnings []string
}

// Conn is one UDP socket with batched, timestamped I/O.
type Conn struct {
	uc       *net.UDPConn
	rc       syscall.RawConn
	local    netip.AddrPort
	v6       bool
	wildcard bool
	features Features
	// drops is the largest count seen (SO_RXQ_OVFL, SO_MEMINFO): the
	// kernel's cumulative count of datagrams dropped on this socket's
	// receive queue.
	drops atomic.Uint32
	dfn   func(fd uintptr) // readDrops, built once: a closure per call would allocate
}

// ListenUDP opens a UDP socket bound to addr with the options applied.
func ListenUDP(ctx context.Context, addr netip.AddrPort, o Options) (*Conn, error) {
	network := "udp4"
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		network = "udp6"
	}
	var f Features
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = setupSocket(int(fd), network == "udp6", true, o, &f) })
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, network, addr.String())
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	uc := pc.(*net.UDPConn)
	return newConn(uc, f)
}

// DialUDP opens a UDP socket connected to addr, bound to a kernel-chosen
// random ephemeral port (RFC 5452 §10: source port randomisation). A
// connected socket only receives datagrams from addr, so the kernel already
// rejects most spoofed answers, and ICMP errors surface as ECONNREFUSED.
func DialUDP(ctx context.Context, addr netip.AddrPort, o Options) (*Conn, error) {
	network := "udp4"
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		network = "udp6"
	}
	var f Features
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = setupSocket(int(fd), network == "udp6", false, o, &f) })
		if err != nil {
			return err
		}
		return serr
	}}
	if o.LocalAddr.IsValid() {
		d.LocalAddr = net.UDPAddrFromAddrPort(o.LocalAddr)
	}
	c, err := d.DialContext(ctx, network, addr.String())
	if err != nil {
		return nil, fmt.Errorf("connecting to upstream %s: %w", addr, err)
	}
	return newConn(c.(*net.UDPConn), f)
}

func newConn(uc *net.UDPConn, f Features) (*Conn, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, err
	}
	la := uc.LocalAddr().(*net.UDPAddr).AddrPort()
	la = netip.AddrPortFrom(la.Addr().Unmap(), la.Port())
	c := &Conn{uc: uc, rc: rc, local: la, v6: la.Addr().Is6(), wildcard: la.Addr().IsUnspecified(), features: f}
	c.dfn = c.readDrops
	return c, nil
}

// setupSocket applies options before bind. Fatal errors are returned;
// options that only lose a feature are recorded in f.Warnings.
func setupSocket(fd int, v6, listening bool, o Options, f *Features) error {
	warn := func(opt string, err error) {
		f.Warnings = append(f.Warnings, fmt.Sprintf("%s: %v", opt, err))
	}
	if o.ReusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			// Without SO_REUSEPORT a second socket on the address cannot
			// bind: fatal for multi-worker listeners.
			return fmt.Errorf("setting SO_REUSEPORT: %w", err)
		}
		f.ReusePort = true
	}
	if v6 {
		// One family per socket: listen on 0.0.0.0 and :: separately, so
		// addresses are never v4-mapped.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			warn("IPV6_V6ONLY", err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		warn("SO_TIMESTAMPNS", err)
	} else {
		f.Timestamps = true
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1); err != nil {
		warn("SO_RXQ_OVFL", err)
	} else {
		f.DropCounter = true
	}
	if listening && o.PktInfo {
		var err error
		if v6 {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		} else {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
		if err != nil {
			warn("IP_PKTINFO", err)
		} else {
			f.PktInfo = true
		}
	}
	setBuf := func(force, plain int, name string, size int) {
		if size <= 0 {
			return
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, size); err != nil {
				warn(name, err)
			}
		}
	}
	setBuf(unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, "SO_RCVBUF", o.RcvBuf)
	setBuf(unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, "SO_SNDBUF", o.SndBuf)
	// The kernel doubles the value for bookkeeping (socket(7)) and caps it
	// at net.core.rmem_max unless forced: report what it really is.
	f.RcvBuf, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	f.SndBuf, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	if o.RcvBuf > 0 && f.RcvBuf < o.RcvBuf {
		warn("SO_RCVBUF", fmt.Errorf("asked %d, got %d (raise net.core.rmem_max or grant CAP_NET_ADMIN)", o.RcvBuf, f.RcvBuf))
	}
	if o.SndBuf > 0 && f.SndBuf < o.SndBuf {
		warn("SO_SNDBUF", fmt.Errorf("asked %d, got %d (raise net.core.wmem_max or grant CAP_NET_ADMIN)", o.SndBuf, f.SndBuf))
	}
	return nil
}

// LocalAddr is the bound address (the kernel-chosen port when 0 was asked).
func (c *Conn) LocalAddr() netip.AddrPort { return c.local }

// Features reports what the kernel accepted for this socket.
func (c *Conn) Features() Features { return c.features }

// KernelDrops returns the kernel's cumulative receive-queue drop count for
// this socket (0 until a drop happens).
//
// SO_RXQ_OVFL alone undercounts: each datagram carries the count as it was
// when that datagram was queued, so drops behind a full queue show only
// once a later datagram gets in, and the last burst before a quiet spell,
// or before a retired upstream socket closes, never would (measured: 10 000
// sent at a 2 KiB buffer, 4 queued, 9 996 dropped, SO_RXQ_OVFL said 0). So
// the count is also read now with getsockopt(SO_MEMINFO) while the socket is
// open, and the larger of the two kept: after Close, the last value read.
// A system call each time: for counters and retirement, not per packet.
func (c *Conn) KernelDrops() uint32 {
	_ = c.rc.Control(c.dfn) // fails once closed: the last value read stands
	return c.drops.Load()
}

// readDrops is KernelDrops' RawConn.Control callback.
func (c *Conn) readDrops(fd uintptr) {
	if d, ok := meminfoDrops(fd); ok {
		c.noteDrops(d)
	}
}

// meminfoDrops reads SK_MEMINFO_DROPS (Linux 4.6 and later; ok is false
// where the kernel's answer is too short to hold it).
func meminfoDrops(fd uintptr) (drops uint32, ok bool) {
	var v [unix.SK_MEMINFO_VARS]uint32
	l := uint32(unsafe.Sizeof(v))
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&v[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 || l < (unix.SK_MEMINFO_DROPS+1)*4 {
		return 0, false
	}
	return v[unix.SK_MEMINFO_DROPS], true
}

// noteDrops raises the cached drop count to d (counts are cumulative per
// socket; never lower it).
func (c *Conn) noteDrops(d uint32) {
	for {
		old := c.drops.Load()
		if d <= old || c.drops.CompareAndSwap(old, d) {
			return
		}
	}
}

// Unblock makes a blocked Read return os.ErrDeadlineExceeded, so a worker
// can notice its context is done without the socket being closed (replies
// to in-flight queries still leave through it).
func (c *Conn) Unblock() error { return c.uc.SetReadDeadline(time.Unix(1, 0)) }

// Close closes the socket.
func (c *Conn) Close() error {
	c.KernelDrops() // last chance to read the count: kept for later calls
	return c.uc.Close()
}

// Rebind points r at c, keeping its buffers and syscall headers, so a
// socket replaced by a fresh one (upstream source-port rotation) is read
// without allocating a new Reader. Only between Reads, from r's goroutine.
func (r *Reader) Rebind(c *Conn) { r.c = c }

// Rebind points w at c, keeping its buffers (see Reader.Rebind). Only
// between Writes, from w's goroutine.
func (w *Writer) Rebind(c *Conn) { w.c = c }

// oobSize fits SCM_TIMESTAMPNS, IPV6_PKTINFO (the larger pktinfo) and
// SO_RXQ_OVFL, each in its own aligned cmsg.
var oobSize = unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))) +
	unix.CmsgSpace(unix.SizeofInet6Pktinfo) + unix.CmsgSpace(4) + 64

// Reader reads batches with recvmmsg. One Reader per goroutine; it owns the
// syscall headers, so a read allocates nothing.
type Reader struct {
	c     *Conn
	b     *Batch
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	oob   []byte
	fn    func(fd uintptr) bool // built once: a closure per call would allocate
	n     int
	errno syscall.Errno

	// ReadLoop state, set per call; loopFn is built once.
	loopFn  func(fd uintptr) bool
	handle  func(n int) bool
	loopErr error
}

// NewReader returns a Reader that fills b.
func (c *Conn) NewReader(b *Batch) *Reader {
	n := len(b.Pkts)
	r := &Reader{c: c, b: b, hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n), oob: make([]byte, n*oobSize)}
	r.fn = r.recv
	r.loopFn = r.loop
	return r
}

// recv and send use RawSyscall: with MSG_DONTWAIT they never block, and a
// plain Syscall would tell the scheduler the thread may block, so sysmon
// hands the P to another thread whenever a sendmmsg to loopback runs past
// 20 µs. Measured with perf at 20 000 qps on one CPU: proxy CPU per query
// fell from 32 µs to 23 µs, most of the difference futex and nanosleep
// wake-ups of sysmon and spare Ms (bench/RESULTS.md).
func (r *Reader) recv(fd uintptr) bool {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN {
		return false // park in the netpoller until readable
	}
	if e == unix.EINTR {
		return false
	}
	r.n, r.errno = int(n), e
	return true
}

// Read blocks until at least one datagram is available and fills the
// batch's first n packets.
func (r *Reader) Read() (int, error) {
	r.prepare()
	if err := r.c.rc.Read(r.fn); err != nil {
		return 0, err
	}
	return r.finish()
}

// ReadLoop reads batches and calls handle with the number of packets in
// the batch (≥ 1), until handle returns false (ReadLoop returns nil) or a
// read fails (ReadLoop returns the error: a deadline, a closed socket, an
// error reported by the socket). Call it again after an error to go on.
//
// Unlike a loop around Read, it does not read the socket again after a
// batch shorter than the batch size: a non-blocking recvmmsg stops early
// only when the socket's queue is empty (or on an error, which the kernel
// keeps for the next read, and an error that arrived during the read also
// marks the socket readable), so that read would return EAGAIN. Instead it
// waits for the netpoller straight away, which returns at once if a
// datagram arrived while the batch was handled (the poller is
// edge-triggered and remembers the event). At moderate rates batches are
// short, and this saves one recvmmsg per wake-up: 40 000 syscalls a second
// at 20 000 qps, each expensive in a VM (bench/RESULTS.md).
func (r *Reader) ReadLoop(handle func(n int) bool) error {
	r.handle, r.loopErr = handle, nil
	err := r.c.rc.Read(r.loopFn)
	r.handle = nil
	if err != nil {
		return err
	}
	return r.loopErr
}

// loop is ReadLoop's callback, run by the netpoller on each readiness.
// Returning false waits for the next readiness; true ends ReadLoop.
func (r *Reader) loop(fd uintptr) bool {
	for {
		r.prepare()
		if !r.recv(fd) {
			return false
		}
		n, err := r.finish()
		if err != nil {
			r.loopErr = err
			return true
		}
		if n > 0 && !r.handle(n) {
			return true
		}
		if n < len(r.hdrs) {
			return false
		}
	}
}

// ReadNow reads what is queued on the socket now, without waiting and
// whatever the read deadline: 0 when nothing is. It is for emptying a
// socket before it is closed (a rotated upstream port), so that what
// arrived before the close is still counted.
func (r *Reader) ReadNow() (int, error) {
	r.prepare()
	if err := r.c.rc.Control(func(fd uintptr) { r.recv(fd) }); err != nil {
		return 0, err
	}
	return r.finish()
}

// prepare resets the syscall headers for one recvmmsg.
func (r *Reader) prepare() {
	for i := range r.hdrs {
		p := &r.b.Pkts[i]
		r.iovs[i].Base = &p.Buf[0]
		r.iovs[i].SetLen(len(p.Buf))
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Control = &r.oob[i*oobSize]
		h.SetControllen(oobSize)
		h.Flags = 0
		r.hdrs[i].Len = 0
	}
	r.n, r.errno = 0, 0
}

// finish turns the headers of the last recvmmsg into packets.
func (r *Reader) finish() (int, error) {
	if r.errno != 0 {
		return 0, fmt.Errorf("recvmmsg on %s: %w", r.c.local, r.errno)
	}
	for i := 0; i < r.n; i++ {
		p := &r.b.Pkts[i]
		h := &r.hdrs[i]
		p.N = int(h.Len)
		p.Truncated = h.Hdr.Flags&unix.MSG_TRUNC != 0
		if p.N > len(p.Buf) {
			p.N = len(p.Buf)
		}
		p.Peer = sockaddrToAddrPort(&r.names[i])
		p.Local, p.IfIndex, p.KernelTime = netip.Addr{}, 0, 0
		clen := int(h.Hdr.Controllen)
		if clen > oobSize {
			clen = oobSize
		}
		r.c.parseControl(p, r.oob[i*oobSize:i*oobSize+clen])
	}
	return r.n, nil
}

// parseControl walks the control messages without allocating.
func (c *Conn) parseControl(p *Packet, oob []byte) {
	ts, local, ifindex, drops, ok := ParseControl(oob)
	p.KernelTime = ts
	p.Local = local
	p.IfIndex = ifindex
	if ok {
		// Cumulative per socket; keep the largest seen (messages of one
		// batch may carry the same value).
		c.noteDrops(drops)
	}
}

// ParseControl extracts the kernel receive time (Unix ns), the destination
// address and interface (pktinfo) and the SO_RXQ_OVFL drop count (dropsOK
// when present) from a control-message buffer. Unknown or short messages are
// skipped. Exported for tests that build cmsgs by hand.
func ParseControl(oob []byte) (kernelTime int64, local netip.Addr, ifindex uint32, drops uint32, dropsOK bool) {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return
		}
		oob = rest
		switch {
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_TIMESTAMPNS:
			// struct timespec in native layout: two longs.
			switch len(data) {
			case 16:
				kernelTime = int64(binary.NativeEndian.Uint64(data))*1e9 + int64(binary.NativeEndian.Uint64(data[8:]))
			case 8:
				kernelTime = int64(int32(binary.NativeEndian.Uint32(data)))*1e9 + int64(int32(binary.NativeEndian.Uint32(data[4:])))
			}
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL:
			if len(data) >= 4 {
				drops, dropsOK = binary.NativeEndian.Uint32(data), true
			}
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO:
			// struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
			if len(data) >= unix.SizeofInet4Pktinfo {
				ifindex = binary.NativeEndian.Uint32(data)
				local = netip.AddrFrom4([4]byte(data[8:12]))
			}
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO:
			// struct in6_pktinfo { in6_addr addr; int ifindex; }
			if len(data) >= unix.SizeofInet6Pktinfo {
				local = netip.AddrFrom16([16]byte(data[0:16]))
				ifindex = binary.NativeEndian.Uint32(data[16:])
			}
		}
	}
	return
}

func sockaddrToAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:]))
	case unix.AF_INET6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			// Link-local peers need their zone; WithZone allocates a
			// string, but only for scoped addresses.
			a = a.WithZone(fmt.Sprint(sa.Scope_id))
		}
		return netip.AddrPortFrom(a, binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:]))
	}
	return netip.AddrPort{}
}

// Writer sends batches with sendmmsg. One Writer per goroutine.
type Writer struct {
	c     *Conn
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	oob   []byte
	fn    func(fd uintptr) bool
	// the window of hdrs the current sendmmsg covers
	lo, hi int
	n      int
	errno  syscall.Errno
}

// NewWriter returns a Writer for batches of up to n packets.
func (c *Conn) NewWriter(n int) *Writer {
	w := &Writer{c: c, hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, 2*n),
		names: make([]unix.RawSockaddrInet6, n), oob: make([]byte, n*oobSize)}
	w.fn = w.send
	return w
}

func (w *Writer) send(fd uintptr) bool {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.hdrs[w.lo])), uintptr(w.hi-w.lo), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false // wait until writable
	}
	w.n, w.errno = int(n), e
	return true
}

// ErrBatchTooLarge is returned when Write is given more packets than the
// Writer was sized for.
var ErrBatchTooLarge = errors.New("listener: batch larger than writer")

// Write sends each packet's Buf[:N] to its Peer (from Local when the socket
// is bound to a wildcard address; leave Peer invalid on a connected socket).
// It returns how many could not be sent and the first error; a packet that
// failed has its N set to -1 so the caller can account for it.
func (w *Writer) Write(pkts []Packet) (failed int, err error) {
	if len(pkts) > len(w.hdrs) {
		return len(pkts), ErrBatchTooLarge
	}
	for i := range pkts {
		p := &pkts[i]
		iov := w.iovs[2*i : 2*i+2]
		niov := 0
		if len(p.Head) > 0 {
			iov[0].Base = &p.Head[0]
			iov[0].SetLen(len(p.Head))
			niov++
		}
		iov[niov].Base = &p.Buf[0]
		iov[niov].SetLen(p.N)
		niov++
		h := &w.hdrs[i].Hdr
		h.Iov = &iov[0]
		h.SetIovlen(niov)
		h.Name, h.Namelen = nil, 0
		if p.Peer.IsValid() {
			h.Namelen = putSockaddr(&w.names[i], p.Peer, w.c.v6)
			h.Name = (*byte)(unsafe.Pointer(&w.names[i]))
		}
		h.Control = nil
		h.SetControllen(0)
		if w.c.wildcard && p.Local.IsValid() {
			oob := w.oob[i*oobSize : (i+1)*oobSize]
			if l := putPktinfo(oob, p.Local, p.IfIndex, w.c.v6); l > 0 {
				h.Control = &oob[0]
				h.SetControllen(l)
			}
		}
		h.Flags = 0
	}
	w.lo, w.hi = 0, len(pkts)
	for w.lo < w.hi {
		w.n, w.errno = 0, 0
		if werr := w.c.rc.Write(w.fn); werr != nil {
			for i := w.lo; i < w.hi; i++ {
				pkts[i].N = -1
			}
			return failed + w.hi - w.lo, werr
		}
		if w.errno != 0 {
			// sendmmsg reports an error only when the first message of
			// the window failed: mark it and go on with the rest.
			pkts[w.lo].N = -1
			failed++
			if err == nil {
				err = fmt.Errorf("sendmmsg on %s: %w", w.c.local, w.errno)
			}
			w.lo++
			continue
		}
		w.lo += w.n
	}
	return failed, err
}

func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort, v6 bool) uint32 {
	port := ap.Port()
	if !v6 {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().Unmap().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], port)
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ap.Addr().As16()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], port)
	if z := ap.Addr().Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.Scope_id = uint32(ifi.Index)
		} else {
			var id uint32
			if _, err := fmt.Sscan(z, &id); err == nil {
				sa.Scope_id = id
			}
		}
	}
	return unix.SizeofSockaddrInet6
}

// putPktinfo writes an IP_PKTINFO / IPV6_PKTINFO cmsg that makes the kernel
// send from local (ip(7), RFC 3542 §6.1), returning its length.
func putPktinfo(oob []byte, local netip.Addr, ifindex uint32, v6 bool) int {
	var dlen int
	if v6 {
		dlen = unix.SizeofInet6Pktinfo
	} else {
		dlen = unix.SizeofInet4Pktinfo
	}
	space := unix.CmsgSpace(dlen)
	if len(oob) < space {
		return 0
	}
	clear(oob[:space])
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.SetLen(unix.CmsgLen(dlen))
	data := oob[unix.CmsgLen(0):]
	if v6 {
		h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
		a := local.As16()
		copy(data[0:16], a[:])
		binary.NativeEndian.PutUint32(data[16:], ifindex)
	} else {
		// ifindex 0 and spec_dst = local: the kernel routes normally but
		// uses local as the source address.
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		a := local.Unmap().As4()
		copy(data[4:8], a[:])
	}
	return space
}
