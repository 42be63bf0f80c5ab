package upstream

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/txn"
)

// procFixture writes a /proc tree with the given port range and reserved
// ports files ("" leaves a file out) and returns its root.
func procFixture(t *testing.T, portRange, reserved string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "proc/sys/net/ipv4")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"ip_local_port_range": portRange, "ip_local_reserved_ports": reserved} {
		if v == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestReadPortRange(t *testing.T) {
	tests := []struct {
		name, rng, reserved string
		want                portRange
		wantErr             bool
	}{
		{"kernel format", "32768\t60999\n", "", portRange{lo: 32768, hi: 60999}, false},
		{"reserved ports", "40000 40100\n", "40010,40020-40030\n", portRange{lo: 40000, hi: 40100, reserved: [][2]uint16{{40010, 40010}, {40020, 40030}}}, false},
		{"empty reserved list", "1024 65535\n", "\n", portRange{lo: 1024, hi: 65535}, false},
		{"one port", "50000 50000\n", "", portRange{lo: 50000, hi: 50000}, false},
		{"missing file", "", "", defaultPortRange, true},
		{"garbage", "many ports\n", "", defaultPortRange, true},
		{"reversed", "50000 40000\n", "", defaultPortRange, true},
		{"port zero", "0 100\n", "", defaultPortRange, true},
		{"above 65535", "40000 70000\n", "", defaultPortRange, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readPortRange(procFixture(t, tc.rng, tc.reserved))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || fmt.Sprint(got.reserved) != fmt.Sprint(tc.want.reserved) {
				t.Fatalf("got %v %v, want %v %v", got, got.reserved, tc.want, tc.want.reserved)
			}
		})
	}
}

// chiSquare returns the chi-square statistic of counts against a uniform
// expectation where bucket b holds width[b] of the n values.
func chiSquare(counts, width []float64, draws, n float64) float64 {
	var chi float64
	for b := range counts {
		e := draws * width[b] / n
		chi += (counts[b] - e) * (counts[b] - e) / e
	}
	return chi
}

// chiLimit is the chi-square value with k degrees of freedom that a uniform
// source exceeds with probability about 1e-9 (Wilson–Hilferty, z = 6).
func chiLimit(k float64) float64 {
	a := 2 / (9 * k)
	return k * math.Pow(1-a+6*math.Sqrt(a), 3)
}

// TestPortDrawUniform: 200 000 draws from the kernel's default range are
// uniform over it (values and successive differences, 256 buckets), never
// leave it, and never hit a reserved port.
func TestPortDrawUniform(t *testing.T) {
	r := defaultPortRange
	n := int(r.hi) - int(r.lo) + 1
	const draws, buckets = 200_000, 256
	width := make([]float64, buckets)
	for x := 0; x < n; x++ {
		width[x*buckets/n]++
	}
	vals, diffs := make([]float64, buckets), make([]float64, buckets)
	prev := -1
	for i := 0; i < draws; i++ {
		p, ok := r.draw()
		if !ok || p < r.lo || p > r.hi {
			t.Fatalf("draw %d: port %d ok=%v outside %v", i, p, ok, r)
		}
		x := int(p - r.lo)
		vals[x*buckets/n]++
		if prev >= 0 {
			diffs[((x-prev)%n+n)%n*buckets/n]++
		}
		prev = x
	}
	limit := chiLimit(buckets - 1)
	for name, c := range map[string][]float64{"values": vals, "successive differences": diffs} {
		total := 0.0
		for _, v := range c {
			total += v
		}
		chi := chiSquare(c, width, total, float64(n))
		t.Logf("ports, %s: chi-square %.1f (255 df, limit %.1f)", name, chi, limit)
		if chi > limit {
			t.Errorf("ports, %s: chi-square %.1f above %.1f: not uniform", name, chi, limit)
		}
	}

	res := portRange{lo: 40000, hi: 40009, reserved: [][2]uint16{{40000, 40003}, {40008, 40008}}}
	seen := map[uint16]int{}
	for i := 0; i < 10_000; i++ {
		p, ok := res.draw()
		if !ok || res.isReserved(p) || p < res.lo || p > res.hi {
			t.Fatalf("drew %d (ok %v) from %v reserved %v", p, ok, res, res.reserved)
		}
		seen[p]++
	}
	if len(seen) != 5 {
		t.Errorf("drew %v: want each of the 5 unreserved ports", seen)
	}
	if p, ok := (portRange{lo: 1, hi: 2, reserved: [][2]uint16{{1, 2}}}).draw(); ok {
		t.Errorf("a fully reserved range gave port %d", p)
	}
}

// spareWaiter lets a test wait until every logical socket of a worker has
// a ready spare (so its next due rotation happens), without sleeping.
type spareWaiter struct {
	uw *Worker
	ch chan struct{}
}

// hook installs the waiter on uw; call before Start.
func newSpareWaiter(uw *Worker) *spareWaiter {
	sw := &spareWaiter{uw: uw, ch: make(chan struct{}, 1)}
	uw.spareReady = func() {
		select {
		case sw.ch <- struct{}{}:
		default:
		}
	}
	return sw
}

func (sw *spareWaiter) allReady() bool {
	sw.uw.mu.Lock()
	defer sw.uw.mu.Unlock()
	for _, ls := range sw.uw.socks {
		ready := false
		for _, p := range ls.phys {
			ready = ready || (p != ls.cur && sw.uw.phys[p].state == psReady)
		}
		if !ready {
			return false
		}
	}
	return true
}

// wait returns once every logical socket has a ready spare.
func (sw *spareWaiter) wait(t *testing.T) {
	t.Helper()
	for !sw.allReady() {
		select {
		case <-sw.ch:
		case <-time.After(10 * time.Second): // a hang guard
			t.Fatal("no spare socket became ready")
		}
	}
}

// portState returns the state of the open socket on local port port.
func portState(uw *Worker, port uint16) (uint8, bool) {
	uw.mu.Lock()
	defer uw.mu.Unlock()
	for _, ps := range uw.phys {
		if ps.conn != nil && ps.local.Port() == port {
			return ps.state, true
		}
	}
	return 0, false
}

// TestRotationLosesNothing: under load, with a port change every 4 queries
// per socket and an upstream that holds its answers until 24 queries are
// waiting and then answers them newest first, answers reach sockets that
// were retired after their queries left. Every query is answered (so those
// answers were matched on the retired sockets, RFC 5452 §9.1), every fate
// adds up, rotations were deferred while retired sockets still had
// queries in flight, and no slot or socket is left behind.
func TestRotationLosesNothing(t *testing.T) {
	var uwp atomic.Pointer[Worker]
	type held struct {
		q    []byte
		from netip.AddrPort
	}
	var mu sync.Mutex
	var pending []held
	var toRetired, total atomic.Uint64
	flush := func(c *net.UDPConn) {
		mu.Lock()
		out := pending
		pending = nil
		mu.Unlock()
		for k := len(out) - 1; k >= 0; k-- {
			h := out[k]
			if uw := uwp.Load(); uw != nil {
				if st, ok := portState(uw, h.from.Port()); ok && st == psRetired {
					toRetired.Add(1)
				}
			}
			total.Add(1)
			h.q[2] |= 0x80
			_, _ = c.WriteToUDPAddrPort(h.q, h.from)
		}
	}
	up := startFakeUpstream(t, func(c *net.UDPConn, q []byte, from netip.AddrPort) {
		mu.Lock()
		pending = append(pending, held{q, from})
		full := len(pending) >= 24
		mu.Unlock()
		if full {
			flush(c)
		}
	}, flush)
	sink := &collectSink{}
	h := startHarness(t, func(netip.AddrPort) Config {
		return Config{Upstreams: []netip.AddrPort{up.addr()}, Timeout: 10 * time.Second,
			SocketsPerUpstream: 2, PortRotation: 4, Sink: sink}
	}, func(uw *Worker) { uwp.Store(uw) })
	const n = 3000
	if got := askAll(t, h.client.LocalAddr(), "rotate.example.", n, 32); got != n {
		t.Fatalf("%d of %d queries answered", got, n)
	}
	h.stop(t)
	st := h.uw.Stats()
	t.Logf("answers %d, to retired sockets %d; rotations %d, deferred %d, bind retries %d, fallbacks %d, distinct ports %d",
		total.Load(), toRetired.Load(), st.PortRotations.Load(), st.PortRotationsDeferred.Load(),
		st.PortBindRetries.Load(), st.PortBindFallbacks.Load(), distinctPorts(up.sources()))
	if st.Answered.Load() != n || st.TimedOut.Load() != 0 || st.RespMatched.Load() != n {
		t.Errorf("answered %d, timed out %d, matched %d; want %d, 0, %d", st.Answered.Load(), st.TimedOut.Load(), st.RespMatched.Load(), n, n)
	}
	if toRetired.Load() == 0 {
		t.Error("no answer was sent to a retired socket: the test did not exercise draining")
	}
	// toRetired > 0 implies rotations; deferrals are certain, since a
	// retired socket cannot drain while the upstream holds its answers.
	if st.PortRotationsDeferred.Load() == 0 {
		t.Errorf("no rotation deferred, with answers held for %d queries", 24)
	}
	if d := distinctPorts(up.sources()); uint64(d) < st.PortRotations.Load()/2 {
		t.Errorf("%d distinct source ports for %d rotations", d, st.PortRotations.Load())
	}
	// Every logged transaction names the port its query left from.
	ports := map[uint16]bool{}
	for _, s := range up.sources() {
		ports[s.Port()] = true
	}
	for _, tx := range sink.all() {
		if tx.Outcome != txn.Answered || !ports[tx.UpstreamLocal.Port()] {
			t.Fatalf("transaction %v from upstream-leg port %d", tx.Outcome, tx.UpstreamLocal.Port())
		}
	}
	if s := h.uw.Sockets(); len(s) != 0 {
		t.Errorf("%d sockets open after Close", len(s))
	}
}

func distinctPorts(from []netip.AddrPort) int {
	m := map[uint16]bool{}
	for _, f := range from {
		m[f.Port()] = true
	}
	return len(m)
}

// TestPortInUse: with a one-port range whose port is taken, every socket
// tries maxBindTries random ports, then takes the kernel's choice, each
// counted; once the port is free, one socket gets it and the others, which
// collide with that one, fall back again. Queries flow throughout.
func TestPortInUse(t *testing.T) {
	hold, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(hold.LocalAddr().(*net.UDPAddr).Port)
	root := procFixture(t, fmt.Sprintf("%d %d\n", port, port), "")
	up := startFakeUpstream(t, nil, nil)
	var retries0, fallbacks0 uint64
	var sw *spareWaiter
	h := startHarness(t, func(netip.AddrPort) Config {
		c := Config{Upstreams: []netip.AddrPort{up.addr()}, Timeout: 5 * time.Second, SocketsPerUpstream: 2, PortRotation: 1}
		c.procRoot = root
		return c
	}, func(uw *Worker) {
		retries0, fallbacks0 = uw.stats.PortBindRetries.Load(), uw.stats.PortBindFallbacks.Load()
		sw = newSpareWaiter(uw)
		hold.Close() // spares, opened after Start, may take it
	})
	if retries0 != 2*maxBindTries || fallbacks0 != 2 {
		t.Errorf("opening 2 sockets with the only port taken: %d retries, %d fallbacks; want %d, 2", retries0, fallbacks0, 2*maxBindTries)
	}
	// Each query rotates (a spare is always ready when it is sent), and
	// both spares are open at once: at most one holds the port, so the
	// other fell back.
	const n = 300
	c := dialClient(t, h.client.LocalAddr())
	for i := 0; i < n; i++ {
		sw.wait(t)
		if got := askAll2(t, c, "inuse.example.", 1); got != 1 {
			t.Fatalf("query %d not answered", i)
		}
	}
	h.stop(t)
	st := h.uw.Stats()
	r, f := st.PortBindRetries.Load(), st.PortBindFallbacks.Load()
	t.Logf("port %d: bind retries %d, fallbacks %d, rotations %d, deferred %d, open errors %d",
		port, r, f, st.PortRotations.Load(), st.PortRotationsDeferred.Load(), st.PortOpenErrors.Load())
	// Each fallback follows exactly maxBindTries ports in use; an open
	// may also meet the port in use a few times and then find it freed
	// by a socket closing meanwhile.
	if r < f*maxBindTries {
		t.Errorf("%d retries for %d fallbacks: each fallback follows %d ports in use", r, f, maxBindTries)
	}
	if f <= fallbacks0 {
		t.Errorf("no fallback after the port was freed: the sockets did not collide with each other")
	}
	// Every query rotates but the first on each of the 2 sockets.
	if rot := st.PortRotations.Load(); rot < n-2 {
		t.Errorf("%d rotations for %d queries with a spare always ready", rot, n)
	}
	used := false
	for _, s := range up.sources() {
		used = used || s.Port() == port
	}
	if !used {
		t.Errorf("no query left from port %d once it was free", port)
	}
}

// TestLoopGuardFollowsRotation: a worker whose upstream is its own client
// socket. Each query goes up from an upstream socket, comes back in as a
// query from that socket and must be recognised as a loop (answered
// SERVFAIL, which goes back down to the client), also from the sockets
// opened by rotations; closed sockets leave the guard.
func TestLoopGuardFollowsRotation(t *testing.T) {
	var guard *LoopGuard
	var sw *spareWaiter
	h := startHarness(t, func(client netip.AddrPort) Config {
		return Config{Upstreams: []netip.AddrPort{client}, Timeout: 5 * time.Second, SocketsPerUpstream: 1, PortRotation: 2}
	}, func(uw *Worker) {
		guard = NewLoopGuard([]*Worker{uw})
		uw.SetLoopGuard(guard)
		sw = newSpareWaiter(uw)
	})
	const n = 100
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(h.client.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 512)
	for i := 0; i < n; i++ {
		sw.wait(t) // so every due rotation happens
		m := new(dns.Msg)
		m.SetQuestion("loop.example.", dns.TypeA)
		m.Id = uint16(i)
		q, _ := m.Pack()
		if _, err := c.Write(q); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang guard
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:k]); err != nil || r.Id != uint16(i) || r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("query %d: got %v (%v), want SERVFAIL", i, r, err)
		}
	}
	h.stop(t)
	st := h.uw.Stats()
	t.Logf("loop detected %d, rotations %d, deferred %d", st.LoopDetected.Load(), st.PortRotations.Load(), st.PortRotationsDeferred.Load())
	if st.LoopDetected.Load() != n || st.Answered.Load() != n {
		t.Errorf("loop detected %d, answered %d; want %d each", st.LoopDetected.Load(), st.Answered.Load(), n)
	}
	if got := st.PortRotations.Load(); got != (n-1)/2 || st.PortRotationsDeferred.Load() != 0 {
		t.Errorf("%d rotations, %d deferred; want a rotation every 2 queries: %d, 0", got, st.PortRotationsDeferred.Load(), (n-1)/2)
	}
	guard.mu.RLock()
	left := len(guard.set)
	guard.mu.RUnlock()
	if left != 0 {
		t.Errorf("%d closed sockets still in the loop guard", left)
	}
	for p := range guard.ports {
		if guard.ports[p].Load() != 0 {
			t.Fatalf("port %d still counted in the loop guard", p)
		}
	}
}

// TestLoopGuardHas: an exact address and port, v4-mapped or not; counts
// survive adding the same address twice.
func TestLoopGuardHas(t *testing.T) {
	g := NewLoopGuard(nil)
	a := netip.MustParseAddrPort("127.0.0.1:40000")
	g.add(a)
	g.add(a)
	for _, tc := range []struct {
		ap   string
		want bool
	}{{"127.0.0.1:40000", true}, {"[::ffff:127.0.0.1]:40000", true}, {"127.0.0.2:40000", false}, {"127.0.0.1:40001", false}} {
		if got := g.Has(netip.MustParseAddrPort(tc.ap)); got != tc.want {
			t.Errorf("Has(%s) = %v", tc.ap, got)
		}
	}
	g.remove(a)
	if !g.Has(a) {
		t.Error("removed once of twice: gone")
	}
	g.remove(a)
	if g.Has(a) {
		t.Error("still there after both removed")
	}
	if n := testing.AllocsPerRun(100, func() { g.Has(a) }); n != 0 {
		t.Errorf("Has allocates %v", n)
	}
}
