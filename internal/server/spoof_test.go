package server

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
	"github.com/tapproxy/tapproxy/upstream"
)

// reflectAnswer is q with QR set: what the test upstreams answer.
func reflectAnswer(q []byte) []byte {
	r := append([]byte(nil), q...)
	r[2] |= 0x80
	return r
}

// idUpstream answers every query with reflectAnswer, and records each
// query's upstream-leg ID and source port. Before each genuine answer it
// calls forge (when set) with the query and its source, from the reader
// goroutine, so forged packets race the genuine answer from the same
// address and port.
type idUpstream struct {
	conn  *net.UDPConn
	mu    sync.Mutex
	ids   []uint16
	ports map[uint16]int
	order []uint16 // source ports in the order first seen
	forge func(q []byte, from netip.AddrPort)
}

func startIDUpstream(t *testing.T, forge func(c *net.UDPConn, q []byte, from netip.AddrPort)) *idUpstream {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	u := &idUpstream{conn: c, ports: map[uint16]int{}}
	if forge != nil {
		u.forge = func(q []byte, from netip.AddrPort) { forge(c, q, from) }
	}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n < 12 {
				continue
			}
			q := buf[:n]
			u.mu.Lock()
			u.ids = append(u.ids, binary.BigEndian.Uint16(q))
			if u.ports[from.Port()] == 0 {
				u.order = append(u.order, from.Port())
			}
			u.ports[from.Port()]++
			u.mu.Unlock()
			if u.forge != nil {
				u.forge(q, from)
			}
			_, _ = c.WriteToUDPAddrPort(reflectAnswer(q), from)
		}
	}()
	return u
}

func (u *idUpstream) addr() netip.AddrPort { return u.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// askWindowed sends n copies of q (all with the same client ID) keeping at
// most window outstanding, and returns every answer. A read deadline only
// guards against a hang.
func askWindowed(t *testing.T, to netip.AddrPort, q []byte, n, window int, check func(r []byte)) {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 65536)
	sent, got := 0, 0
	for got < n {
		for sent < n && sent-got < window {
			if _, err := c.Write(q); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, err := c.Read(buf)
		if err != nil {
			t.Fatalf("after %d of %d answers: %v", got, n, err)
		}
		check(buf[:m])
		got++
	}
}

// chiSquare256 returns the chi-square statistic of v over 256 equal buckets.
func chiSquare256(v []uint16, bucket func(uint16) int) float64 {
	var counts [256]float64
	for _, x := range v {
		counts[bucket(x)]++
	}
	e := float64(len(v)) / 256
	var chi float64
	for _, o := range counts {
		chi += (o - e) * (o - e) / e
	}
	return chi
}

// chiThreshold is the chi-square value with 255 degrees of freedom that a
// uniform source exceeds with probability about 1e-9 (Wilson–Hilferty,
// z = 6): a correct implementation fails this test practically never.
func chiThreshold() float64 { return chiThresholdDF(255) }

// chiThresholdDF is chiThreshold for k degrees of freedom.
func chiThresholdDF(k float64) float64 {
	const z = 6.0
	a := 2 / (9 * k)
	return k * math.Pow(1-a+z*math.Sqrt(a), 3)
}

// chiSquarePorts returns the chi-square statistic of the offsets v (each in
// [0, n)) over buckets equal slices of [0, n), each bucket's expectation
// taken from how many offsets it holds (n need not divide evenly).
func chiSquarePorts(v []int, n, buckets int) float64 {
	counts := make([]float64, buckets)
	width := make([]float64, buckets)
	for x := 0; x < n; x++ {
		width[x*buckets/n]++
	}
	for _, x := range v {
		counts[x*buckets/n]++
	}
	var chi float64
	for b := range counts {
		e := float64(len(v)) * width[b] / float64(n)
		chi += (counts[b] - e) * (counts[b] - e) / e
	}
	return chi
}

// TestUpstreamIDsUniform: 100 000 queries, every one with the same client
// ID, leave tapproxy with upstream IDs whose high byte, low byte and
// successive differences are uniform, and from source ports that change
// every --upstream-port-rotate queries per socket and are drawn uniformly
// from the kernel's ephemeral range (RFC 5452 §9.2: IDs and ports
// unpredictable). Each new port is one draw: the test takes the ports in
// the order the upstream first saw them and checks their values and their
// successive differences (mod the range) for uniformity, and that about
// one new port came per rotation (no small set of ports reused). With
// fixed ports (rotation 0) it fails.
func TestUpstreamIDsUniform(t *testing.T) {
	up := startIDUpstream(t, nil)
	const sockets = 4
	rotation := upstream.DefaultPortRotation
	s, stop := startServer(t, up.addr(), nil, func(c *Config) {
		c.Upstream = upstream.Config{Timeout: 5 * time.Second, SocketsPerUpstream: sockets, PortRotation: rotation}
	})
	m := new(dns.Msg)
	m.SetQuestion("www.example.test.", dns.TypeA)
	m.Id = 0x4242
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	const n = 100_000
	want := reflectAnswer(q)
	askWindowed(t, s.Addrs()[0], q, n, 64, func(r []byte) {
		if !bytes.Equal(r, want) {
			t.Fatalf("answer %x, want %x", r, want)
		}
	})
	_, lo, hi, rangeErr := s.pairs[0].uw.PortRotation()
	c := stop()
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	up.mu.Lock()
	ids := append([]uint16(nil), up.ids...)
	order := append([]uint16(nil), up.order...)
	up.mu.Unlock()
	if len(ids) != n {
		t.Fatalf("upstream saw %d queries, want %d", len(ids), n)
	}
	diffs := make([]uint16, len(ids)-1)
	distinct := map[uint16]bool{}
	for i := range ids {
		distinct[ids[i]] = true
		if i > 0 {
			diffs[i-1] = ids[i] - ids[i-1]
		}
	}
	limit := chiThreshold()
	for _, tc := range []struct {
		name   string
		v      []uint16
		bucket func(uint16) int
	}{
		{"high byte", ids, func(x uint16) int { return int(x >> 8) }},
		{"low byte", ids, func(x uint16) int { return int(x & 0xff) }},
		{"successive difference, high byte", diffs, func(x uint16) int { return int(x >> 8) }},
		{"successive difference, low byte", diffs, func(x uint16) int { return int(x & 0xff) }},
	} {
		chi := chiSquare256(tc.v, tc.bucket)
		t.Logf("upstream IDs, %s: chi-square %.1f (255 df, limit %.1f)", tc.name, chi, limit)
		if chi > limit {
			t.Errorf("upstream IDs, %s: chi-square %.1f above %.1f: not uniform", tc.name, chi, limit)
		}
	}
	// 100 000 draws from 65 536 values leave about 65536·(1-e^(-100000/65536))
	// ≈ 51 600 distinct; far fewer means a small or biased generator.
	t.Logf("upstream IDs: %d distinct of %d", len(distinct), n)
	if len(distinct) < 50_000 {
		t.Errorf("only %d distinct IDs in %d queries", len(distinct), n)
	}

	// Source ports.
	if rangeErr != nil {
		t.Logf("ephemeral range unreadable (%v), default used", rangeErr)
	}
	span := int(hi) - int(lo) + 1
	var offs []int
	outside := 0
	for _, p := range order {
		if p < lo || p > hi {
			outside++ // a kernel-chosen fallback
			continue
		}
		offs = append(offs, int(p-lo))
	}
	t.Logf("source ports: %d distinct in %d queries (range %d-%d, rotation every %d queries per socket); "+
		"port_rotations %d, deferred %d, bind retries %d, fallbacks %d",
		len(order), n, lo, hi, rotation, c.PortRotations, c.PortRotationsDeferred, c.PortBindRetries, c.PortBindFallbacks)
	if uint64(outside) > c.PortBindFallbacks {
		t.Errorf("%d source ports outside %d-%d, but only %d kernel fallbacks", outside, lo, hi, c.PortBindFallbacks)
	}
	// One draw per rotation: without deferrals n/rotation of them. A
	// quarter lost to deferrals or repeats would already be suspicious.
	if wantDraws := n / max(rotation, 1); len(order) < wantDraws*3/4 {
		t.Fatalf("only %d distinct source ports for %d queries at a rotation every %d: about %d expected",
			len(order), n, rotation, wantDraws)
	}
	diffOffs := make([]int, 0, len(offs))
	for i := 1; i < len(offs); i++ {
		diffOffs = append(diffOffs, ((offs[i]-offs[i-1])%span+span)%span)
	}
	for _, tc := range []struct {
		name string
		v    []int
	}{{"values", offs}, {"successive differences", diffOffs}} {
		buckets := min(256, len(tc.v)/20) // each expects ≥ 20
		plimit := chiThresholdDF(float64(buckets - 1))
		chi := chiSquarePorts(tc.v, span, buckets)
		t.Logf("source ports, %s: chi-square %.1f (%d df, limit %.1f)", tc.name, chi, buckets-1, plimit)
		if chi > plimit {
			t.Errorf("source ports, %s: chi-square %.1f above %.1f: not uniform over the range", tc.name, chi, plimit)
		}
	}
}

// checkSink checks every transaction as it is submitted: an answered one
// must carry the genuine (reflected) answer, never a forged one.
type checkSink struct {
	answered, forged, bad atomic.Uint64
}

var forgedName = []byte("\x06forged")

// probeFreeName is the question of TestForgedAnswersNeverDelivered's
// queries in wire form, which no health probe asks.
var probeFreeName = []byte("\x03www\x07example\x04test\x00")

func (s *checkSink) Submit(t *txn.Transaction) {
	if t.Outcome != txn.Answered {
		return
	}
	s.answered.Add(1)
	switch {
	case bytes.Contains(t.Response, forgedName):
		s.forged.Add(1)
	case len(t.Response) != len(t.Query) || !bytes.Equal(t.Response[3:], t.Query[3:]) || !bytes.Equal(t.Response[:2], t.Query[:2]):
		s.bad.Add(1)
	}
}

// TestForgedAnswersNeverDelivered: while real queries flow, a forger with
// the upstream's own address and port (it sends through the upstream's
// socket) fires forged answers at tapproxy's upstream sockets (whose ports
// it learns from the queries: stronger than spraying random ports, where
// packets to closed ports die in the kernel) with random IDs, before every
// genuine answer. No forged answer reaches a client or the log as a
// response, every real query is answered, and every forged datagram is
// counted as resp_unknown_id, resp_question_mismatch or resp_late (or
// dropped by the kernel on a full socket, counted in kernel_drops).
//
// The flood can also fill the socket before a genuine answer arrives (seen
// with the machine's CPUs busy): the kernel drops that answer too, and the
// query times out. So the proxy runs with ServfailOnTimeout, and such a
// query must come back as tapproxy's SERVFAIL, counted timed_out, with at
// least as many kernel drops counted: never silence, never a forged answer.
//
// Runs on loopback, in-process: a network-namespace pair would need root,
// and tests must run (and pass) without it.
func TestForgedAnswersNeverDelivered(t *testing.T) {
	const perQuery = 10 // forged answers per genuine one
	var forgedSent atomic.Uint64
	rng := rand.New(rand.NewPCG(1, 2))
	fm := new(dns.Msg)
	fm.SetQuestion("forged.example.test.", dns.TypeA)
	fm.Response = true
	fm.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "forged.example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600},
		A: net.IPv4(198, 51, 100, 66)}}
	forged, err := fm.Pack()
	if err != nil {
		t.Fatal(err)
	}
	var ports []netip.AddrPort // the forger's own goroutine only
	up := startIDUpstream(t, func(c *net.UDPConn, q []byte, from netip.AddrPort) {
		// Learn only the proxy's forwarding sockets. After timeouts the
		// pool sends health probes from short-lived sockets: forgeries
		// sent to such a port after it closed die in the kernel (UDP
		// NoPorts), never reaching tapproxy to be counted.
		if !bytes.Contains(q, probeFreeName) {
			return
		}
		known := false
		for _, p := range ports {
			known = known || p == from
		}
		if !known {
			ports = append(ports, from)
		}
		for k := 0; k < perQuery; k++ {
			binary.BigEndian.PutUint16(forged, uint16(rng.UintN(65536)))
			if _, err := c.WriteToUDPAddrPort(forged, ports[rng.IntN(len(ports))]); err == nil {
				forgedSent.Add(1)
			}
		}
	})
	sink := new(checkSink)
	s, stop := startServer(t, up.addr(), sink, func(c *Config) {
		// 4 MiB of receive buffer where permitted (SO_RCVBUFFORCE: root,
		// as in CI) makes such drops rare; the kernel default is ~200 KiB.
		c.Upstream = upstream.Config{Timeout: 5 * time.Second, SocketsPerUpstream: 2, ServfailOnTimeout: true,
			Socket: listener.Options{RcvBuf: 4 << 20}}
	})
	m := new(dns.Msg)
	m.SetQuestion("www.example.test.", dns.TypeA)
	m.Id = 0x1234
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	const n = 5000
	want := reflectAnswer(q)
	var delivered, servfails, forgedToClient int
	askWindowed(t, s.Addrs()[0], q, n, 8, func(r []byte) {
		switch {
		case bytes.Equal(r, want):
			delivered++
		case !bytes.Contains(r, forgedName) && len(r) >= 12 && r[0] == q[0] && r[1] == q[1] &&
			r[2]&0x80 != 0 && r[3]&0x0f == dns.RcodeServerFailure:
			servfails++
		default:
			forgedToClient++
		}
	})
	c := stop()
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	fs := forgedSent.Load()
	rejected := c.RespUnknownID + c.RespQuestionMismatch + c.RespLate
	t.Logf("forged sent %d; resp_unknown_id %d, resp_question_mismatch %d, resp_late %d, kernel_drops %d; real answered %d of %d, timed out %d",
		fs, c.RespUnknownID, c.RespQuestionMismatch, c.RespLate, c.KernelDrops, c.Answered, n, c.TimedOut)
	if forgedToClient != 0 {
		t.Errorf("%d forged or altered answers reached the client", forgedToClient)
	}
	if sink.forged.Load() != 0 || sink.bad.Load() != 0 {
		t.Errorf("dnstap sink logged %d forged and %d altered responses", sink.forged.Load(), sink.bad.Load())
	}
	if delivered+servfails != n {
		t.Errorf("the client got %d genuine answers and %d SERVFAILs of %d queries", delivered, servfails, n)
	}
	genuine := uint64(delivered)
	if c.Answered != genuine || sink.answered.Load() != genuine || c.RespMatched != genuine {
		t.Errorf("answered %d, logged %d, resp_matched %d; want %d each (the genuine answers)", c.Answered, sink.answered.Load(), c.RespMatched, genuine)
	}
	if c.TimedOut != uint64(servfails) || c.ServfailSent != uint64(servfails) {
		t.Errorf("timed_out %d, servfail_sent %d; the client got %d SERVFAILs", c.TimedOut, c.ServfailSent, servfails)
	}
	// A genuine answer is lost only to a full socket: each one the client
	// did not get is a counted kernel drop (which also counts forged ones).
	if uint64(servfails) > c.KernelDrops {
		t.Errorf("%d queries timed out with only %d kernel drops counted", servfails, c.KernelDrops)
	}
	if rejected > fs || rejected+c.KernelDrops < fs {
		t.Errorf("forged %d, but rejected %d with %d kernel drops", fs, rejected, c.KernelDrops)
	}
	if fs < n*perQuery/2 {
		t.Errorf("only %d forged answers sent", fs)
	}
}
