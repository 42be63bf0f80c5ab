package responder

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startServer runs a Server until stop is called (or the test ends) and
// returns it. After stop returns the counters are final: Sent is counted
// after sendmmsg returns, so a client may see an answer before it is counted.
func startServer(t *testing.T, cfg Config) (s *Server, stop func()) {
	t.Helper()
	s, err := Listen(cfg)
	if err != nil {
		t.Fatalf("Listen(%+v): %v", cfg, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return s, stop
}

func TestServerExchange(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			s, stop := startServer(t, Config{Addr: addr, Sockets: 3, Batch: 8, RcvBuf: 1 << 20})
			c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
			// Different source ports spread over the sockets.
			for i := range 30 {
				m := new(dns.Msg)
				name := fmt.Sprintf("h%d.bench.test.", i)
				qt := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT}[i%3]
				m.SetQuestion(name, qt)
				r, _, err := c.Exchange(m, s.Addr().String())
				if err != nil {
					t.Fatalf("exchange %d: %v", i, err)
				}
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != qt {
					t.Fatalf("answer %d: %v", i, r)
				}
			}
			m := new(dns.Msg)
			m.SetQuestion("x.nx.bench.test.", dns.TypeA)
			if r, _, err := c.Exchange(m, s.Addr().String()); err != nil || r.Rcode != dns.RcodeNameError {
				t.Fatalf("nx: %v %v", r, err)
			}
			stop()
			got := s.Counters()
			if got.Received != 31 || got.Outcomes[Answered] != 30 || got.Outcomes[NXDomain] != 1 || got.Sent != 31 {
				t.Errorf("counters = %+v", got.Pairs())
			}
		})
	}
}

// TestServerBurst sends more queries than one batch holds without waiting,
// from one socket, and expects every ID answered exactly once, and
// datagrams that get no answer to be counted.
func TestServerBurst(t *testing.T) {
	const n = 500
	s, stop := startServer(t, Config{Addr: "127.0.0.1:0", Batch: 16, RcvBuf: 1 << 20})
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetReadBuffer(1 << 20); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("b%d.bench.test.", i), dns.TypeA)
		m.Id = uint16(i)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	// Unanswerable datagrams: short, and a response.
	if _, err := c.Write([]byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte{0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	seen := make([]bool, n)
	buf := make([]byte, 1500)
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for range n {
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("reading answers: %v (counters %v)", err, s.Counters().Pairs())
		}
		var r dns.Msg
		if err := r.Unpack(buf[:k]); err != nil {
			t.Fatal(err)
		}
		if int(r.Id) >= n || seen[r.Id] {
			t.Fatalf("unexpected or duplicate id %d", r.Id)
		}
		seen[r.Id] = true
		if want := fmt.Sprintf("b%d.bench.test.", r.Id); r.Question[0].Name != want || len(r.Answer) != 1 {
			t.Fatalf("answer for id %d: %v", r.Id, &r)
		}
	}
	// The two unanswerable datagrams were sent after the queries, on one
	// flow, so they are read by now: an extra query proves it.
	m := new(dns.Msg)
	m.SetQuestion("last.bench.test.", dns.TypeA)
	m.Id = 0xFFFF
	b, _ := m.Pack()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	stop()
	got := s.Counters()
	if got.Received != n+3 || got.Outcomes[DropShort] != 1 || got.Outcomes[DropQR] != 1 ||
		got.Outcomes[Answered] != n+1 || got.Sent != n+1 || got.SendFailed != 0 {
		t.Errorf("counters = %v", got.Pairs())
	}
}

func TestListenErrors(t *testing.T) {
	if _, err := Listen(Config{Addr: "127.0.0.1:0", Zone: "a..b"}); err == nil {
		t.Error("bad zone accepted")
	}
	// A port number out of range: fails before any name lookup.
	if _, err := Listen(Config{Addr: "127.0.0.1:99999"}); err == nil {
		t.Error("bad address accepted")
	}
	// A port held by a socket without SO_REUSEPORT cannot be joined.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := Listen(Config{Addr: pc.LocalAddr().String(), Sockets: 2}); err == nil {
		t.Error("Listen on a port in use succeeded")
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	s, err := Listen(Config{Addr: "127.0.0.1:0", Sockets: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	// The port is free again.
	pc, err := net.ListenPacket("udp", s.Addr().String())
	if err != nil {
		t.Fatalf("port still bound after Serve returned: %v", err)
	}
	pc.Close()
}

// burstClient sends bursts of queries on one connected socket and reads the
// answers, with buffers allocated once, so that allocations measured around
// it are the server's.
type burstClient struct {
	c    *net.UDPConn
	qs   [][]byte
	rbuf []byte
}

func newBurstClient(t testing.TB, s *Server, n int) *burstClient {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetReadBuffer(1 << 20); err != nil {
		t.Fatal(err)
	}
	// One deadline for the whole test: a lost answer fails instead of hanging.
	if err := c.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	bc := &burstClient{c: c, rbuf: make([]byte, 1500)}
	for i := range n {
		bc.qs = append(bc.qs, query(t, fmt.Sprintf("r%d.bench.test.", i), dns.TypeAAAA, nil))
	}
	return bc
}

// burst returns the first error; it does not allocate on success.
func (bc *burstClient) burst() error {
	for _, q := range bc.qs {
		if _, err := bc.c.Write(q); err != nil {
			return err
		}
	}
	for range bc.qs {
		if _, err := bc.c.Read(bc.rbuf); err != nil {
			return err
		}
	}
	return nil
}

// TestServerLoopAllocs extends "allocates nothing" from Answer to the whole
// receive/answer/send loop: the process-wide allocation count over many
// bursts stays below one per burst (a per-packet allocation would show up
// as at least 32 per burst).
func TestServerLoopAllocs(t *testing.T) {
	s, _ := startServer(t, Config{Addr: "127.0.0.1:0", Batch: 16})
	bc := newBurstClient(t, s, 32)
	if err := bc.burst(); err != nil { // warm up
		t.Fatal(err)
	}
	var err error
	allocs := testing.AllocsPerRun(100, func() {
		if e := bc.burst(); e != nil && err == nil {
			err = e
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs >= 1 {
		t.Fatalf("%.1f allocations per burst of 32 queries, want 0", allocs)
	}
}

// BenchmarkServerRoundTrip measures bursts of 32 queries over loopback; its
// allocs/op include the server's (they should be 0).
func BenchmarkServerRoundTrip(b *testing.B) {
	for _, batch := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			s, err := Listen(Config{Addr: "127.0.0.1:0", Batch: batch})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Serve(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					b.Error(err)
				}
			}()
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.Addr()))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if err := c.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
				b.Fatal(err)
			}
			bc := &burstClient{c: c, rbuf: make([]byte, 1500)}
			for i := range 32 {
				bc.qs = append(bc.qs, query(b, fmt.Sprintf("r%d.bench.test.", i), dns.TypeA, nil))
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.burst(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*32), "ns/query")
		})
	}
}
