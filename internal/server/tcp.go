package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"

	"github.com/tapproxy/tapproxy/listener"
	"github.com/tapproxy/tapproxy/upstream"
)

// TCPConfig configures DNS over TCP (RFC 7766) on the same addresses and
// ports as UDP. The zero value leaves TCP off.
type TCPConfig struct {
	Enable bool
	// Client bounds the client side; its ACL and Log come from Config.
	Client listener.TCPConfig
	// Upstream configures the pooled upstream connections; Pool (the
	// one the UDP side uses: same policy, same health state, same
	// per-upstream figures), Sink, Seq and Log come from the Server, and
	// Timeout and ServfailOnTimeout from Config.Upstream when left zero.
	Upstream upstream.TCPConfig
}

// tcpSide is the TCP half of a Server.
type tcpSide struct {
	srv       *listener.TCPServer
	fwd       *upstream.TCPForwarder
	closeOnce sync.Once
}

// newTCP binds a TCP listener on every bound UDP address (same port, so
// port 0 resolves to the port the UDP sockets got).
func (s *Server) newTCP(ctx context.Context) error {
	if !s.cfg.TCP.Enable {
		return nil
	}
	uc := s.cfg.TCP.Upstream
	uc.Upstreams, uc.Pool = s.cfg.Upstreams, s.pool
	if uc.Timeout <= 0 {
		uc.Timeout = s.cfg.Upstream.Timeout
	}
	uc.ServfailOnTimeout = uc.ServfailOnTimeout || s.cfg.Upstream.ServfailOnTimeout
	uc.Sink, uc.Seq, uc.Log = s.cfg.Sink, &s.seq, s.cfg.Log
	fwd, err := upstream.NewTCPForwarder(uc)
	if err != nil {
		return err
	}
	cc := s.cfg.TCP.Client
	cc.ACL, cc.Log = s.cfg.ACL, s.cfg.Log
	srv := listener.NewTCPServer(cc, fwd)
	s.tcp = &tcpSide{srv: srv, fwd: fwd}
	for _, a := range s.Addrs() {
		if _, err := srv.Listen(ctx, a); err != nil {
			return err
		}
	}
	return nil
}

type tcpAttemptKey struct{}

// retryTCPPort decides whether New should start over because a listen
// address asked for port 0, UDP got port P, and P is taken on TCP (the
// kernel picks UDP and TCP ports independently). A fixed port is never
// retried. At most 8 attempts.
func retryTCPPort(ctx context.Context, cfg Config, err error) (context.Context, bool) {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return ctx, false
	}
	zero := false
	for _, a := range cfg.Listen {
		zero = zero || a.Port() == 0
	}
	n, _ := ctx.Value(tcpAttemptKey{}).(int)
	if !zero || n >= 8 {
		return ctx, false
	}
	return context.WithValue(ctx, tcpAttemptKey{}, n+1), true
}

// TCPAddrs returns the bound TCP listener addresses (none when TCP is off).
func (s *Server) TCPAddrs() []netip.AddrPort {
	if s.tcp == nil {
		return nil
	}
	return s.tcp.srv.Addrs()
}

func (s *Server) startTCP(ctx context.Context) {
	if s.tcp == nil {
		return
	}
	s.tcp.fwd.Start()
	s.tcp.srv.Start(ctx)
}

// stopTCP waits (bounded by dctx) for every client connection to send what
// it has outstanding and close, then closes everything.
func (s *Server) stopTCP(dctx context.Context) {
	if s.tcp == nil {
		return
	}
	s.tcp.srv.Drain(dctx)
	s.closeTCP()
}

// closeTCP closes client connections first (so no query is handed in any
// more and no relay waits on a client), then the upstream side. Idempotent.
func (s *Server) closeTCP() {
	if s.tcp == nil {
		return
	}
	s.tcp.closeOnce.Do(func() {
		s.tcp.srv.Close()
		s.tcp.fwd.Close()
	})
}

// TCPCounters is a snapshot of the TCP fate counters. Closed and UpClosed
// are indexed by listener.CloseReasons() and upstream.UpCloseReasons().
type TCPCounters struct {
	Accepted, RefusedACL, RejectedMaxConns, RejectedPerIP, AcceptErrors, Open uint64
	Closed                                                                    []uint64
	Received, DroppedQR, Handled, InflightWaits, QueuedReplies, NoTimestamp   uint64

	DroppedInflightFull, SendFailed, Forwarded, Malformed, Answered uint64
	TimedOut, ServfailSent, ReplyFailed, UpstreamClosed, Retried    uint64
	ServfailAllDown, Failovers, RetriesDenied, DroppedPanic         uint64
	InFlight, Unsent, XFR, XFRMessages, XFRLimited                  uint64
	RespReceived, RespMatched, RespShort, RespNotResponse           uint64
	RespUnknownID, RespLate, RespQuestionMismatch                   uint64
	UpDialed, UpDialFailed, UpNoTimestamp, UpOpen                   uint64
	UpClosed                                                        []uint64
}

func (s *Server) tcpCounters() TCPCounters {
	c := TCPCounters{Closed: make([]uint64, len(listener.CloseReasons())), UpClosed: make([]uint64, len(upstream.UpCloseReasons()))}
	if s.tcp == nil {
		return c
	}
	l, u := s.tcp.srv.Stats(), s.tcp.fwd.Stats()
	c.Accepted = l.Accepted.Load()
	c.RefusedACL = l.RefusedACL.Load()
	c.RejectedMaxConns = l.RejectedMaxConns.Load()
	c.RejectedPerIP = l.RejectedPerIP.Load()
	c.AcceptErrors = l.AcceptErrors.Load()
	for i := range c.Closed {
		c.Closed[i] = l.Closed[i].Load()
	}
	c.Open = uint64(s.tcp.srv.Open())
	c.Received = l.Received.Load()
	c.DroppedQR = l.DroppedQR.Load()
	c.Handled = l.Handled.Load()
	c.InflightWaits = l.InflightWaits.Load()
	c.QueuedReplies = l.QueuedReplies.Load()
	c.NoTimestamp = l.NoTimestamp.Load()
	c.DroppedInflightFull = u.DroppedFull.Load()
	c.SendFailed = u.SendFailed.Load()
	c.Forwarded = u.Forwarded.Load()
	c.Malformed = u.Malformed.Load()
	c.Answered = u.Answered.Load()
	c.TimedOut = u.TimedOut.Load()
	c.ServfailSent = u.ServfailSent.Load()
	c.ReplyFailed = u.ReplyFailed.Load()
	c.UpstreamClosed = u.UpstreamClosed.Load()
	c.Retried = u.Retried.Load()
	c.ServfailAllDown = u.ServfailAllDown.Load()
	c.Failovers = u.Failovers.Load()
	c.RetriesDenied = u.RetriesDenied.Load()
	c.DroppedPanic = u.DroppedPanic.Load()
	inflight, unsent := s.tcp.fwd.InFlight()
	c.InFlight, c.Unsent = uint64(inflight), uint64(unsent)
	c.XFR = u.XFR.Load()
	c.XFRMessages = u.XFRMessages.Load()
	c.XFRLimited = u.XFRLimited.Load()
	c.RespReceived = u.RespReceived.Load()
	c.RespMatched = u.RespMatched.Load()
	c.RespShort = u.RespShort.Load()
	c.RespNotResponse = u.RespNotResponse.Load()
	c.RespUnknownID = u.RespUnknownID.Load()
	c.RespLate = u.RespLate.Load()
	c.RespQuestionMismatch = u.RespQuestionMismatch.Load()
	c.UpDialed = u.Dialed.Load()
	c.UpDialFailed = u.DialFailed.Load()
	c.UpNoTimestamp = u.NoTimestamp.Load()
	for i := range c.UpClosed {
		c.UpClosed[i] = u.ConnsClosed[i].Load()
	}
	c.UpOpen = uint64(s.tcp.fwd.OpenConns())
	return c
}

// attrs renders the TCP counters for the final counters line; every key
// starts with tcp_.
func (c TCPCounters) attrs() []any {
	a := []any{
		"tcp_accepted", c.Accepted, "tcp_refused_acl", c.RefusedACL,
		"tcp_rejected_max_conns", c.RejectedMaxConns, "tcp_rejected_per_ip", c.RejectedPerIP,
		"tcp_accept_errors", c.AcceptErrors, "tcp_open", c.Open,
	}
	for i, r := range listener.CloseReasons() {
		a = append(a, "tcp_closed_"+r.String(), c.Closed[i])
	}
	a = append(a,
		"tcp_received", c.Received, "tcp_dropped_qr", c.DroppedQR, "tcp_handled", c.Handled,
		"tcp_inflight_waits", c.InflightWaits, "tcp_queued_replies", c.QueuedReplies, "tcp_no_timestamp", c.NoTimestamp,
		"tcp_dropped_inflight_full", c.DroppedInflightFull, "tcp_send_failed", c.SendFailed,
		"tcp_forwarded", c.Forwarded, "tcp_malformed", c.Malformed, "tcp_answered", c.Answered,
		"tcp_timed_out", c.TimedOut, "tcp_servfail_sent", c.ServfailSent, "tcp_reply_failed", c.ReplyFailed,
		"tcp_upstream_closed", c.UpstreamClosed, "tcp_retried", c.Retried,
		"tcp_servfail_all_down", c.ServfailAllDown, "tcp_failovers", c.Failovers, "tcp_retries_denied", c.RetriesDenied,
		"tcp_dropped_panic", c.DroppedPanic,
		"tcp_in_flight", c.InFlight, "tcp_unsent", c.Unsent, "tcp_xfr", c.XFR, "tcp_xfr_messages", c.XFRMessages, "tcp_xfr_limited", c.XFRLimited,
		"tcp_resp_received", c.RespReceived, "tcp_resp_matched", c.RespMatched, "tcp_resp_short", c.RespShort,
		"tcp_resp_not_response", c.RespNotResponse, "tcp_resp_unknown_id", c.RespUnknownID,
		"tcp_resp_late", c.RespLate, "tcp_resp_question_mismatch", c.RespQuestionMismatch,
		"tcp_up_dialed", c.UpDialed, "tcp_up_dial_failed", c.UpDialFailed, "tcp_up_no_timestamp", c.UpNoTimestamp,
		"tcp_up_open", c.UpOpen,
	)
	for i, r := range upstream.UpCloseReasons() {
		a = append(a, "tcp_up_closed_"+r.String(), c.UpClosed[i])
	}
	return a
}

func sum(v []uint64) uint64 {
	var s uint64
	for _, x := range v {
		s += x
	}
	return s
}

// check verifies the TCP accounting invariants (exact once nothing is in
// flight; in-flight queries are counted as pending):
//
//	tcp_accepted = tcp_refused_acl + tcp_rejected_max_conns + tcp_rejected_per_ip + Σtcp_closed_* + tcp_open
//	tcp_received = tcp_dropped_qr + tcp_handled
//	tcp_handled = tcp_dropped_inflight_full + tcp_send_failed + tcp_servfail_all_down + tcp_dropped_panic + tcp_forwarded + tcp_unsent
//	tcp_forwarded = tcp_answered + tcp_timed_out + tcp_reply_failed + tcp_upstream_closed + (tcp_in_flight - tcp_unsent)
//	tcp_resp_received = tcp_resp_matched + tcp_resp_short + tcp_resp_not_response + tcp_resp_unknown_id + tcp_resp_late + tcp_resp_question_mismatch
//	tcp_up_dialed = Σtcp_up_closed_* + tcp_up_open
func (c TCPCounters) check() error {
	var errs []error
	if got := c.RefusedACL + c.RejectedMaxConns + c.RejectedPerIP + sum(c.Closed) + c.Open; got != c.Accepted {
		errs = append(errs, fmt.Errorf("tcp_accepted %d != refused+rejected+closed+open %d", c.Accepted, got))
	}
	if got := c.DroppedQR + c.Handled; got != c.Received {
		errs = append(errs, fmt.Errorf("tcp_received %d != tcp_dropped_qr+tcp_handled %d", c.Received, got))
	}
	if got := c.DroppedInflightFull + c.SendFailed + c.ServfailAllDown + c.DroppedPanic + c.Forwarded + c.Unsent; got != c.Handled {
		errs = append(errs, fmt.Errorf("tcp_handled %d != dropped_inflight_full+send_failed+servfail_all_down+dropped_panic+forwarded+unsent %d", c.Handled, got))
	}
	if got := c.Answered + c.TimedOut + c.ReplyFailed + c.UpstreamClosed + c.InFlight - c.Unsent; got != c.Forwarded {
		errs = append(errs, fmt.Errorf("tcp_forwarded %d != answered+timed_out+reply_failed+upstream_closed+in_flight-unsent %d", c.Forwarded, got))
	}
	if got := c.RespMatched + c.RespShort + c.RespNotResponse + c.RespUnknownID + c.RespLate + c.RespQuestionMismatch; got != c.RespReceived {
		errs = append(errs, fmt.Errorf("tcp_resp_received %d != sum of response fates %d", c.RespReceived, got))
	}
	if got := sum(c.UpClosed) + c.UpOpen; got != c.UpDialed {
		errs = append(errs, fmt.Errorf("tcp_up_dialed %d != closed+open %d", c.UpDialed, got))
	}
	return errors.Join(errs...)
}
