package server

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
	"github.com/tapproxy/tapproxy/upstream"
)

// echoUpstream answers every query with its own bytes and QR set, using the
// zero-allocation batch I/O so it does not disturb allocation counts.
type echoUpstream struct {
	conn *listener.Conn
	mu   sync.Mutex
	seen [][]byte
	keep bool
}

func startEcho(t testing.TB, keep bool) *echoUpstream {
	t.Helper()
	c, err := listener.ListenUDP(context.Background(), netip.MustParseAddrPort("127.0.0.1:0"), listener.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &echoUpstream{conn: c, keep: keep}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		in := listener.NewBatch(listener.BatchSize, listener.MaxDatagram)
		r := c.NewReader(in)
		w := c.NewWriter(listener.BatchSize)
		for {
			n, err := r.Read()
			if err != nil {
				return
			}
			for i := 0; i < n; i++ {
				p := &in.Pkts[i]
				if e.keep {
					e.mu.Lock()
					e.seen = append(e.seen, append([]byte(nil), p.Data()...))
					e.mu.Unlock()
				}
				p.Buf[2] |= 0x80 // QR
				p.Local = netip.Addr{}
			}
			_, _ = w.Write(in.Pkts[:n])
		}
	}()
	return e
}

// recordSink keeps copies of every transaction.
type recordSink struct {
	mu  sync.Mutex
	txs []txn.Transaction
}

func (s *recordSink) Submit(t *txn.Transaction) {
	c := *t
	c.Query = append([]byte(nil), t.Query...)
	c.Response = append([]byte(nil), t.Response...)
	s.mu.Lock()
	s.txs = append(s.txs, c)
	s.mu.Unlock()
}

func startServer(t testing.TB, up netip.AddrPort, sink txn.Sink, mut func(*Config)) (*Server, func() Counters) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Upstreams: []netip.AddrPort{up},
		Workers: 1, ACL: listener.AllowAll(), Sink: sink,
		Upstream: upstream.Config{Timeout: 300 * time.Millisecond, SocketsPerUpstream: 2}}
	if mut != nil {
		mut(&cfg)
	}
	s, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop := func() Counters {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
		return s.Counters()
	}
	t.Cleanup(func() { stop() })
	return s, stop
}

type client struct {
	c   *listener.Conn
	w   *listener.Writer
	r   *listener.Reader
	out *listener.Batch
	in  *listener.Batch
}

func newClient(t testing.TB, to netip.AddrPort) *client {
	t.Helper()
	c, err := listener.DialUDP(context.Background(), to, listener.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	out, in := listener.NewBatch(1, 512), listener.NewBatch(1, listener.MaxDatagram)
	return &client{c: c, w: c.NewWriter(1), r: c.NewReader(in), out: out, in: in}
}

// exchange sends msg and returns the reply (a view into the client's
// buffer), or an error after the deadline.
func (c *client) exchange(msg []byte) ([]byte, error) {
	c.out.Pkts[0].N = copy(c.out.Pkts[0].Buf, msg)
	if _, err := c.w.Write(c.out.Pkts); err != nil {
		return nil, err
	}
	if _, err := c.r.Read(); err != nil {
		return nil, err
	}
	return c.in.Pkts[0].Data(), nil
}

func query(t testing.TB, name string, id uint16) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTripVerbatim(t *testing.T) {
	up := startEcho(t, true)
	sink := &recordSink{}
	s, stop := startServer(t, up.conn.LocalAddr(), sink, nil)
	cl := newClient(t, s.Addrs()[0])
	const n = 50
	for i := 0; i < n; i++ {
		q := query(t, "Verbatim.Test.", uint16(1000+i))
		// Add trailing junk: forwarded untouched both ways.
		q = append(q, 0xde, 0xad, 0xbe, 0xef)
		deadline(t, cl.c)
		r, err := cl.exchange(q)
		if err != nil {
			t.Fatal(err)
		}
		want := append([]byte(nil), q...)
		want[2] |= 0x80
		if !bytes.Equal(r, want) {
			t.Fatalf("reply differs:\n got % x\nwant % x", r, want)
		}
	}
	c := stop()
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if c.Answered != n || c.Forwarded != n || c.RespMatched != n {
		t.Fatalf("counters: %+v", c)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	ids := map[uint16]bool{}
	for i, b := range up.seen {
		q := query(t, "Verbatim.Test.", uint16(1000+i))
		q = append(q, 0xde, 0xad, 0xbe, 0xef)
		if !bytes.Equal(b[2:], q[2:]) {
			t.Fatalf("upstream got other bytes than the client sent (beyond the ID)")
		}
		ids[uint16(b[0])<<8|uint16(b[1])] = true
	}
	if len(ids) < n-2 {
		t.Errorf("upstream IDs not fresh: %d distinct of %d", len(ids), n)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.txs) != n {
		t.Fatalf("sink got %d transactions", len(sink.txs))
	}
	seqs := map[uint64]bool{}
	for _, tx := range sink.txs {
		seqs[tx.Seq] = true
		if tx.Outcome != txn.Answered || tx.Transport != txn.UDP {
			t.Errorf("outcome %v", tx.Outcome)
		}
		ts := []int64{tx.QueryKernel, tx.QueryRead, tx.UpstreamSent, tx.ResponseKernel, tx.ResponseRead, tx.ReplySent}
		for i := 1; i < len(ts); i++ {
			if ts[i-1] == 0 || ts[i] < ts[i-1] {
				t.Fatalf("timestamps out of order: %v", ts)
			}
		}
		if !bytes.Equal(tx.Query[:2], tx.Response[:2]) || tx.Response[0:2][0] != tx.Query[0] {
			t.Errorf("logged response ID differs from query ID")
		}
		if tx.Client != cl.c.LocalAddr() || tx.Local != s.Addrs()[0] || tx.Upstream != up.conn.LocalAddr() {
			t.Errorf("addresses: %v %v %v", tx.Client, tx.Local, tx.Upstream)
		}
	}
	if len(seqs) != n {
		t.Errorf("sequence numbers not unique")
	}
}

func deadline(t testing.TB, c *listener.Conn) {
	// A blocked Read returns os.ErrDeadlineExceeded after Unblock; tests
	// use a goroutine-free bound instead: a timer that unblocks.
	time.AfterFunc(5*time.Second, func() { _ = c.Unblock() })
}

// TestSteadyStateNoAllocs: a whole round trip through the proxy (client
// socket → worker → upstream socket → reader → client) allocates nothing
// with fixed upstream ports. With port rotation, opening the next socket
// allocates (the net package's socket, the Conn, a deadline callback):
// about 30 allocations per rotation, amortised over the queries a port
// carries. testing.AllocsPerRun rounds the mean down, which would hide up
// to one allocation per query, so the rotating case counts mallocs itself
// over enough queries for many rotations and requires well under one per
// query, and that rotations did happen while it measured.
func TestSteadyStateNoAllocs(t *testing.T) {
	t.Run("fixed ports", func(t *testing.T) {
		up := startEcho(t, false)
		s, _ := startServer(t, up.conn.LocalAddr(), txn.Discard{}, func(c *Config) { c.Upstream.Timeout = 5 * time.Second })
		cl := newClient(t, s.Addrs()[0])
		q := query(t, "alloc.test.", 7)
		for i := 0; i < 100; i++ { // warm up
			if _, err := cl.exchange(q); err != nil {
				t.Fatal(err)
			}
		}
		var failed error
		allocs := testing.AllocsPerRun(500, func() {
			if _, err := cl.exchange(q); err != nil && failed == nil {
				failed = err
			}
		})
		if failed != nil {
			t.Fatal(failed)
		}
		if allocs != 0 {
			t.Fatalf("round trip allocates %v per query", allocs)
		}
	})
	t.Run("rotating ports", func(t *testing.T) {
		up := startEcho(t, false)
		rot := upstream.DefaultPortRotation
		s, _ := startServer(t, up.conn.LocalAddr(), txn.Discard{}, func(c *Config) {
			c.Upstream.Timeout = 5 * time.Second
			c.Upstream.PortRotation = rot
		})
		cl := newClient(t, s.Addrs()[0])
		q := query(t, "alloc.test.", 7)
		// Warm up past the first rotations: every socket slot has been
		// reopened once, so its reader and writers exist.
		for i := 0; i < 8*rot; i++ {
			if _, err := cl.exchange(q); err != nil {
				t.Fatal(err)
			}
		}
		const n = 20_000
		before := s.Counters().PortRotations
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		for i := 0; i < n; i++ {
			if _, err := cl.exchange(q); err != nil {
				t.Fatal(err)
			}
		}
		runtime.ReadMemStats(&m1)
		rotations := s.Counters().PortRotations - before
		perQuery := float64(m1.Mallocs-m0.Mallocs) / n
		t.Logf("%d queries, %d rotations (every %d queries per socket): %.3f allocations per query, %.1f per rotation",
			n, rotations, rot, perQuery, float64(m1.Mallocs-m0.Mallocs)/float64(max(rotations, 1)))
		if rotations < n/uint64(rot)/4 {
			t.Fatalf("only %d rotations in %d queries", rotations, n)
		}
		if perQuery >= 1 {
			t.Fatalf("round trip with port rotation allocates %.3f per query", perQuery)
		}
	})
}

// TestTimeoutFreesSlot: with one slot, a query the upstream ignores times
// out (client gets nothing, or SERVFAIL when configured), then the slot
// serves the next query.
func TestTimeout(t *testing.T) {
	for _, servfail := range []bool{false, true} {
		silent, err := listener.ListenUDP(context.Background(), netip.MustParseAddrPort("127.0.0.1:0"), listener.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { silent.Close() })
		sink := &recordSink{}
		s, stop := startServer(t, silent.LocalAddr(), sink, func(c *Config) {
			c.Upstream.MaxInflight = 1
			c.Upstream.Timeout = 100 * time.Millisecond
			c.Upstream.ServfailOnTimeout = servfail
		})
		cl := newClient(t, s.Addrs()[0])
		q := query(t, "silent.test.", 99)
		if servfail {
			deadline(t, cl.c)
			r, err := cl.exchange(q)
			if err != nil {
				t.Fatal(err)
			}
			var m dns.Msg
			if err := m.Unpack(r); err != nil || m.Rcode != dns.RcodeServerFailure || m.Id != 99 || len(m.Question) != 1 {
				t.Fatalf("want SERVFAIL with question: %v %v", err, m.String())
			}
		} else {
			time.AfterFunc(400*time.Millisecond, func() { _ = cl.c.Unblock() })
			if _, err := cl.exchange(q); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("client got an answer from a silent upstream: %v", err)
			}
		}
		c := stop()
		if c.TimedOut != 1 || c.Check() != nil || c.InFlight != 0 {
			t.Fatalf("counters: %+v %v", c, c.Check())
		}
		sink.mu.Lock()
		if len(sink.txs) != 1 || (sink.txs[0].Outcome == txn.TimedOutServfail) != servfail {
			t.Fatalf("sink: %+v", sink.txs)
		}
		sink.mu.Unlock()
	}
}

func TestNoUpstream(t *testing.T) {
	_, err := New(context.Background(), Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}})
	if !errors.Is(err, ErrNoUpstream) {
		t.Fatalf("got %v", err)
	}
}

// TestFailoverOnICMPUnreachable: the first upstream is a closed port, so
// the kernel answers with ICMP port unreachable (ECONNREFUSED on the
// connected upstream socket); the query fails over to the second upstream
// within its deadline, and after FailThreshold failures the dead one is
// marked down and skipped.
func TestFailoverOnICMPUnreachable(t *testing.T) {
	dead, err := listener.ListenUDP(context.Background(), netip.MustParseAddrPort("127.0.0.1:0"), listener.Options{})
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr()
	dead.Close() // now nothing listens there
	up := startEcho(t, false)
	s, stop := startServer(t, deadAddr, txn.Discard{}, func(c *Config) {
		c.Upstreams = []netip.AddrPort{deadAddr, up.conn.LocalAddr()}
		c.Upstream.Timeout = 5 * time.Second
		c.Upstream.SocketsPerUpstream = 1
		c.Health = upstream.HealthConfig{FailThreshold: 2, ProbeInterval: time.Hour}
	})
	cl := newClient(t, s.Addrs()[0])
	for i := 0; i < 10; i++ {
		deadline(t, cl.c)
		r, err := cl.exchange(query(t, "failover.test.", uint16(i)))
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		if r[0] != 0 || r[1] != byte(i) {
			t.Fatalf("wrong ID back")
		}
	}
	c := stop()
	if c.Failovers == 0 || c.Answered != 10 || c.Check() != nil {
		t.Fatalf("counters: %+v %v", c, c.Check())
	}
	if s.pool.Upstreams()[0].Up() {
		t.Error("dead upstream still marked up")
	}
}

// TestLoopRefusedAtStartup: an upstream that is our own listen address is
// refused before any socket is bound.
func TestLoopRefusedAtStartup(t *testing.T) {
	for _, tc := range []struct{ listen, up string }{
		{"127.0.0.1:15399", "127.0.0.1:15399"},
		{"0.0.0.0:15399", "127.0.0.5:15399"},
		{"[::]:15399", "[::1]:15399"},
	} {
		_, err := New(context.Background(), Config{Listen: []netip.AddrPort{netip.MustParseAddrPort(tc.listen)},
			Upstreams: []netip.AddrPort{netip.MustParseAddrPort(tc.up)}})
		if !errors.Is(err, ErrLoop) {
			t.Errorf("%s → %s: got %v, want ErrLoop", tc.listen, tc.up, err)
		}
	}
}
