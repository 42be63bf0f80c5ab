package listener

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// TCPConfig bounds the client side of DNS over TCP. Every field has a
// default (the Default* constants) used when it is zero; every bound that
// closes a connection is counted by reason in TCPStats.Closed.
type TCPConfig struct {
	// ACL is checked at accept; a client it refuses is closed before a byte
	// is read (whatever the UDP ACL action: see doc.go).
	ACL *ACL
	// MaxConns caps open client connections; MaxConnsPerIP caps them per
	// client address (per /64 for IPv6, the unit an attacker gets). A
	// connection over a cap is closed at accept.
	MaxConns      int
	MaxConnsPerIP int
	// MaxInflight caps the queries of one connection waiting for answers.
	// At the cap the connection is not read until one completes (TCP's own
	// flow control then slows the client); nothing is dropped.
	MaxInflight int
	// IdleTimeout closes a connection that has not completed a message for
	// this long and has nothing outstanding (RFC 7766 §6.2.3). Only a
	// complete message resets it.
	IdleTimeout time.Duration
	// ReadTimeout is the per-message deadline: a message whose first length
	// octet has arrived must be complete within it.
	ReadTimeout time.Duration
	// WriteTimeout bounds each write of queued replies to a client that does
	// not read.
	WriteTimeout time.Duration
	// MaxLifetime and MaxQueries end a connection gracefully (stop reading,
	// send what is outstanding, close).
	MaxLifetime time.Duration
	MaxQueries  int
	// MaxPending caps the reply bytes queued for a client whose socket
	// buffer is full (at least one largest message). A reply that does not
	// fit closes the connection (counted as output_full).
	MaxPending int
	// SndBuf, when > 0, fixes SO_SNDBUF on accepted sockets (kernel
	// autotuning otherwise; tests use a small value).
	SndBuf int
	Log    *slog.Logger
}

// Defaults for TCPConfig fields left zero.
const (
	DefaultTCPMaxConns      = 1024
	DefaultTCPMaxConnsPerIP = 64
	DefaultTCPMaxInflight   = 32
	DefaultTCPIdleTimeout   = 10 * time.Second
	DefaultTCPReadTimeout   = 5 * time.Second
	DefaultTCPWriteTimeout  = 5 * time.Second
	DefaultTCPMaxLifetime   = 5 * time.Minute
	DefaultTCPMaxQueries    = 10000
	DefaultTCPMaxPending    = 128 << 10
	minTCPMaxPending        = largeMsg + 2
)

func (c *TCPConfig) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxConns, DefaultTCPMaxConns)
	def(&c.MaxConnsPerIP, DefaultTCPMaxConnsPerIP)
	def(&c.MaxInflight, DefaultTCPMaxInflight)
	def(&c.MaxQueries, DefaultTCPMaxQueries)
	def(&c.MaxPending, DefaultTCPMaxPending)
	c.MaxPending = max(c.MaxPending, minTCPMaxPending)
	defd(&c.IdleTimeout, DefaultTCPIdleTimeout)
	defd(&c.ReadTimeout, DefaultTCPReadTimeout)
	defd(&c.WriteTimeout, DefaultTCPWriteTimeout)
	defd(&c.MaxLifetime, DefaultTCPMaxLifetime)
	if c.ACL == nil {
		c.ACL = AllowAll()
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// CloseReason is why a client connection ended; each connection ends with
// exactly one.
type CloseReason uint8

// Close reasons. Graceful ones (EOF, Lifetime, MaxQueries, Shutdown) stop
// reading and send every outstanding answer before closing.
const (
	CloseEOF          CloseReason = iota // client closed between messages
	CloseEOFPartial                      // client closed inside a message (the partial message is discarded)
	CloseIdle                            // IdleTimeout
	CloseReadTimeout                     // a started message missed ReadTimeout
	CloseWriteTimeout                    // queued replies not taken within WriteTimeout
	CloseShortLength                     // length prefix under 12
	CloseOutputFull                      // MaxPending exceeded
	CloseLifetime                        // MaxLifetime reached
	CloseMaxQueries                      // MaxQueries read
	CloseReadError                       // reset or other socket error while reading
	CloseWriteError                      // reset or other socket error while writing
	CloseAborted                         // the zone transfer it was receiving broke off upstream
	CloseShutdown                        // tapproxy is stopping
	numCloseReasons
)

var closeReasonNames = [numCloseReasons]string{"eof", "eof_partial", "idle", "read_timeout", "write_timeout",
	"short_length", "output_full", "lifetime", "max_queries", "read_error", "write_error", "aborted", "shutdown"}

func (r CloseReason) String() string {
	if r < numCloseReasons {
		return closeReasonNames[r]
	}
	return "unknown"
}

// CloseReasons lists every reason, in counter order.
func CloseReasons() []CloseReason {
	out := make([]CloseReason, numCloseReasons)
	for i := range out {
		out[i] = CloseReason(i)
	}
	return out
}

// TCPStats counts every client connection's and message's fate.
// Connections: Accepted = RefusedACL + RejectedMaxConns + RejectedPerIP +
// ΣClosed + open. Messages (complete frames): Received = DroppedQR +
// Handled; lengths under 12 are not messages (they close the connection,
// Closed[CloseShortLength]).
type TCPStats struct {
	Accepted         atomic.Uint64
	RefusedACL       atomic.Uint64 // closed at accept: client not in the ACL
	RejectedMaxConns atomic.Uint64 // closed at accept: MaxConns open
	RejectedPerIP    atomic.Uint64 // closed at accept: MaxConnsPerIP open from that client
	AcceptErrors     atomic.Uint64 // accept(2) failures (EMFILE, ...)
	Closed           [numCloseReasons]atomic.Uint64

	Received      atomic.Uint64
	DroppedQR     atomic.Uint64 // QR=1: never forwarded, never answered
	Handled       atomic.Uint64 // passed to the TCPQueryHandler
	InflightWaits atomic.Uint64 // reads paused because MaxInflight was reached
	QueuedReplies atomic.Uint64 // replies queued behind a full socket buffer instead of written at once
	NoTimestamp   atomic.Uint64 // accepted sockets where SO_TIMESTAMPNS was refused
}

// TCPQueryHandler takes each query read on a client connection.
type TCPQueryHandler interface {
	// HandleTCPQuery is called on the connection's goroutine. msg is valid
	// only during the call and may be rewritten in place. The handler must
	// call c.Finish exactly once for the query, when its last answer has
	// been handed to c.Send (or the query has been given up).
	HandleTCPQuery(c *TCPConn, msg []byte, kernelTime, readTime int64)
}

// TCPServer accepts DNS-over-TCP clients on one listener per address. One
// accept goroutine per listener and one goroutine per connection (plus one
// writer, started the first time a reply has to wait for the client) is the
// whole concurrency: bounded by MaxConns, never one per message. One listener
// per address (rather than one per worker as for UDP) because accepting is
// rare next to datagrams, the per-connection goroutines already spread the
// work over every CPU, and one accept path keeps the global and per-client
// caps exact without coordination.
type TCPServer struct {
	cfg TCPConfig
	h   TCPQueryHandler

	lns []*net.TCPListener

	mu       sync.Mutex
	open     int
	perIP    map[netip.Addr]int
	conns    map[*TCPConn]struct{}
	stopping bool

	acceptWG sync.WaitGroup
	connWG   sync.WaitGroup
	stats    TCPStats
	// connsGone is signalled (non-blocking) whenever a connection ends, so
	// Drain waits without polling.
	connsGone chan struct{}
}

// NewTCPServer returns a server that hands queries to h.
func NewTCPServer(cfg TCPConfig, h TCPQueryHandler) *TCPServer {
	cfg.setDefaults()
	return &TCPServer{cfg: cfg, h: h, perIP: make(map[netip.Addr]int),
		conns: make(map[*TCPConn]struct{}), connsGone: make(chan struct{}, 1)}
}

// Listen binds a listener on addr and returns the bound address.
func (s *TCPServer) Listen(ctx context.Context, addr netip.AddrPort) (netip.AddrPort, error) {
	ln, warnings, err := ListenTCP(ctx, addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	for _, w := range warnings {
		s.cfg.Log.Warn("kernel refused a socket option", "tcp_addr", addr, "detail", w)
	}
	s.lns = append(s.lns, ln)
	a := ln.Addr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()), nil
}

// Addrs returns the bound listener addresses.
func (s *TCPServer) Addrs() []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(s.lns))
	for _, ln := range s.lns {
		a := ln.Addr().(*net.TCPAddr).AddrPort()
		out = append(out, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()))
	}
	return out
}

// Stats returns the counters.
func (s *TCPServer) Stats() *TCPStats { return &s.stats }

// Open returns the number of open client connections.
func (s *TCPServer) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// Start runs the accept loops until ctx is done; then the listeners are
// closed and every connection stops reading and finishes what it has
// outstanding (see Drain).
func (s *TCPServer) Start(ctx context.Context) {
	for _, ln := range s.lns {
		s.acceptWG.Add(1)
		go func() { defer s.acceptWG.Done(); s.acceptLoop(ln) }()
	}
	context.AfterFunc(ctx, s.stop)
}

func (s *TCPServer) stop() {
	for _, ln := range s.lns {
		_ = ln.Close()
	}
	s.mu.Lock()
	s.stopping = true
	conns := make([]*TCPConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.stopReading()
	}
}

// Drain waits until every connection has ended or ctx is done.
func (s *TCPServer) Drain(ctx context.Context) {
	for {
		s.mu.Lock()
		n := s.open
		s.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-s.connsGone:
		}
	}
}

// Close closes the listeners, closes every remaining connection (reason
// shutdown) and waits for all goroutines. Idempotent.
func (s *TCPServer) Close() {
	s.stop()
	s.acceptWG.Wait()
	s.mu.Lock()
	conns := make([]*TCPConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close(CloseShutdown)
	}
	s.connWG.Wait()
}

func (s *TCPServer) acceptLoop(ln *net.TCPListener) {
	var delay time.Duration
	var lastLog time.Time
	for {
		nc, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE, ENFILE, ENOBUFS: back off (the net/http habit)
			// so a full fd table does not spin the CPU.
			s.stats.AcceptErrors.Add(1)
			if time.Since(lastLog) > 5*time.Second {
				s.cfg.Log.Warn("accepting tcp connection", "addr", ln.Addr(), "err", err)
				lastLog = time.Now()
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.stats.Accepted.Add(1)
		s.admit(nc)
	}
}

// ipKey is the unit of the per-client cap: the IPv4 address, or the /64 of
// an IPv6 one.
func ipKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// reject closes a connection at accept with an RST (SO_LINGER 0), so a flood
// of refused connections leaves no TIME_WAIT state behind on our side.
func reject(nc *net.TCPConn, ctr *atomic.Uint64) {
	ctr.Add(1)
	_ = nc.SetLinger(0)
	_ = nc.Close()
}

func (s *TCPServer) admit(nc *net.TCPConn) {
	ra := nc.RemoteAddr().(*net.TCPAddr).AddrPort()
	remote := netip.AddrPortFrom(ra.Addr().Unmap(), ra.Port())
	if !s.cfg.ACL.Allowed(remote.Addr()) {
		reject(nc, &s.stats.RefusedACL)
		return
	}
	key := ipKey(remote.Addr())
	s.mu.Lock()
	switch {
	case s.stopping:
		s.mu.Unlock()
		reject(nc, &s.stats.Closed[CloseShutdown])
		return
	case s.open >= s.cfg.MaxConns:
		s.mu.Unlock()
		reject(nc, &s.stats.RejectedMaxConns)
		return
	case s.perIP[key] >= s.cfg.MaxConnsPerIP:
		s.mu.Unlock()
		reject(nc, &s.stats.RejectedPerIP)
		return
	}
	s.open++
	s.perIP[key]++
	s.connWG.Add(1)
	s.mu.Unlock()
	// Socket setup (syscalls) happens outside the lock; the slot is
	// already counted, so the caps hold meanwhile.
	c, err := newTCPConn(s, nc, remote, key)
	if err != nil {
		s.stats.Closed[CloseReadError].Add(1)
		_ = nc.Close()
		s.mu.Lock()
		s.releaseLocked(key)
		s.mu.Unlock()
		select {
		case s.connsGone <- struct{}{}:
		default:
		}
		s.connWG.Done()
		return
	}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	stopping := s.stopping
	s.mu.Unlock()
	if stopping {
		c.stopReading() // stop ran between the two critical sections
	}
	go c.serve()
}

func (s *TCPServer) releaseLocked(key netip.Addr) {
	s.open--
	if s.perIP[key]--; s.perIP[key] <= 0 {
		delete(s.perIP, key)
	}
}

// connEnded is called once per connection after both of its goroutines
// are done with it.
func (s *TCPServer) connEnded(c *TCPConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.releaseLocked(c.key)
	s.mu.Unlock()
	select {
	case s.connsGone <- struct{}{}:
	default:
	}
	s.connWG.Done()
}

// String is for logs.
func (s *TCPServer) String() string { return fmt.Sprintf("tcp%v", s.Addrs()) }
