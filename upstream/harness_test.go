package upstream

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
)

// harness runs a Worker behind a real client socket and listener.Worker.
type harness struct {
	uw      *Worker
	lw      *listener.Worker
	client  *listener.Conn
	cancel  context.CancelFunc
	lwDone  chan error
	upStop  context.CancelFunc
	stopped bool
}

// startHarness builds a worker for the config mk returns (given the
// client socket's address), lets prep adjust it before Start (fault
// points, a loop guard), and starts it.
func startHarness(t *testing.T, mk func(client netip.AddrPort) Config, prep func(*Worker)) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	client, err := listener.ListenUDP(ctx, netip.MustParseAddrPort("127.0.0.1:0"), listener.Options{PktInfo: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := mk(client.LocalAddr())
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	uw, err := NewWorker(ctx, cfg, client)
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	if prep != nil {
		prep(uw)
	}
	upCtx, upCancel := context.WithCancel(context.Background())
	uw.Start(upCtx)
	h := &harness{uw: uw, client: client, cancel: cancel, upStop: upCancel, lwDone: make(chan error, 1)}
	h.lw = listener.NewWorker(client, listener.WorkerConfig{Log: cfg.Log}, uw)
	go func() { h.lwDone <- h.lw.Run(ctx) }()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// stop stops reading clients, drains, stops the worker and closes
// everything; then it checks that every fate adds up, no slot leaked and
// every gauge is back to zero.
func (h *harness) stop(t *testing.T) {
	t.Helper()
	if h.stopped {
		return
	}
	h.stopped = true
	h.cancel()
	if err := <-h.lwDone; err != nil {
		t.Error(err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	h.uw.Drain(dctx)
	dcancel()
	h.upStop()
	h.uw.Wait()
	h.uw.Close()
	h.client.Close()
	checkAccounting(t, h.uw, h.lw.Stats().Handled.Load())
}

// checkAccounting verifies the Stats invariants of a stopped worker.
func checkAccounting(t *testing.T, uw *Worker, handled uint64) {
	t.Helper()
	st := uw.Stats()
	if sum := st.DroppedFull.Load() + st.SendFailed.Load() + st.Forwarded.Load() + st.ServfailAllDown.Load() +
		st.LoopDetected.Load() + st.DroppedPanic.Load(); sum != handled {
		t.Errorf("handled %d != sum of query fates %d", handled, sum)
	}
	if got := st.Answered.Load() + st.TimedOut.Load() + st.ReplyFailed.Load(); got != st.Forwarded.Load() {
		t.Errorf("forwarded %d != answered+timed_out+reply_failed %d", st.Forwarded.Load(), got)
	}
	if sum := st.RespMatched.Load() + st.RespShort.Load() + st.RespNotResponse.Load() + st.RespWrongSource.Load() +
		st.RespUnknownID.Load() + st.RespLate.Load() + st.RespQuestionMismatch.Load() + st.RespPanic.Load(); sum != st.RespReceived.Load() {
		t.Errorf("resp_received %d != sum of response fates %d", st.RespReceived.Load(), sum)
	}
	// InFlight takes mu: it would hang here had a recovery left it held.
	if n := uw.InFlight(); n != 0 {
		t.Errorf("in flight after drain: %d", n)
	}
	uw.mu.Lock()
	free := len(uw.tab.free)
	seen := map[int32]bool{}
	for _, i := range uw.tab.free {
		if seen[i] {
			t.Errorf("slot %d freed twice", i)
		}
		seen[i] = true
	}
	for p, n := range uw.tab.pin {
		if n != 0 {
			t.Errorf("physical socket %d: %d queries still counted", p, n)
		}
	}
	uw.mu.Unlock()
	if free != len(uw.tab.slots) {
		t.Errorf("free slots %d of %d: a slot leaked", free, len(uw.tab.slots))
	}
	for _, u := range uw.cfg.Pool.Upstreams() {
		if n := u.InFlight.Load(); n != 0 {
			t.Errorf("upstream %s in flight %d", u.Addr, n)
		}
	}
}

// fakeUpstream is a UDP server on loopback that records where each query
// came from and answers through answer (nil: echo with QR set at once).
type fakeUpstream struct {
	conn *net.UDPConn
	mu   sync.Mutex
	from []netip.AddrPort // source of each query, in arrival order
}

func (f *fakeUpstream) addr() netip.AddrPort { return f.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (f *fakeUpstream) sources() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]netip.AddrPort(nil), f.from...)
}

// startFakeUpstream runs serve(conn, query, from) for each datagram, or
// echoes with QR set when serve is nil. idle, when set, is called after
// every 10 ms without a query (to flush held answers).
func startFakeUpstream(t *testing.T, serve func(c *net.UDPConn, q []byte, from netip.AddrPort), idle func(c *net.UDPConn)) *fakeUpstream {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeUpstream{conn: c}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			if idle != nil {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			}
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					idle(c)
					continue
				}
				return
			}
			if n < 12 {
				continue
			}
			f.mu.Lock()
			f.from = append(f.from, from)
			f.mu.Unlock()
			q := append([]byte(nil), buf[:n]...)
			if serve == nil {
				q[2] |= 0x80
				_, _ = c.WriteToUDPAddrPort(q, from)
				continue
			}
			serve(c, q, from)
		}
	}()
	return f
}

// askAll sends n queries for name from one client socket, at most window
// outstanding, and returns how many answers carried the client's ID for a
// query sent (each ID once). It gives up after 10 s without an answer.
func askAll(t *testing.T, to netip.AddrPort, name string, n, window int) int {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	pending := map[uint16]bool{}
	sent, got := 0, 0
	for got < n {
		for sent < n && len(pending) < window {
			binary.BigEndian.PutUint16(q, uint16(sent))
			if _, err := c.Write(q); err != nil {
				t.Fatal(err)
			}
			pending[uint16(sent)] = true
			sent++
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang guard, not a timing assertion
		k, err := c.Read(buf)
		if err != nil {
			return got
		}
		id := binary.BigEndian.Uint16(buf[:k])
		if k >= 12 && buf[2]&0x80 != 0 && pending[id] {
			delete(pending, id)
			got++
		}
	}
	return got
}

// collectSink keeps the outcome and upstream-leg local port of every
// transaction.
type collectSink struct {
	mu  sync.Mutex
	txs []txn.Transaction
}

func (s *collectSink) Submit(t *txn.Transaction) {
	s.mu.Lock()
	s.txs = append(s.txs, txn.Transaction{Outcome: t.Outcome, UpstreamLocal: t.UpstreamLocal, UpstreamSent: t.UpstreamSent})
	s.mu.Unlock()
}

func (s *collectSink) all() []txn.Transaction {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]txn.Transaction(nil), s.txs...)
}
