package responder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
)

// Config configures a Server.
type Config struct {
	// Addr is the UDP address to listen on, e.g. "127.0.0.1:0".
	Addr string
	// Zone is the zone answered (default "bench.test.").
	Zone string
	// Sockets is the number of SO_REUSEPORT sockets, one worker each
	// (default 1).
	Sockets int
	// Batch is the number of datagrams per recvmmsg/sendmmsg (default 64;
	// ignored where batching is not available).
	Batch int
	// RcvBuf and SndBuf request socket buffer sizes in bytes (0: kernel
	// default). SO_RCVBUFFORCE/SO_SNDBUFFORCE are tried first.
	RcvBuf, SndBuf int
	// Logger receives setup and error messages, never per-packet ones.
	Logger *slog.Logger
}

// DefaultZone is the zone answered when Config.Zone is empty.
const DefaultZone = "bench.test."

// Counters is a snapshot of the server's per-outcome counters.
type Counters struct {
	// Received counts datagrams read.
	Received uint64
	// Truncated counts datagrams longer than the read buffer; they are
	// dropped without an answer and get no outcome.
	Truncated uint64
	// Outcomes counts Answer's outcomes by Outcome.
	Outcomes [NumOutcomes]uint64
	// Sent counts answers handed to the kernel.
	Sent uint64
	// SendFailed counts answers the kernel refused.
	SendFailed uint64
}

// Pairs returns the counters as alternating key, value arguments for slog.
func (c Counters) Pairs() []any {
	out := []any{"received", c.Received, "truncated", c.Truncated}
	for o := Outcome(0); o < NumOutcomes; o++ {
		out = append(out, o.String(), c.Outcomes[o])
	}
	return append(out, "sent", c.Sent, "send_failed", c.SendFailed)
}

// counters is one worker's live counters.
type counters struct {
	received, truncated, sent, sendFailed atomic.Uint64
	outcomes                              [NumOutcomes]atomic.Uint64
}

// Server answers on one or more SO_REUSEPORT sockets bound to one address.
type Server struct {
	cfg   Config
	zone  *Zone
	conns []*net.UDPConn
	ctrs  []counters
	addr  netip.AddrPort
	log   *slog.Logger
}

// Listen binds cfg.Sockets sockets to cfg.Addr. With port 0 the first
// socket picks the port and the others join it.
func Listen(cfg Config) (*Server, error) {
	if cfg.Zone == "" {
		cfg.Zone = DefaultZone
	}
	if cfg.Sockets <= 0 {
		cfg.Sockets = 1
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	zone, err := NewZone(cfg.Zone)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, zone: zone, log: cfg.Logger, ctrs: make([]counters, cfg.Sockets)}
	addr := cfg.Addr
	for i := 0; i < cfg.Sockets; i++ {
		lc := net.ListenConfig{Control: reusePort}
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("listening on %s (socket %d): %w", addr, i, err)
		}
		c := pc.(*net.UDPConn)
		s.conns = append(s.conns, c)
		if i == 0 {
			s.addr = c.LocalAddr().(*net.UDPAddr).AddrPort()
			addr = s.addr.String()
		}
		if err := setBuffers(c, cfg.RcvBuf, cfg.SndBuf); err != nil {
			s.closeAll()
			return nil, fmt.Errorf("socket buffers on %s: %w", addr, err)
		}
	}
	return s, nil
}

// Addr returns the bound address.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Buffers returns the effective receive and send buffer sizes of the first
// socket, as the kernel reports them.
func (s *Server) Buffers() (rcv, snd int, err error) {
	rc, err := s.conns[0].SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		rcv, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		if serr == nil {
			snd, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
		}
	})
	return rcv, snd, errors.Join(err, serr)
}

// Serve runs one worker per socket until ctx is done, then closes the
// sockets and returns once every worker has stopped. It returns the errors
// that stopped workers early.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, s.closeAll)
	defer stop()
	var wg sync.WaitGroup
	errs := make([]error, len(s.conns))
	for i, c := range s.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := serveConn(c, s.zone, &s.ctrs[i], s.cfg.Batch)
			if err != nil && ctx.Err() == nil {
				errs[i] = fmt.Errorf("socket %d on %s: %w", i, s.addr, err)
				s.log.Error("worker stopped", "socket", i, "err", err)
			}
		}()
	}
	wg.Wait()
	s.closeAll()
	return errors.Join(errs...)
}

// Counters sums the workers' counters.
func (s *Server) Counters() Counters {
	var out Counters
	for i := range s.ctrs {
		c := &s.ctrs[i]
		out.Received += c.received.Load()
		out.Truncated += c.truncated.Load()
		out.Sent += c.sent.Load()
		out.SendFailed += c.sendFailed.Load()
		for o := range out.Outcomes {
			out.Outcomes[o] += c.outcomes[o].Load()
		}
	}
	return out
}

func (s *Server) closeAll() {
	for _, c := range s.conns {
		c.Close()
	}
}

// isClosed reports whether err means the socket was closed under us, which
// is how Serve stops workers.
func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }

// readBufLen is the per-datagram read buffer: larger than any query a
// benchmark sends; a longer datagram is counted as truncated.
const readBufLen = 2048
