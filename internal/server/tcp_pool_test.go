package server

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/upstream"
)

// poolConfig is tcpConfig with several upstreams, a policy and health
// settings. Active probes (UDP) are made rare so that only TCP traffic moves
// the health state in these tests.
func poolConfig(sink txn.Sink, policy upstream.Policy, fails int, specs ...upstream.Spec) Config {
	cfg := tcpConfig(specs[0].Addr, sink)
	cfg.Upstreams = nil
	cfg.UpstreamSpecs = specs
	cfg.Policy = policy
	cfg.Health = upstream.HealthConfig{FailThreshold: fails, ProbeInterval: time.Hour}
	return cfg
}

func spec(a netip.AddrPort) upstream.Spec { return upstream.Spec{Addr: a, Weight: 1} }

// closedPort returns a loopback TCP port nothing listens on (connect gets
// RST: "connection refused").
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return a
}

// ask sends q and returns the answer carrying its ID.
func (c *tcpClient) ask(q []byte) []byte {
	c.t.Helper()
	c.sendMsg(q)
	r, err := c.readMsg()
	if err != nil {
		c.t.Fatalf("query %#04x: %v", dnswire.ID(q), err)
	}
	if dnswire.ID(r) != dnswire.ID(q) {
		c.t.Fatalf("answer ID %#04x to query %#04x", dnswire.ID(r), dnswire.ID(q))
	}
	return r
}

// figures is one upstream's per-upstream figures.
type figures struct {
	inflight                int64
	queries, timeouts, errs uint64
	transitions             uint64
	up                      bool
	rttPositive             bool
}

func figuresOf(u *upstream.Upstream) figures {
	return figures{inflight: u.InFlight.Load(), queries: u.Queries.Load(), timeouts: u.Timeouts.Load(),
		errs: u.Errors.Load(), transitions: u.Transitions.Load(), up: u.Up(), rttPositive: u.RTT() > 0}
}

// TestTCPPoolPolicies: TCP queries follow the pool's policy (round-robin
// spreads them over both upstreams, first-available keeps them on the
// first), each upstream's figures count exactly what it got, InFlight
// counts queries while the upstream holds them and is back to 0 after, and
// every answer comes back on the right client connection with the right
// upstream in the record.
func TestTCPPoolPolicies(t *testing.T) {
	const n = 10
	tests := []struct {
		name   string
		policy upstream.Policy
		want   [2]uint64 // queries per upstream
	}{
		{"round-robin", upstream.RoundRobin, [2]uint64{n / 2, n / 2}},
		{"first-available", upstream.FirstAvailable, [2]uint64{n, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			held := map[*fakeConn][][]byte{}
			seen := 0
			h := func(fc *fakeConn, q []byte) {
				mu.Lock()
				held[fc] = append(held[fc], q)
				seen++
				mu.Unlock()
			}
			a, b := startFakeTCP(t, h), startFakeTCP(t, h)
			sink := &tcpSink{}
			s, stop := startTCPProxy(t, poolConfig(sink, tc.policy, 3, spec(a.addr), spec(b.addr)))
			cl := newTCPClient(t, "", s.TCPAddrs()[0])
			for i := range n {
				cl.sendMsg(dnsQuery(t, fmt.Sprintf("q%d.pool.example.", i), dns.TypeA, uint16(100+i)))
			}
			waitFor(t, "every query held upstream", func() bool { mu.Lock(); defer mu.Unlock(); return seen == n })
			ups := s.pool.Upstreams()
			for k, u := range ups {
				if f := figuresOf(u); f.inflight != int64(tc.want[k]) || f.queries != tc.want[k] {
					t.Errorf("upstream %d while held: in flight %d, queries %d; want %d, %d", k, f.inflight, f.queries, tc.want[k], tc.want[k])
				}
			}
			mu.Lock()
			for fc, qs := range held {
				for _, q := range qs {
					fc.send(echo(q, 0))
				}
			}
			mu.Unlock()
			for range n {
				if _, err := cl.readMsg(); err != nil {
					t.Fatal(err)
				}
			}
			c := stop()
			if c.TCP.Answered != n || c.TCP.Failovers != 0 || c.TCP.Retried != 0 {
				t.Fatalf("answered=%d failovers=%d retried=%d", c.TCP.Answered, c.TCP.Failovers, c.TCP.Retried)
			}
			for k, u := range ups {
				f := figuresOf(u)
				want := figures{queries: tc.want[k], up: true, rttPositive: tc.want[k] > 0}
				if f != want {
					t.Errorf("upstream %d figures %+v, want %+v", k, f, want)
				}
			}
			perUp := map[netip.AddrPort]uint64{}
			for _, tx := range sink.all() {
				perUp[tx.Upstream]++
			}
			if perUp[a.addr] != tc.want[0] || perUp[b.addr] != tc.want[1] {
				t.Errorf("records per upstream %v, want %v", perUp, tc.want)
			}
		})
	}
}

// TestTCPFailover: the first upstream fails fast (connection refused, or a
// connection reset with the query in flight). Each query whose first try
// fails is sent once to the second upstream within its deadline and
// answered; the first upstream is charged one error per failure and goes
// down after FailThreshold of them, after which queries go straight to the
// second (no more failovers).
func TestTCPFailover(t *testing.T) {
	const fails, n = 3, 8
	tests := []struct {
		name  string
		first func(t *testing.T) netip.AddrPort
	}{
		{"connection refused", closedPort},
		{"connection reset", func(t *testing.T) netip.AddrPort {
			return startFakeTCP(t, func(fc *fakeConn, q []byte) {
				_ = fc.c.SetLinger(0) // RST, not FIN
				fc.c.Close()
			}).addr
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bad := tc.first(t)
			good := startFakeTCP(t, func(fc *fakeConn, q []byte) { fc.send(echo(q, 0)) })
			sink := &tcpSink{}
			s, stop := startTCPProxy(t, poolConfig(sink, upstream.FirstAvailable, fails, spec(bad), spec(good.addr)))
			cl := newTCPClient(t, "", s.TCPAddrs()[0])
			for i := range n {
				q := dnsQuery(t, fmt.Sprintf("f%d.pool.example.", i), dns.TypeA, uint16(i+1))
				if r := cl.ask(q); !bytes.Equal(r, echo(q, 0)) {
					t.Fatalf("query %d: wrong answer", i)
				}
			}
			c := stop()
			if c.TCP.Answered != n || c.TCP.Failovers != fails || c.TCP.Retried != fails || c.TCP.RetriesDenied != 0 {
				t.Fatalf("answered=%d failovers=%d retried=%d denied=%d, want %d, %d, %d, 0",
					c.TCP.Answered, c.TCP.Failovers, c.TCP.Retried, c.TCP.RetriesDenied, n, fails, fails)
			}
			ups := s.pool.Upstreams()
			if f, want := figuresOf(ups[0]), (figures{queries: fails, errs: fails, transitions: 1}); f != want {
				t.Errorf("failing upstream figures %+v, want %+v", f, want)
			}
			if f, want := figuresOf(ups[1]), (figures{queries: n, up: true, rttPositive: true}); f != want {
				t.Errorf("good upstream figures %+v, want %+v", f, want)
			}
			for _, tx := range sink.all() {
				if tx.Outcome != txn.Answered || tx.Upstream != good.addr {
					t.Errorf("record outcome %v upstream %v, want answered by %v", tx.Outcome, tx.Upstream, good.addr)
				}
			}
		})
	}
}

// TestTCPTimeoutFigures: an upstream that never answers: every query times
// out once (not retried), the upstream's Timeouts count each, it goes down
// after FailThreshold, and nothing is left in flight.
func TestTCPTimeoutFigures(t *testing.T) {
	const n = 4
	up := startFakeTCP(t, func(fc *fakeConn, q []byte) {})
	cfg := poolConfig(nil, upstream.FirstAvailable, 3, spec(up.addr))
	cfg.TCP.Upstream.Timeout = 200 * time.Millisecond
	s, stop := startTCPProxy(t, cfg)
	cl := newTCPClient(t, "", s.TCPAddrs()[0])
	for i := range n {
		cl.sendMsg(dnsQuery(t, fmt.Sprintf("t%d.pool.example.", i), dns.TypeA, uint16(i)))
	}
	waitFor(t, "every query timed out", func() bool { return s.Counters().TCP.TimedOut == n })
	c := stop()
	if c.TCP.Retried != 0 || c.TCP.Forwarded != n {
		t.Fatalf("retried=%d forwarded=%d", c.TCP.Retried, c.TCP.Forwarded)
	}
	if f, want := figuresOf(s.pool.Upstreams()[0]), (figures{queries: n, timeouts: n, transitions: 1}); f != want {
		t.Errorf("figures %+v, want %+v", f, want)
	}
}

// TestTCPAllDownServfail: with --all-down servfail, once the only upstream
// is down a TCP query is answered SERVFAIL at once (the client's ID and
// question), counted and logged as servfail_all_down, and nothing is sent.
func TestTCPAllDownServfail(t *testing.T) {
	sink := &tcpSink{}
	cfg := poolConfig(sink, upstream.FirstAvailable, 1, spec(closedPort(t)))
	cfg.Health.AllDown = upstream.AllDownServfail
	s, stop := startTCPProxy(t, cfg)
	cl := newTCPClient(t, "", s.TCPAddrs()[0])
	// The first query finds the upstream up: both tries are refused, it
	// is never sent, and the upstream is down.
	cl.sendMsg(dnsQuery(t, "first.pool.example.", dns.TypeA, 1))
	waitFor(t, "first query failed", func() bool { return s.Counters().TCP.SendFailed == 1 })
	q := dnsQuery(t, "second.pool.example.", dns.TypeA, 2)
	r := cl.ask(q)
	var m dns.Msg
	if err := m.Unpack(r); err != nil || m.Rcode != dns.RcodeServerFailure || !m.Response ||
		len(m.Question) != 1 || m.Question[0].Name != "second.pool.example." {
		t.Fatalf("answer %v (%v), want SERVFAIL echoing the question", m.String(), err)
	}
	c := stop()
	if c.TCP.ServfailAllDown != 1 || c.TCP.SendFailed != 1 || c.TCP.Forwarded != 0 || c.TCP.UpDialed != 0 {
		t.Fatalf("servfail_all_down=%d send_failed=%d forwarded=%d dialed=%d", c.TCP.ServfailAllDown, c.TCP.SendFailed, c.TCP.Forwarded, c.TCP.UpDialed)
	}
	if f, want := figuresOf(s.pool.Upstreams()[0]), (figures{queries: 1, errs: 2, transitions: 1}); f != want {
		t.Errorf("figures %+v, want %+v", f, want)
	}
	var sf int
	for _, tx := range sink.all() {
		if tx.Outcome == txn.ServfailAllDown {
			sf++
			if !bytes.Equal(tx.Query, q) || !bytes.Equal(tx.Response, r) || tx.UpstreamSent != 0 {
				t.Errorf("servfail record: query/response differ from the wire or UpstreamSent set")
			}
		}
	}
	if sf != 1 {
		t.Fatalf("%d servfail_all_down records, want 1", sf)
	}
}

// TestTCPRetryBudget: an upstream that drops every connection as soon as a
// query arrives makes every query ask for a second try. The budget grants
// at most a burst of 100 plus a tenth of the queries and refuses the rest
// (counted), so a dying upstream cannot double the load.
func TestTCPRetryBudget(t *testing.T) {
	const n = 300
	up := startFakeTCP(t, func(fc *fakeConn, q []byte) { fc.c.Close() })
	s, stop := startTCPProxy(t, poolConfig(nil, upstream.FirstAvailable, 3, spec(up.addr)))
	cl := newTCPClient(t, "", s.TCPAddrs()[0])
	for i := range n {
		cl.sendMsg(dnsQuery(t, fmt.Sprintf("b%d.pool.example.", i), dns.TypeA, uint16(i)))
	}
	waitFor(t, "every query ended", func() bool {
		c := s.Counters().TCP
		return c.UpstreamClosed+c.SendFailed+c.TimedOut == n
	})
	c := stop()
	if c.TCP.Retried+c.TCP.RetriesDenied != n {
		t.Fatalf("retried %d + denied %d != %d queries whose first try failed", c.TCP.Retried, c.TCP.RetriesDenied, n)
	}
	if c.TCP.RetriesDenied == 0 || c.TCP.Retried > 100+n/10+1 {
		t.Fatalf("retried=%d denied=%d: budget not enforced", c.TCP.Retried, c.TCP.RetriesDenied)
	}
	if c.TCP.Failovers != 0 {
		t.Fatalf("failovers=%d with a single upstream", c.TCP.Failovers)
	}
	if f := figuresOf(s.pool.Upstreams()[0]); f.inflight != 0 || f.queries != n || f.errs == 0 {
		t.Fatalf("figures %+v", f)
	}
}

// TestTCPProxyV2: an upstream with PROXY v2 gets one connection per client
// connection, each starting with a header naming that client (source) and
// the address it asked (destination); every query on it is that client's;
// the header never appears in a logged message; and the connection closes
// (client_gone) once its client's connection has.
func TestTCPProxyV2(t *testing.T) {
	type got struct {
		src, dst netip.AddrPort
		ids      []uint16
	}
	var mu sync.Mutex
	conns := map[*fakeConn]*got{}
	up := startFakeTCPWith(t, true, func(fc *fakeConn, q []byte) {
		mu.Lock()
		g := conns[fc]
		if g == nil {
			g = &got{src: fc.proxySrc, dst: fc.proxyDst}
			conns[fc] = g
		}
		g.ids = append(g.ids, binary.BigEndian.Uint16(q))
		mu.Unlock()
		fc.send(echo(q, 0))
	})
	sink := &tcpSink{}
	s, stop := startTCPProxy(t, poolConfig(sink, upstream.FirstAvailable, 3, upstream.Spec{Addr: up.addr, Weight: 1, ProxyV2: true}))
	to := s.TCPAddrs()[0]
	clients := map[netip.AddrPort]int{}
	var sent [][]byte
	for k, src := range []string{"127.0.0.2", "127.0.0.3"} {
		cl := newTCPClient(t, src, to)
		clients[netip.MustParseAddrPort(cl.c.LocalAddr().String())] = k
		for i := range 3 {
			q := dnsQuery(t, fmt.Sprintf("c%d-%d.proxy.example.", k, i), dns.TypeA, uint16(10*k+i))
			sent = append(sent, q)
			if r := cl.ask(q); !bytes.Equal(r, echo(q, 0)) {
				t.Fatalf("client %d query %d: wrong answer", k, i)
			}
		}
		cl.c.Close()
	}
	waitFor(t, "both upstream connections closed after their clients", func() bool {
		return s.Counters().TCP.UpClosed[upstream.UpCloseClientGone] == 2
	})
	c := stop()
	if c.TCP.UpDialed != 2 || c.TCP.Answered != 6 {
		t.Fatalf("dialed=%d answered=%d, want 2 connections, 6 answers", c.TCP.UpDialed, c.TCP.Answered)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 2 {
		t.Fatalf("upstream saw %d connections, want one per client", len(conns))
	}
	// The upstream IDs are the proxy's own; map them back through the
	// records to the client that asked.
	byUpID := map[netip.AddrPort]map[uint16]netip.AddrPort{}
	for _, tx := range sink.all() {
		if byUpID[tx.UpstreamLocal] == nil {
			byUpID[tx.UpstreamLocal] = map[uint16]netip.AddrPort{}
		}
		byUpID[tx.UpstreamLocal][tx.UpstreamID] = tx.Client
		found := false
		for _, q := range sent {
			found = found || bytes.Equal(tx.Query, q)
		}
		if !found {
			t.Errorf("logged query %x is not what the client sent (header leaked?)", tx.Query)
		}
	}
	for fc, g := range conns {
		if _, ok := clients[g.src]; !ok || g.dst != to {
			t.Errorf("header names %v → %v, want a client → %v", g.src, g.dst, to)
		}
		ids := byUpID[fc.remote()]
		for _, id := range g.ids {
			if ids[id] != g.src {
				t.Errorf("query with upstream ID %d on %v's connection came from %v", id, g.src, ids[id])
			}
		}
	}
}
