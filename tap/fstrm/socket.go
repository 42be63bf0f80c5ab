package fstrm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for SocketOptions.
const (
	DefaultHandshakeTimeout = 2 * time.Second
	DefaultWriteTimeout     = 2 * time.Second
	DefaultFinishTimeout    = 2 * time.Second
	DefaultBackoffMin       = 50 * time.Millisecond
	DefaultBackoffMax       = 500 * time.Millisecond
)

// maxConnections bounds SocketOptions.Connections.
const maxConnections = 64

// ErrNotConnected is returned at once by WriteFrame while no connection is
// up. The frame was not accepted.
var ErrNotConnected = errors.New("fstrm: no collector connection")

// SocketOptions configures a SocketWriter.
type SocketOptions struct {
	// Network is "unix", "tcp", "tcp4" or "tcp6".
	Network string
	// Address is the socket path or host:port of the collector.
	Address string
	// Connections is the number of parallel connections; frames are spread
	// over the connected ones round-robin. Default 1, at most 64.
	Connections int
	// HandshakeTimeout bounds dial + READY/ACCEPT/START. Default 2 s.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds every write to the collector (one buffer flush).
	// Default 2 s.
	WriteTimeout time.Duration
	// FinishTimeout bounds the wait for FINISH after STOP in Close.
	// Default 2 s.
	FinishTimeout time.Duration
	// BackoffMin and BackoffMax bound the reconnect backoff. Defaults 50 ms
	// and 500 ms.
	BackoffMin, BackoffMax time.Duration
	// BufferSize is how many bytes of frames are gathered per connection
	// before a write. Default DefaultBufferSize.
	BufferSize int
	// MaxFrameSize is the largest data frame accepted. Default
	// DefaultMaxFrameSize.
	MaxFrameSize int
	// Logger receives connection events (rate-limited). Default: discard.
	Logger *slog.Logger
}

// HandshakeFailures counts failed connection attempts by cause.
type HandshakeFailures struct {
	Dial        uint64 // connect(2) failed (collector absent)
	Timeout     uint64 // no complete answer within HandshakeTimeout (e.g. no ACCEPT)
	Closed      uint64 // peer closed or reset during the handshake
	Unexpected  uint64 // a control frame other than ACCEPT
	ContentType uint64 // ACCEPT without our content type
	Oversized   uint64 // control frame length above 512
	Malformed   uint64 // garbage: not a control frame, bad fields, unknown type
}

// Disconnects counts ended connections by cause.
type Disconnects struct {
	WriteTimeout uint64 // a write did not finish within WriteTimeout (stalled collector)
	WriteError   uint64 // a write failed (reset, broken pipe)
	PeerClosed   uint64 // the collector closed the connection
	Protocol     uint64 // the collector sent something other than FINISH after STOP
	NoFinish     uint64 // Close sent STOP but FINISH did not come within FinishTimeout
	Closed       uint64 // clean shutdown by Close (STOP answered by FINISH)
}

// SocketStats are the SocketWriter's counters.
type SocketStats struct {
	Frames          uint64 // data frames written to a connection
	WriteWaits      uint64 // writes that found the socket buffer full and waited for the collector
	FramesLost      uint64 // frames accepted by WriteFrame, then lost with their connection
	ConnectAttempts uint64
	Connects        uint64 // handshakes completed
	Handshake       HandshakeFailures
	Disconnects     Disconnects
	Connected       int // connections up now
}

type hsReason int

const (
	hsDial hsReason = iota
	hsTimeout
	hsClosed
	hsUnexpected
	hsContentType
	hsOversized
	hsMalformed
	hsCount
)

type discReason int

const (
	discWriteTimeout discReason = iota
	discWriteError
	discPeerClosed
	discProtocol
	discNoFinish
	discClosed
	discCount
)

var discNames = [discCount]string{"write_timeout", "write_error", "peer_closed", "protocol", "no_finish", "closed"}

// SocketWriter writes dnstap to a Frame Streams collector over unix or TCP
// sockets with the bidirectional handshake. WriteFrame, Flush and Close
// must be called from one goroutine; Stats from any. Dialling happens in one
// background goroutine per connection, never in WriteFrame.
type SocketWriter struct {
	opts   SocketOptions
	log    *slog.Logger
	dialRL *rateLog
	discRL *rateLog
	connRL *rateLog
	ready  []byte
	start  []byte
	stop   []byte

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	slots  []*slot
	rr     int  // writer goroutine
	closed bool // writer goroutine

	frames, lost, attempts, connects atomic.Uint64
	waits                            atomic.Uint64 // see SocketStats.WriteWaits
	hs                               [hsCount]atomic.Uint64
	disc                             [discCount]atomic.Uint64
	connected                        atomic.Int64
}

// slot is one of the Connections. pending is handed from its connector
// goroutine to the writer goroutine; cur belongs to the writer goroutine.
type slot struct {
	idx     int
	pending atomic.Pointer[sconn]
	cur     *sconn
}

// sconn is one established connection.
type sconn struct {
	nc         net.Conn
	raw        *rawWriter // nil: write with nc.Write
	born       time.Time
	buf        []byte // whole frames not yet written; writer goroutine only
	bufFrames  int
	stopSent   atomic.Bool
	once       sync.Once
	dead       chan struct{} // closed by kill
	finished   chan struct{} // closed by the reader on FINISH after STOP
	readerDone chan struct{}
}

// NewSocketWriter validates opts and starts the connector goroutines. It
// does not wait for a connection: until one is up WriteFrame returns
// ErrNotConnected.
func NewSocketWriter(opts SocketOptions) (*SocketWriter, error) {
	switch opts.Network {
	case "unix", "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("fstrm: unsupported network %q (want unix or tcp)", opts.Network)
	}
	if opts.Address == "" {
		return nil, errors.New("fstrm: SocketOptions.Address is empty")
	}
	if opts.Connections < 0 || opts.Connections > maxConnections {
		return nil, fmt.Errorf("fstrm: Connections %d out of range 1..%d", opts.Connections, maxConnections)
	}
	if opts.HandshakeTimeout < 0 || opts.WriteTimeout < 0 || opts.FinishTimeout < 0 ||
		opts.BackoffMin < 0 || opts.BackoffMax < 0 || opts.BufferSize < 0 || opts.MaxFrameSize < 0 {
		return nil, errors.New("fstrm: negative SocketOptions value")
	}
	setDefault(&opts.Connections, 1)
	setDefault(&opts.HandshakeTimeout, DefaultHandshakeTimeout)
	setDefault(&opts.WriteTimeout, DefaultWriteTimeout)
	setDefault(&opts.FinishTimeout, DefaultFinishTimeout)
	setDefault(&opts.BackoffMin, DefaultBackoffMin)
	setDefault(&opts.BackoffMax, DefaultBackoffMax)
	setDefault(&opts.BufferSize, DefaultBufferSize)
	setDefault(&opts.MaxFrameSize, DefaultMaxFrameSize)
	if opts.BackoffMax < opts.BackoffMin {
		opts.BackoffMax = opts.BackoffMin
	}
	l := orDiscard(opts.Logger)
	ctx, cancel := context.WithCancel(context.Background())
	w := &SocketWriter{
		opts:   opts,
		log:    l,
		dialRL: newRateLog(l, logInterval),
		discRL: newRateLog(l, logInterval),
		connRL: newRateLog(l, logInterval),
		ready:  encodeControl(controlReady, ContentType),
		start:  encodeControl(controlStart, ContentType),
		stop:   encodeControl(controlStop, ""),
		ctx:    ctx,
		cancel: cancel,
	}
	for i := range opts.Connections {
		s := &slot{idx: i}
		w.slots = append(w.slots, s)
		w.wg.Add(1)
		go w.connectLoop(s)
	}
	return w, nil
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// WriteFrame adds one data frame to the buffer of the next connected
// connection. nil means accepted (a later loss with the connection is
// counted in FramesLost). Errors, all meaning "not accepted":
// ErrNotConnected at once while no connection is up; a wrapped net error if
// the write that this call had to make failed or hit WriteTimeout (the
// connection is then dropped); ErrFrameSize; ErrClosed. It blocks at most
// WriteTimeout and does not retain p.
func (w *SocketWriter) WriteFrame(p []byte) error {
	if w.closed {
		return ErrClosed
	}
	if len(p) == 0 || len(p) > w.opts.MaxFrameSize {
		return ErrFrameSize
	}
	n := len(w.slots)
	for i := range n {
		s := w.slots[(w.rr+i)%n]
		c := w.current(s)
		if c == nil {
			continue
		}
		w.rr = (w.rr + i + 1) % n
		return w.writeTo(s, c, p)
	}
	return ErrNotConnected
}

func (w *SocketWriter) writeTo(s *slot, c *sconn, p []byte) error {
	need := 4 + len(p)
	if len(c.buf) > 0 && len(c.buf)+need > w.opts.BufferSize {
		if err := w.flushConn(s, c, time.Now().Add(w.opts.WriteTimeout), 0); err != nil {
			return err
		}
	}
	c.buf = binary.BigEndian.AppendUint32(c.buf, uint32(len(p)))
	c.buf = append(c.buf, p...)
	c.bufFrames++
	if len(c.buf) >= w.opts.BufferSize {
		// This frame is in the failed write: report it to the caller
		// rather than as lost.
		return w.flushConn(s, c, time.Now().Add(w.opts.WriteTimeout), 1)
	}
	return nil
}

// Flush writes every connection's buffer, all under one deadline, so it
// blocks at most WriteTimeout in total. It also picks up connections
// established since the last call. It returns the first write error (that
// connection is dropped and its frames counted in FramesLost).
func (w *SocketWriter) Flush() error {
	if w.closed {
		return ErrClosed
	}
	deadline := time.Now().Add(w.opts.WriteTimeout)
	var first error
	for _, s := range w.slots {
		c := w.current(s)
		if c == nil || len(c.buf) == 0 {
			continue
		}
		if err := w.flushConn(s, c, deadline, 0); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Close stops the connectors, then on every connection writes the buffered
// frames and STOP and waits for FINISH, all connections in parallel. It
// returns within about WriteTimeout + FinishTimeout (+ HandshakeTimeout
// only if a dial is in flight and the OS ignores the cancel). Errors report
// connections that did not finish cleanly. Close is idempotent.
func (w *SocketWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	w.cancel()
	w.wg.Wait()
	errs := make([]error, len(w.slots))
	var wg sync.WaitGroup
	for i, s := range w.slots {
		c := w.current(s)
		if c == nil {
			continue
		}
		s.cur = nil
		wg.Go(func() { errs[i] = w.finish(c) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Stats returns the counters. Safe from any goroutine.
func (w *SocketWriter) Stats() SocketStats {
	st := SocketStats{
		Frames:          w.frames.Load(),
		WriteWaits:      w.waits.Load(),
		FramesLost:      w.lost.Load(),
		ConnectAttempts: w.attempts.Load(),
		Connects:        w.connects.Load(),
		Connected:       int(max(0, w.connected.Load())),
		Handshake: HandshakeFailures{
			Dial:        w.hs[hsDial].Load(),
			Timeout:     w.hs[hsTimeout].Load(),
			Closed:      w.hs[hsClosed].Load(),
			Unexpected:  w.hs[hsUnexpected].Load(),
			ContentType: w.hs[hsContentType].Load(),
			Oversized:   w.hs[hsOversized].Load(),
			Malformed:   w.hs[hsMalformed].Load(),
		},
		Disconnects: Disconnects{
			WriteTimeout: w.disc[discWriteTimeout].Load(),
			WriteError:   w.disc[discWriteError].Load(),
			PeerClosed:   w.disc[discPeerClosed].Load(),
			Protocol:     w.disc[discProtocol].Load(),
			NoFinish:     w.disc[discNoFinish].Load(),
			Closed:       w.disc[discClosed].Load(),
		},
	}
	return st
}

// current returns the slot's live connection, adopting one the connector
// has handed over, or nil. A connection found dead is dropped here and its
// buffered frames are counted as lost.
func (w *SocketWriter) current(s *slot) *sconn {
	if s.cur == nil {
		s.cur = s.pending.Swap(nil)
		if s.cur == nil {
			return nil
		}
	}
	select {
	case <-s.cur.dead:
		w.dropLost(s.cur, 0)
		s.cur = nil
		// The connector may already have handed over a new one.
		s.cur = s.pending.Swap(nil)
		if s.cur != nil {
			select {
			case <-s.cur.dead:
				s.cur = nil
			default:
			}
		}
		return s.cur
	default:
		return s.cur
	}
}

func (w *SocketWriter) dropLost(c *sconn, exclude int) {
	if n := c.bufFrames - exclude; n > 0 {
		w.lost.Add(uint64(n))
	}
	c.buf, c.bufFrames = c.buf[:0], 0
}

// flushConn writes c's buffer under deadline. On failure the connection is
// killed, its frames are counted as lost except the last `exclude` (which
// the caller reports as an error), and a wrapped error is returned.
func (w *SocketWriter) flushConn(s *slot, c *sconn, deadline time.Time, exclude int) error {
	if err := c.write(c.buf, deadline); err != nil {
		reason := discWriteError
		if errors.Is(err, os.ErrDeadlineExceeded) {
			reason = discWriteTimeout
		}
		w.kill(c, reason, err)
		w.dropLost(c, exclude)
		if s.cur == c {
			s.cur = nil
		}
		return fmt.Errorf("fstrm: writing to %s %s: %w", w.opts.Network, w.opts.Address, err)
	}
	w.frames.Add(uint64(c.bufFrames))
	c.buf, c.bufFrames = c.buf[:0], 0
	return nil
}

// finish is the graceful end of one connection: buffered frames + STOP in
// one write, then wait for FINISH.
func (w *SocketWriter) finish(c *sconn) error {
	defer func() { <-c.readerDone }()
	c.stopSent.Store(true)
	n := c.bufFrames
	c.buf = append(c.buf, w.stop...)
	if err := c.write(c.buf, time.Now().Add(w.opts.WriteTimeout)); err != nil {
		reason := discWriteError
		if errors.Is(err, os.ErrDeadlineExceeded) {
			reason = discWriteTimeout
		}
		w.kill(c, reason, err)
		w.lost.Add(uint64(n))
		return fmt.Errorf("fstrm: writing STOP to %s %s: %w", w.opts.Network, w.opts.Address, err)
	}
	w.frames.Add(uint64(n))
	c.buf, c.bufFrames = c.buf[:0], 0
	t := time.NewTimer(w.opts.FinishTimeout)
	defer t.Stop()
	select {
	case <-c.finished:
		w.kill(c, discClosed, nil)
		return nil
	case <-c.dead:
		return fmt.Errorf("fstrm: %s %s closed without FINISH", w.opts.Network, w.opts.Address)
	case <-t.C:
		w.kill(c, discNoFinish, nil)
		return fmt.Errorf("fstrm: no FINISH from %s %s within %v", w.opts.Network, w.opts.Address, w.opts.FinishTimeout)
	}
}

// write writes all of b, waiting at most until deadline.
func (c *sconn) write(b []byte, deadline time.Time) error {
	if c.raw == nil {
		_ = c.nc.SetWriteDeadline(deadline)
		_, err := c.nc.Write(b)
		return err
	}
	return c.raw.write(b, c.nc, deadline)
}

// kill ends a connection once, counting the first reason.
func (w *SocketWriter) kill(c *sconn, r discReason, err error) {
	c.once.Do(func() {
		// dead first, then the counters: whoever sees Connected fall
		// (or a Disconnects counter rise) then finds the connection
		// refused by WriteFrame, not one more frame buffered into it.
		close(c.dead)
		w.disc[r].Add(1)
		w.connected.Add(-1)
		_ = c.nc.Close()
		if r == discClosed {
			w.log.Debug("dnstap collector connection closed", "network", w.opts.Network, "address", w.opts.Address)
			return
		}
		args := []any{"network", w.opts.Network, "address", w.opts.Address, "reason", discNames[r]}
		if err != nil {
			args = append(args, "err", err)
		}
		w.discRL.logAt(time.Now(), slog.LevelWarn, "dnstap collector connection lost", args...)
	})
}

// readLoop runs for the life of a connection. After the handshake the
// collector may send only FINISH, and only after our STOP; anything else,
// or EOF, ends the connection, so a dead collector is noticed without
// waiting for a write to fail.
func (w *SocketWriter) readLoop(c *sconn) {
	defer close(c.readerDone)
	var buf [controlBufSize]byte
	cf, err := readControl(c.nc, &buf)
	if err == nil && cf.typ == controlFinish && c.stopSent.Load() {
		close(c.finished)
		return
	}
	select {
	case <-c.dead: // we closed it
		return
	default:
	}
	reason := discProtocol
	if err != nil && !isFramingError(err) {
		reason = discPeerClosed
	}
	if err == nil {
		err = fmt.Errorf("unexpected control frame type %d", cf.typ)
	}
	w.kill(c, reason, err)
}

func isFramingError(err error) bool {
	return errors.Is(err, errNotControl) || errors.Is(err, errControlTooLarge) || errors.Is(err, errControlMalformed)
}

// connectLoop dials and handshakes for one slot, hands the connection to the
// writer goroutine and waits for it to die, then dials again. Between
// attempts it waits the backoff, which doubles from BackoffMin to
// BackoffMax after each failure and returns to BackoffMin only after a
// connection that lived at least BackoffMax (so a collector that accepts
// and drops at once is not hammered).
func (w *SocketWriter) connectLoop(s *slot) {
	defer w.wg.Done()
	backoff := w.opts.BackoffMin
	for {
		c, reason, err := w.dial()
		if w.ctx.Err() != nil {
			if c != nil {
				_ = c.nc.Close()
			}
			return
		}
		if err != nil {
			w.hs[reason].Add(1)
			w.dialRL.logAt(time.Now(), slog.LevelWarn, "dnstap collector connect failed",
				"network", w.opts.Network, "address", w.opts.Address, "err", err, "retry_in", backoff)
		} else {
			// Hand over first, then count: whoever sees Connected go up
			// finds the connection ready for WriteFrame. (The writer could
			// kill it in between; Connected then dips below zero for an
			// instant.)
			s.pending.Store(c)
			w.connects.Add(1)
			w.connected.Add(1)
			go w.readLoop(c)
			w.dialRL.reset()
			w.connRL.logAt(time.Now(), slog.LevelInfo, "dnstap collector connected",
				"network", w.opts.Network, "address", w.opts.Address, "conn", s.idx)
			select {
			case <-c.dead:
			case <-w.ctx.Done():
				return // Close takes over c
			}
			if time.Since(c.born) >= w.opts.BackoffMax {
				backoff = w.opts.BackoffMin
			}
		}
		if !w.sleep(backoff) {
			return
		}
		backoff = nextBackoff(backoff, w.opts.BackoffMax)
	}
}

func nextBackoff(cur, maxB time.Duration) time.Duration {
	return min(2*cur, maxB)
}

func (w *SocketWriter) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.ctx.Done():
		return false
	}
}

// dial connects and runs READY -> ACCEPT -> START under one deadline of
// HandshakeTimeout. Close cancels it by closing the socket.
func (w *SocketWriter) dial() (*sconn, hsReason, error) {
	w.attempts.Add(1)
	d := net.Dialer{Timeout: w.opts.HandshakeTimeout}
	nc, err := d.DialContext(w.ctx, w.opts.Network, w.opts.Address)
	if err != nil {
		return nil, hsDial, err
	}
	stop := context.AfterFunc(w.ctx, func() { _ = nc.Close() })
	reason, err := w.handshake(nc)
	if !stop() && err == nil {
		err = net.ErrClosed // Close raced with the handshake
		reason = hsClosed
	}
	if err != nil {
		_ = nc.Close()
		return nil, reason, fmt.Errorf("handshake with %s %s: %w", w.opts.Network, w.opts.Address, err)
	}
	var raw *rawWriter
	if sc, ok := nc.(syscall.Conn); ok {
		raw = newRawWriter(sc, &w.waits)
	}
	c := &sconn{
		nc:         nc,
		raw:        raw,
		born:       time.Now(),
		buf:        make([]byte, 0, w.opts.BufferSize),
		dead:       make(chan struct{}),
		finished:   make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	return c, 0, nil
}

func (w *SocketWriter) handshake(nc net.Conn) (hsReason, error) {
	_ = nc.SetDeadline(time.Now().Add(w.opts.HandshakeTimeout))
	if _, err := nc.Write(w.ready); err != nil {
		return classifyHandshake(err), err
	}
	var buf [controlBufSize]byte
	if err := readAccept(nc, &buf); err != nil {
		return classifyHandshake(err), err
	}
	if _, err := nc.Write(w.start); err != nil {
		return classifyHandshake(err), err
	}
	_ = nc.SetDeadline(time.Time{})
	return 0, nil
}

func classifyHandshake(err error) hsReason {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return hsTimeout
	case errors.Is(err, errControlType):
		return hsUnexpected
	case errors.Is(err, errContentType):
		return hsContentType
	case errors.Is(err, errControlTooLarge):
		return hsOversized
	case errors.Is(err, errNotControl), errors.Is(err, errControlMalformed):
		return hsMalformed
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return hsClosed
	default:
		return hsClosed // reset, broken pipe
	}
}
