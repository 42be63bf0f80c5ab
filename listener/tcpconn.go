package listener

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Errors from TCPConn.Send.
var (
	// ErrConnClosed: the client connection is closed; the reply was not sent.
	ErrConnClosed = errors.New("listener: client TCP connection closed")
	// ErrOutputFull: the client does not read and MaxPending reply bytes are
	// already queued; the connection has been closed (CloseOutputFull).
	ErrOutputFull = errors.New("listener: client TCP connection not reading, reply queue full")
	errStopping   = errors.New("listener: TCP server stopping")
	errMsgSize    = errors.New("listener: TCP reply must be 2..65535 bytes")
)

// TCPConn is one client connection. Its goroutine reads messages and hands
// queries to the TCPQueryHandler; answers come back through Send from any
// goroutine, in whatever order the upstream produces them (RFC 7766
// §6.2.1.1: a server may answer pipelined queries out of order; the ID
// tells them apart).
type TCPConn struct {
	srv    *TCPServer
	nc     *net.TCPConn
	remote netip.AddrPort
	local  netip.AddrPort
	key    netip.Addr // per-client cap unit

	// Reader state: the serve goroutine only.
	sr       StampReader
	fr       frameReader
	lifeEnd  int64 // Unix ns: MaxLifetime reached
	idleEnd  int64 // Unix ns: IdleTimeout after the last complete message
	msgStart int64 // Unix ns when the current message's first byte was read; 0 between messages
	curDL    int64 // read deadline last set
	queries  int

	inflight atomic.Int32
	stopping atomic.Bool
	state    atomic.Uint32 // 0 open, 1 closed
	done     chan struct{} // closed by close
	wake     chan struct{} // cap 1: a query finished or the writer went idle

	// Write side, under wmu. A reply is written at once (one non-blocking
	// writev) when nothing is queued; otherwise, or when the kernel took
	// only part of it, the rest is queued in pending for the writer
	// goroutine, so replies never interleave and never block the upstream
	// goroutine that delivers them.
	wmu           sync.Mutex
	dw            directWriter
	pending       []byte // queued reply bytes not yet handed to the writer
	queued        int    // len(pending) + bytes the writer is writing
	wbusy         bool   // bytes are queued or being written
	wclosed       bool   // close has run: nothing more is sent or queued
	writerStarted bool
	wsig          chan struct{} // cap 1: pending became non-empty
	space         *sync.Cond    // on wmu: queued shrank or the connection closed
	wdone         chan struct{} // closed when the writer exits
}

func newTCPConn(s *TCPServer, nc *net.TCPConn, remote netip.AddrPort, key netip.Addr) (*TCPConn, error) {
	rc, err := nc.SyscallConn()
	if err != nil {
		return nil, err
	}
	la := nc.LocalAddr().(*net.TCPAddr).AddrPort()
	c := &TCPConn{srv: s, nc: nc, remote: remote, local: netip.AddrPortFrom(la.Addr().Unmap(), la.Port()), key: key,
		done: make(chan struct{}), wake: make(chan struct{}, 1),
		wsig: make(chan struct{}, 1), wdone: make(chan struct{})}
	c.space = sync.NewCond(&c.wmu)
	c.sr.init(rc)
	c.dw.init(rc)
	if !setupAccepted(rc, s.cfg.SndBuf) {
		s.stats.NoTimestamp.Add(1)
	}
	now := time.Now().UnixNano()
	c.lifeEnd = now + int64(s.cfg.MaxLifetime)
	c.idleEnd = now + int64(s.cfg.IdleTimeout)
	return c, nil
}

// RemoteAddr is the client's address and port.
func (c *TCPConn) RemoteAddr() netip.AddrPort { return c.remote }

// LocalAddr is the address and port the client connected to.
func (c *TCPConn) LocalAddr() netip.AddrPort { return c.local }

// Closed reports whether the connection has been closed.
func (c *TCPConn) Closed() bool { return c.state.Load() != 0 }

// Finish marks one query handed to the TCPQueryHandler as done.
func (c *TCPConn) Finish() {
	c.inflight.Add(-1)
	c.signalWake()
}

// Abort closes the connection because the zone transfer it was receiving
// broke off upstream: closing is the only way to tell a client that the
// transfer it has is incomplete.
func (c *TCPConn) Abort() { c.close(CloseAborted) }

func (c *TCPConn) signalWake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *TCPConn) serve() {
	reason, graceful := c.readLoop()
	c.fr.release()
	if graceful {
		c.drain()
	}
	c.close(reason)
	c.wmu.Lock()
	started := c.writerStarted
	c.wmu.Unlock()
	if started {
		<-c.wdone
	}
	c.srv.connEnded(c)
}

// readLoop reads messages until a bound or the client ends the connection.
// graceful reports that outstanding answers should still be sent.
func (c *TCPConn) readLoop() (CloseReason, bool) {
	cfg := &c.srv.cfg
	st := &c.srv.stats
	for {
		if c.stopping.Load() {
			return CloseShutdown, true
		}
		if c.queries >= cfg.MaxQueries {
			return CloseMaxQueries, true
		}
		if c.inflight.Load() >= int32(cfg.MaxInflight) {
			st.InflightWaits.Add(1)
			for c.inflight.Load() >= int32(cfg.MaxInflight) && !c.stopping.Load() {
				select {
				case <-c.wake:
				case <-c.done:
					return CloseShutdown, false // closed elsewhere; its reason stands
				}
			}
			continue
		}
		msg, buf, stamp, err := c.fr.next(c)
		if err != nil {
			reason, graceful, retry := c.readErr(err)
			if retry {
				continue
			}
			return reason, graceful
		}
		readT := time.Now().UnixNano()
		c.queries++
		c.idleEnd = readT + int64(cfg.IdleTimeout)
		c.msgStart = 0
		st.Received.Add(1)
		if msg[2]&0x80 != 0 {
			// QR=1: a response sent to a server port. Never forwarded,
			// never answered (as on UDP).
			st.DroppedQR.Add(1)
			putMsgBuf(buf)
			continue
		}
		st.Handled.Add(1)
		c.inflight.Add(1)
		c.srv.h.HandleTCPQuery(c, msg, stamp, readT)
		putMsgBuf(buf)
	}
}

// readErr maps a read error to a close reason; retry is set when the
// connection only looked idle (answers outstanding) and reading goes on.
func (c *TCPConn) readErr(err error) (reason CloseReason, graceful, retry bool) {
	switch {
	case errors.Is(err, ErrShortLength):
		return CloseShortLength, false, false
	case err == io.EOF:
		return CloseEOF, true, false
	case err == io.ErrUnexpectedEOF:
		return CloseEOFPartial, true, false
	case c.stopping.Load() || errors.Is(err, errStopping):
		return CloseShutdown, true, false
	case errors.Is(err, os.ErrDeadlineExceeded):
		now := time.Now().UnixNano()
		switch {
		case now >= c.lifeEnd:
			return CloseLifetime, true, false
		case c.fr.inMessage():
			return CloseReadTimeout, false, false
		case c.busy():
			// RFC 7766 §6.2.3: a connection is idle only once every
			// query has been answered.
			c.idleEnd = now + int64(c.srv.cfg.IdleTimeout)
			return 0, false, true
		}
		return CloseIdle, false, false
	case errors.Is(err, net.ErrClosed):
		return CloseShutdown, false, false // closed elsewhere; its reason stands
	}
	return CloseReadError, false, false
}

// readStamped implements frameSource: the idle deadline between messages,
// the per-message one inside a message, the lifetime over both.
func (c *TCPConn) readStamped(p []byte, started bool) (int, int64, error) {
	var dl int64
	if started {
		if c.msgStart == 0 {
			c.msgStart = time.Now().UnixNano()
		}
		dl = c.msgStart + int64(c.srv.cfg.ReadTimeout)
	} else {
		dl = c.idleEnd
	}
	dl = min(dl, c.lifeEnd)
	if dl != c.curDL {
		c.curDL = dl
		if err := c.nc.SetReadDeadline(time.Unix(0, dl)); err != nil {
			return 0, 0, err
		}
		// stopReading may have set a past deadline just before ours
		// replaced it.
		if c.stopping.Load() {
			return 0, 0, errStopping
		}
	}
	return c.sr.Read(p)
}

func (c *TCPConn) busy() bool {
	if c.inflight.Load() > 0 {
		return true
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.wbusy
}

// drain waits until every query handed on has finished and every reply has
// been written, or the connection is closed (a write bound fired, or a
// forced shutdown). Both are bounded: queries by the upstream timeout,
// writes by WriteTimeout.
func (c *TCPConn) drain() {
	for c.busy() {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
	}
}

// stopReading makes the reader stop at the next message boundary (or at
// once when waiting) and drain.
func (c *TCPConn) stopReading() {
	c.stopping.Store(true)
	_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	c.signalWake()
}

// close ends the connection once, counting reason.
func (c *TCPConn) close(reason CloseReason) {
	if !c.state.CompareAndSwap(0, 1) {
		return
	}
	c.srv.stats.Closed[reason].Add(1)
	c.wmu.Lock()
	c.wclosed = true
	c.space.Broadcast()
	c.wmu.Unlock()
	close(c.done)
	_ = c.nc.Close()
}

// Send writes msg to the client with its length prefix and returns the time
// it was handed to the socket (or queued behind earlier replies). It never
// blocks: a client that does not read has its replies queued up to
// MaxPending, then the connection is closed (ErrOutputFull).
func (c *TCPConn) Send(msg []byte) (int64, error) { return c.send(msg, false) }

// SendWait is Send, except that a full queue makes it wait for room instead
// of closing the connection: the flow control a zone transfer needs. The
// wait is bounded by WriteTimeout (a client that does not read is closed).
func (c *TCPConn) SendWait(msg []byte) (int64, error) { return c.send(msg, true) }

func (c *TCPConn) send(msg []byte, wait bool) (int64, error) {
	if len(msg) < 2 || len(msg) > largeMsg {
		return 0, errMsgSize // a caller bug, not a client's doing
	}
	c.wmu.Lock()
	for {
		if c.wclosed {
			c.wmu.Unlock()
			return 0, ErrConnClosed
		}
		if !c.wbusy {
			n, err := c.dw.write(msg)
			if err != nil {
				c.wmu.Unlock()
				c.close(CloseWriteError)
				return 0, err
			}
			now := time.Now().UnixNano()
			if n < len(msg)+2 {
				c.enqueueLocked(msg, n)
			}
			c.wmu.Unlock()
			return now, nil
		}
		if c.queued+len(msg)+2 <= c.srv.cfg.MaxPending {
			c.enqueueLocked(msg, 0)
			c.wmu.Unlock()
			return time.Now().UnixNano(), nil
		}
		if !wait {
			c.wmu.Unlock()
			c.close(CloseOutputFull)
			return 0, ErrOutputFull
		}
		c.space.Wait() // the writer broadcasts after each write; close does too
	}
}

// enqueueLocked queues the bytes of the framed message (2-byte length, then
// msg) from offset off on, and makes sure the writer runs.
func (c *TCPConn) enqueueLocked(msg []byte, off int) {
	c.srv.stats.QueuedReplies.Add(1)
	c.queued += len(msg) + 2 - off
	if off < 2 {
		hdr := [2]byte{byte(len(msg) >> 8), byte(len(msg))}
		c.pending = append(c.pending, hdr[off:]...)
		off = 2
	}
	c.pending = append(c.pending, msg[off-2:]...)
	if c.wbusy {
		return // the writer is running and will find it
	}
	c.wbusy = true
	if !c.writerStarted {
		c.writerStarted = true
		go c.writeLoop()
		return
	}
	select {
	case c.wsig <- struct{}{}:
	default:
	}
}

// writeLoop writes queued replies with a deadline per write. It is started
// the first time a reply has to wait and lives as long as the connection;
// between stalls it holds no buffer.
func (c *TCPConn) writeLoop() {
	defer close(c.wdone)
	wt := c.srv.cfg.WriteTimeout
	var buf []byte
	for {
		c.wmu.Lock()
		if buf != nil {
			c.queued -= len(buf)
			buf = nil
			c.space.Broadcast()
		}
		for len(c.pending) == 0 {
			c.wbusy = false
			c.pending = nil
			c.wmu.Unlock()
			c.signalWake()
			select {
			case <-c.wsig:
			case <-c.done:
				return
			}
			c.wmu.Lock()
		}
		buf, c.pending = c.pending, nil
		c.wmu.Unlock()
		_ = c.nc.SetWriteDeadline(time.Now().Add(wt))
		if _, err := c.nc.Write(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.close(CloseWriteTimeout)
			} else {
				c.close(CloseWriteError)
			}
			return
		}
	}
}
