// Package server wires the stages of the data path (listener → upstream →
// sink) for a configuration, runs them, and shuts them down in order. It
// exists so that cmd/tapproxy stays a thin flag parser and tests can run a
// whole proxy in-process.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
	"github.com/tapproxy/tapproxy/upstream"
)

// Config is everything the serve command needs.
type Config struct {
	Listen []netip.AddrPort
	// Upstreams lists the servers in order. UpstreamSpecs, when set,
	// replaces it with weights and per-upstream options.
	Upstreams     []netip.AddrPort
	UpstreamSpecs []upstream.Spec
	Policy        upstream.Policy
	Health        upstream.HealthConfig
	// Workers is the number of SO_REUSEPORT sockets (and workers) per
	// listen address.
	Workers   int
	ACL       *listener.ACL
	ACLAction listener.ACLAction
	// Client-socket options (buffers); PktInfo and ReusePort are set here.
	Socket   listener.Options
	Upstream upstream.Config
	Sink     txn.Sink
	Log      *slog.Logger
	// Ready, when set, is called once every socket is bound.
	Ready func(s *Server)
	// DrainTimeout bounds how long shutdown waits for in-flight queries
	// (default: the upstream timeout plus 500 ms).
	DrainTimeout time.Duration
	// TCP configures DNS over TCP on the same addresses (tcp.go); off
	// when zero.
	TCP TCPConfig
}

// ErrNoUpstream is returned when no upstream is configured: tapproxy never
// falls back to the resolvers in /etc/resolv.conf.
var ErrNoUpstream = errors.New("no upstream configured (use --upstream ADDR:PORT)")

// ErrNoListen is returned when no listen address is configured.
var ErrNoListen = errors.New("no listen address configured (use --listen ADDR:PORT)")

type pair struct {
	lw *listener.Worker
	uw *upstream.Worker
}

// Server is a running proxy.
type Server struct {
	cfg   Config
	pairs []pair
	seq   txn.Seq
	pool  *upstream.Pool
	tcp   *tcpSide // nil when TCP is off (tcp.go)
}

// ErrLoop is returned when an upstream is one of tapproxy's own listen
// addresses: every query would come back to us.
var ErrLoop = errors.New("forwarding loop")

// checkLoop refuses upstreams that are our own listen address, including a
// wildcard listen on the same port when the upstream is a local address.
func checkLoop(listen []netip.AddrPort, specs []upstream.Spec) error {
	var local map[netip.Addr]bool
	for _, sp := range specs {
		for _, l := range listen {
			if sp.Addr.Port() != l.Port() {
				continue
			}
			if sp.Addr.Addr() == l.Addr() {
				return fmt.Errorf("%w: upstream %s is a listen address", ErrLoop, sp.Addr)
			}
			if l.Addr().IsUnspecified() && l.Addr().Is4() == sp.Addr.Addr().Is4() {
				if local == nil {
					local = localAddrs()
				}
				if sp.Addr.Addr().IsLoopback() || local[sp.Addr.Addr()] {
					return fmt.Errorf("%w: upstream %s is this host on the port tapproxy listens on (%s)", ErrLoop, sp.Addr, l)
				}
			}
		}
	}
	return nil
}

func localAddrs() map[netip.Addr]bool {
	m := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return m
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			m[p.Addr().Unmap()] = true
		}
	}
	return m
}

// New binds every socket. Errors name the address that failed.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if len(cfg.Upstreams) == 0 && len(cfg.UpstreamSpecs) == 0 {
		return nil, ErrNoUpstream
	}
	if len(cfg.Listen) == 0 {
		return nil, ErrNoListen
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Sink == nil {
		cfg.Sink = txn.Discard{}
	}
	specs := cfg.UpstreamSpecs
	if len(specs) == 0 {
		specs = upstream.SpecsFrom(cfg.Upstreams)
	}
	if len(cfg.Upstreams) == 0 {
		for _, sp := range specs {
			cfg.Upstreams = append(cfg.Upstreams, sp.Addr)
		}
	}
	if err := checkLoop(cfg.Listen, specs); err != nil {
		return nil, err
	}
	pool, err := upstream.NewPool(specs, cfg.Policy, cfg.Health, cfg.Log)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, pool: pool}
	uc := cfg.Upstream
	uc.Upstreams, uc.Pool = cfg.Upstreams, pool
	uc.Sink, uc.Seq, uc.Log = cfg.Sink, &s.seq, cfg.Log
	so := cfg.Socket
	so.ReusePort, so.PktInfo = true, true
	for _, addr := range cfg.Listen {
		port := addr.Port()
		for i := 0; i < cfg.Workers; i++ {
			// With port 0 the first socket picks the port and the rest
			// join it through SO_REUSEPORT.
			c, err := listener.ListenUDP(ctx, netip.AddrPortFrom(addr.Addr(), port), so)
			if err != nil {
				s.Close()
				return nil, err
			}
			port = c.LocalAddr().Port()
			for _, w := range c.Features().Warnings {
				cfg.Log.Warn("kernel refused a socket option", "addr", c.LocalAddr(), "detail", w)
			}
			if i == 0 {
				f := c.Features()
				cfg.Log.Info("client socket", "addr", c.LocalAddr(), "sockets", cfg.Workers,
					"rcvbuf", f.RcvBuf, "sndbuf", f.SndBuf, "timestamps", f.Timestamps,
					"drop_counter", f.DropCounter, "pktinfo", f.PktInfo)
			}
			uw, err := upstream.NewWorker(ctx, uc, c)
			if err != nil {
				c.Close()
				s.Close()
				return nil, err
			}
			for _, u := range uw.Sockets() {
				for _, w := range u.Features().Warnings {
					cfg.Log.Warn("kernel refused a socket option", "upstream_socket", u.LocalAddr(), "detail", w)
				}
			}
			if len(s.pairs) == 0 {
				logUpstreamSockets(cfg.Log, uw, cfg.Workers*len(cfg.Listen))
			}
			lw := listener.NewWorker(c, listener.WorkerConfig{ACL: cfg.ACL, ACLAction: cfg.ACLAction,
				Sink: cfg.Sink, Seq: &s.seq, Log: cfg.Log}, uw)
			s.pairs = append(s.pairs, pair{lw: lw, uw: uw})
		}
	}
	var uws []*upstream.Worker
	for _, p := range s.pairs {
		uws = append(uws, p.uw)
	}
	guard := upstream.NewLoopGuard(uws)
	for _, p := range s.pairs {
		p.uw.SetLoopGuard(guard)
	}
	if err := s.newTCP(ctx); err != nil { // TCP listeners on the bound addresses (tcp.go)
		s.Close()
		if rctx, ok := retryTCPPort(ctx, cfg, err); ok {
			return New(rctx, cfg) // port 0: the port UDP picked is taken on TCP
		}
		return nil, err
	}
	return s, nil
}

// logUpstreamSockets says once how upstream source ports are chosen (the
// sockets themselves change as ports rotate, so they are not listed).
func logUpstreamSockets(log *slog.Logger, uw *upstream.Worker, workers int) {
	rot, lo, hi, err := uw.PortRotation()
	attrs := []any{"per_worker", len(uw.Sockets()), "workers", workers}
	if rot == 0 {
		log.Info("upstream sockets: fixed kernel-chosen source ports", attrs...)
		return
	}
	attrs = append(attrs, "port_rotation", rot, "port_range", fmt.Sprintf("%d-%d", lo, hi))
	log.Info("upstream sockets: random source ports, rotated", attrs...)
	if err != nil {
		log.Warn("kernel ephemeral port range unreadable, using the default", "port_range", fmt.Sprintf("%d-%d", lo, hi), "err", err)
	}
}

// Addrs returns the bound client-facing addresses, one per listen address
// (the kernel-chosen port when 0 was asked).
func (s *Server) Addrs() []netip.AddrPort {
	var out []netip.AddrPort
	seen := map[netip.AddrPort]bool{}
	for _, p := range s.pairs {
		a := p.lw.Conn().LocalAddr()
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// Run serves until ctx is done, then stops reading, lets in-flight queries
// finish or time out (bounded by DrainTimeout), and closes every socket.
func (s *Server) Run(ctx context.Context) error {
	upCtx, upCancel := context.WithCancel(context.Background())
	defer upCancel()
	probesDone := make(chan struct{})
	go func() { defer close(probesDone); s.pool.RunProbes(upCtx) }()
	var lwg sync.WaitGroup
	errs := make(chan error, len(s.pairs))
	for _, p := range s.pairs {
		p.uw.Start(upCtx)
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			if err := p.lw.Run(ctx); err != nil {
				errs <- err
			}
		}()
	}
	s.startTCP(ctx) // tcp.go
	if s.cfg.Ready != nil {
		s.cfg.Ready(s)
	}
	<-ctx.Done()
	lwg.Wait()
	drain := s.cfg.DrainTimeout
	if drain <= 0 {
		t := s.cfg.Upstream.Timeout
		if t <= 0 {
			t = upstream.DefaultTimeout
		}
		drain = t + 500*time.Millisecond
	}
	dctx, dcancel := context.WithTimeout(context.Background(), drain)
	for _, p := range s.pairs {
		p.uw.Drain(dctx)
	}
	s.stopTCP(dctx) // tcp.go: drain TCP connections, then close them
	dcancel()
	upCancel()
	for _, p := range s.pairs {
		p.uw.Wait()
	}
	<-probesDone
	s.Close()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// Close closes every socket.
func (s *Server) Close() {
	s.closeTCP() // tcp.go
	for _, p := range s.pairs {
		p.uw.Close()
		p.lw.Conn().Close()
	}
}

// Counters is a snapshot of every fate counter, summed over workers.
type Counters struct {
	Received, DroppedShort, DroppedQR, RefusedACL, DroppedACL uint64
	DroppedInflightFull, SendFailed, Forwarded, Malformed     uint64
	ServfailAllDown, LoopDetected, Failovers, RetriesDenied   uint64
	Answered, TimedOut, ServfailSent, ReplyFailed             uint64
	// ServfailSendFailed: of SendFailed, answered SERVFAIL
	// (--servfail-on-timeout; informational).
	ServfailSendFailed                                             uint64
	RespReceived, RespMatched, RespShort, RespNotResponse          uint64
	RespWrongSource, RespUnknownID, RespLate, RespQuestionMismatch uint64
	RespReadErrors, KernelDrops, InFlight                          uint64
	// DroppedPanic (a client fate) and RespPanic (a response fate): a
	// recovered panic (a bug) ended the datagram; CompletePanic: one
	// while completing queries whose fates stay counted; Panics counts
	// every recovered panic on the DNS path, UDP and TCP (informational).
	DroppedPanic, RespPanic, CompletePanic, Panics uint64
	// Upstream source-port rotation (informational, upstream.Stats).
	PortRotations, PortRotationsDeferred, PortBindRetries uint64
	PortBindFallbacks, PortOpenErrors                     uint64
	TCP                                                   TCPCounters // tcp.go
}

// Counters sums the workers' counters.
func (s *Server) Counters() Counters {
	var c Counters
	for _, p := range s.pairs {
		l, u := p.lw.Stats(), p.uw.Stats()
		c.Received += l.Received.Load()
		c.DroppedShort += l.DroppedShort.Load()
		c.DroppedQR += l.DroppedQR.Load()
		c.RefusedACL += l.RefusedACL.Load()
		c.DroppedACL += l.DroppedACL.Load()
		c.DroppedInflightFull += u.DroppedFull.Load()
		c.SendFailed += u.SendFailed.Load()
		c.Forwarded += u.Forwarded.Load()
		c.Malformed += u.Malformed.Load()
		c.ServfailAllDown += u.ServfailAllDown.Load()
		c.LoopDetected += u.LoopDetected.Load()
		c.Failovers += u.Failovers.Load()
		c.RetriesDenied += u.RetriesDenied.Load()
		c.Answered += u.Answered.Load()
		c.TimedOut += u.TimedOut.Load()
		c.ServfailSent += u.ServfailSent.Load()
		c.ServfailSendFailed += u.ServfailSendFailed.Load()
		c.ReplyFailed += u.ReplyFailed.Load()
		c.RespReceived += u.RespReceived.Load()
		c.RespMatched += u.RespMatched.Load()
		c.RespShort += u.RespShort.Load()
		c.RespNotResponse += u.RespNotResponse.Load()
		c.RespWrongSource += u.RespWrongSource.Load()
		c.RespUnknownID += u.RespUnknownID.Load()
		c.RespLate += u.RespLate.Load()
		c.RespQuestionMismatch += u.RespQuestionMismatch.Load()
		c.RespReadErrors += u.RespReadErrors.Load()
		c.DroppedPanic += l.DroppedPanic.Load() + u.DroppedPanic.Load()
		c.RespPanic += u.RespPanic.Load()
		c.CompletePanic += u.CompletePanic.Load()
		c.PortRotations += u.PortRotations.Load()
		c.PortRotationsDeferred += u.PortRotationsDeferred.Load()
		c.PortBindRetries += u.PortBindRetries.Load()
		c.PortBindFallbacks += u.PortBindFallbacks.Load()
		c.PortOpenErrors += u.PortOpenErrors.Load()
		c.KernelDrops += uint64(p.lw.Conn().KernelDrops())
		// Closed (rotated) sockets' drops included.
		for _, d := range p.uw.KernelDrops() {
			c.KernelDrops += d.Drops
		}
		c.InFlight += uint64(p.uw.InFlight())
	}
	c.TCP = s.tcpCounters() // tcp.go
	c.Panics = c.DroppedPanic + c.RespPanic + c.CompletePanic + c.TCP.DroppedPanic
	return c
}

// Attrs renders the counters as slog attributes with the documented names.
func (c Counters) Attrs() []any {
	a := []any{
		"received", c.Received, "dropped_short", c.DroppedShort, "dropped_qr", c.DroppedQR,
		"refused_acl", c.RefusedACL, "dropped_acl", c.DroppedACL,
		"dropped_inflight_full", c.DroppedInflightFull, "send_failed", c.SendFailed,
		"forwarded", c.Forwarded, "malformed", c.Malformed,
		"servfail_all_down", c.ServfailAllDown, "loop_detected", c.LoopDetected,
		"failovers", c.Failovers, "retries_denied", c.RetriesDenied,
		"answered", c.Answered, "timed_out", c.TimedOut, "servfail_sent", c.ServfailSent,
		"servfail_send_failed", c.ServfailSendFailed,
		"reply_failed", c.ReplyFailed, "in_flight", c.InFlight,
		"resp_received", c.RespReceived, "resp_matched", c.RespMatched, "resp_short", c.RespShort,
		"resp_not_response", c.RespNotResponse, "resp_wrong_source", c.RespWrongSource,
		"resp_unknown_id", c.RespUnknownID, "resp_late", c.RespLate,
		"resp_question_mismatch", c.RespQuestionMismatch, "resp_read_errors", c.RespReadErrors,
		"kernel_drops", c.KernelDrops,
		"dropped_panic", c.DroppedPanic, "resp_panic", c.RespPanic, "complete_panic", c.CompletePanic,
		"panics", c.Panics,
		"port_rotations", c.PortRotations, "port_rotations_deferred", c.PortRotationsDeferred,
		"port_bind_retries", c.PortBindRetries, "port_bind_fallbacks", c.PortBindFallbacks,
		"port_open_errors", c.PortOpenErrors,
	}
	return append(a, c.TCP.attrs()...) // tcp_* keys (tcp.go)
}

// Check verifies the accounting invariants (every datagram in exactly one
// fate). It returns nil when they hold; in flight queries count as pending.
func (c Counters) Check() error {
	var errs []error
	if got := c.DroppedShort + c.DroppedQR + c.RefusedACL + c.DroppedACL + c.DroppedInflightFull + c.SendFailed + c.Forwarded + c.ServfailAllDown + c.LoopDetected + c.DroppedPanic; got != c.Received {
		errs = append(errs, fmt.Errorf("received %d != sum of client fates %d", c.Received, got))
	}
	if got := c.Answered + c.TimedOut + c.ReplyFailed + c.InFlight; got != c.Forwarded {
		errs = append(errs, fmt.Errorf("forwarded %d != answered+timed_out+reply_failed+in_flight %d", c.Forwarded, got))
	}
	if got := c.RespMatched + c.RespShort + c.RespNotResponse + c.RespWrongSource + c.RespUnknownID + c.RespLate + c.RespQuestionMismatch + c.RespPanic; got != c.RespReceived {
		errs = append(errs, fmt.Errorf("resp_received %d != sum of response fates %d", c.RespReceived, got))
	}
	errs = append(errs, c.TCP.check()) // tcp.go
	return errors.Join(errs...)
}

// Validate checks cfg the way New would, without binding anything: what
// `tapproxy check-config` runs.
func Validate(cfg Config) error {
	if len(cfg.Upstreams) == 0 && len(cfg.UpstreamSpecs) == 0 {
		return ErrNoUpstream
	}
	if len(cfg.Listen) == 0 {
		return ErrNoListen
	}
	specs := cfg.UpstreamSpecs
	if len(specs) == 0 {
		specs = upstream.SpecsFrom(cfg.Upstreams)
	}
	if err := checkLoop(cfg.Listen, specs); err != nil {
		return err
	}
	_, err := upstream.NewPool(specs, cfg.Policy, cfg.Health, nil)
	return err
}

// Pool returns the shared upstream pool (per-upstream state and figures).
func (s *Server) Pool() *upstream.Pool { return s.pool }

// SocketDrop is the kernel receive-queue drop count of the UDP sockets on
// one local address (Kind "client": the SO_REUSEPORT sockets of a listen
// address, summed over workers) or to one upstream (Kind "upstream": every
// socket tapproxy has had to it, closed ones included; Local is then the
// upstream's address, since the sockets' own ports rotate).
type SocketDrop struct {
	Kind  string // "client" or "upstream"
	Local netip.AddrPort
	Drops uint64
}

// SocketDrops lists the kernel drop counters, one per client address
// and one per upstream, where the kernel accepted the option (sockets
// without it are left out rather than reported as 0). The keys are stable
// while ports rotate, so metrics built on them do not grow a series per
// port.
func (s *Server) SocketDrops() []SocketDrop {
	var out []SocketDrop
	at := map[SocketDrop]int{} // key: Kind and Local, Drops 0
	addTo := func(kind string, a netip.AddrPort, n uint64) {
		k := SocketDrop{Kind: kind, Local: a}
		if i, ok := at[k]; ok {
			out[i].Drops += n
			return
		}
		at[k] = len(out)
		k.Drops = n
		out = append(out, k)
	}
	for _, p := range s.pairs {
		if c := p.lw.Conn(); c.Features().DropCounter {
			addTo("client", c.LocalAddr(), uint64(c.KernelDrops()))
		}
		for _, d := range p.uw.KernelDrops() {
			if d.Counted {
				addTo("upstream", d.Upstream, d.Drops)
			}
		}
	}
	return out
}
