package server

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
	"github.com/tapproxy/tapproxy/upstream"
)

// waitBound bounds every wait in the TCP tests. It is never an assertion
// about speed: a wait that hits it is a hang.
const waitBound = 30 * time.Second

// tcpSink keeps a copy of every transaction.
type tcpSink struct {
	mu  sync.Mutex
	txs []txn.Transaction
}

func (s *tcpSink) Submit(t *txn.Transaction) {
	c := *t
	c.Query = append([]byte(nil), t.Query...)
	c.Response = append([]byte(nil), t.Response...)
	s.mu.Lock()
	s.txs = append(s.txs, c)
	s.mu.Unlock()
}

func (s *tcpSink) all() []txn.Transaction {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]txn.Transaction(nil), s.txs...)
}

// fakeTCP is a scriptable in-process DNS-over-TCP upstream. handler runs on
// the connection's goroutine once per framed query; it may reply at once,
// later (fc.send from anywhere) or close the connection.
type fakeTCP struct {
	addr    netip.AddrPort
	ln      *net.TCPListener
	handler func(fc *fakeConn, q []byte)
	mu      sync.Mutex
	nconns  int
	conns   []*fakeConn
	wg      sync.WaitGroup
}

type fakeConn struct {
	idx int // 0 for the first connection the fake accepted
	c   *net.TCPConn
	n   int // queries read on this connection so far
	wmu sync.Mutex
	// PROXY v2 fakes: the source and destination the header named (set
	// before the handler first runs).
	proxySrc, proxyDst netip.AddrPort
}

func (fc *fakeConn) send(msg []byte) {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	b := binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
	_, _ = fc.c.Write(append(b, msg...))
}

func (fc *fakeConn) remote() netip.AddrPort {
	a := fc.c.RemoteAddr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// echo answers with the query's own bytes, QR set, plus pad bytes after the
// question (forwarded untouched, ignored by the question check).
func echo(q []byte, pad int) []byte {
	r := append([]byte(nil), q...)
	r[2] |= 0x80
	return append(r, make([]byte, pad)...)
}

func startFakeTCP(t *testing.T, h func(fc *fakeConn, q []byte)) *fakeTCP {
	t.Helper()
	return startFakeTCPWith(t, false, h)
}

// readProxyV2 reads a PROXY protocol v2 header (haproxy spec §2.2: PROXY
// command, TCP over IPv4 or IPv6) from the start of a connection.
func readProxyV2(r io.Reader) (src, dst netip.AddrPort, err error) {
	var h [16]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return
	}
	sig := []byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}
	if string(h[:12]) != string(sig) || h[12] != 0x21 {
		return src, dst, errors.New("not a PROXY v2 PROXY header")
	}
	body := make([]byte, binary.BigEndian.Uint16(h[14:]))
	if _, err = io.ReadFull(r, body); err != nil {
		return
	}
	switch {
	case h[13] == 0x11 && len(body) >= 12:
		src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:]))
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:]))
	case h[13] == 0x21 && len(body) >= 36:
		src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:]))
		dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:]))
	default:
		err = errors.New("PROXY v2 header: not TCP over IPv4/IPv6")
	}
	return
}

// startFakeTCPWith starts a fake; with proxyV2 every connection must begin
// with a PROXY v2 header (else it is closed unread).
func startFakeTCPWith(t *testing.T, proxyV2 bool, h func(fc *fakeConn, q []byte)) *fakeTCP {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeTCP{ln: ln, handler: h, addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			f.mu.Lock()
			fc := &fakeConn{idx: f.nconns, c: c}
			f.nconns++
			f.conns = append(f.conns, fc)
			f.mu.Unlock()
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				if proxyV2 {
					var err error
					if fc.proxySrc, fc.proxyDst, err = readProxyV2(c); err != nil {
						return
					}
				}
				var hdr [2]byte
				for {
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					q := make([]byte, binary.BigEndian.Uint16(hdr[:]))
					if _, err := io.ReadFull(c, q); err != nil {
						return
					}
					fc.n++
					f.handler(fc, q)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, fc := range f.conns {
			fc.c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *fakeTCP) connCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nconns
}

// tcpConfig is a whole-proxy configuration with TCP on and small bounds
// (each test adjusts what it exercises).
func tcpConfig(up netip.AddrPort, sink txn.Sink) Config {
	return Config{
		Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Upstreams: []netip.AddrPort{up},
		Workers: 1, ACL: listener.AllowAll(), Sink: sink,
		Upstream: upstream.Config{Timeout: 2 * time.Second, SocketsPerUpstream: 1},
		TCP: TCPConfig{Enable: true,
			Client: listener.TCPConfig{MaxConns: 64, MaxConnsPerIP: 64, MaxInflight: 16,
				IdleTimeout: 10 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second},
			Upstream: upstream.TCPConfig{PoolSize: 2, ConnInflight: 100}},
		DrainTimeout: 5 * time.Second,
	}
}

// startTCPProxy runs a whole proxy in-process; stop shuts it down, checks
// every accounting invariant, and returns the final counters.
func startTCPProxy(t *testing.T, cfg Config) (*Server, func() Counters) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var final Counters
	stop := func() Counters {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(waitBound):
				t.Fatalf("Run did not return within %v of cancel", waitBound)
			}
			final = s.Counters()
			if err := final.Check(); err != nil {
				t.Errorf("counter invariants: %v\n%v", err, final.TCP.attrs())
			}
			if final.TCP.InFlight != 0 || final.TCP.Open != 0 || final.TCP.UpOpen != 0 {
				t.Errorf("after Run: tcp_in_flight=%d tcp_open=%d tcp_up_open=%d, want 0", final.TCP.InFlight, final.TCP.Open, final.TCP.UpOpen)
			}
		})
		return final
	}
	t.Cleanup(func() { stop() })
	return s, stop
}

// tcpClient is a DNS-over-TCP test client.
type tcpClient struct {
	t *testing.T
	c *net.TCPConn
}

func dialFrom(t *testing.T, src string, to netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: waitBound}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp4", to.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func newTCPClient(t *testing.T, src string, to netip.AddrPort) *tcpClient {
	t.Helper()
	c, err := dialFrom(t, src, to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(waitBound))
	return &tcpClient{t: t, c: c}
}

func (c *tcpClient) write(b []byte) error {
	_, err := c.c.Write(b)
	return err
}

func (c *tcpClient) sendMsg(msg []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
	if err := c.write(append(b, msg...)); err != nil {
		c.t.Fatalf("writing query: %v", err)
	}
}

func (c *tcpClient) readMsg() ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(c.c, hdr[:]); err != nil {
		return nil, err
	}
	m := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	_, err := io.ReadFull(c.c, m)
	return m, err
}

// waitClosed reads until the server ends the connection (EOF or reset) and
// fails on anything else, or on the bound.
func (c *tcpClient) waitClosed() {
	c.t.Helper()
	buf := make([]byte, 4096)
	for {
		_, err := c.c.Read(buf)
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return
		}
		c.t.Fatalf("waiting for the server to close: %v", err)
	}
}

func dnsQuery(t testing.TB, name string, qtype uint16, id uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitFor polls cond (cheap counter reads) until it holds, bounded.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitBound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not reached within %v", what, waitBound)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// goroutinesBack waits (bounded) until the goroutine count is back to base:
// after Run returns every goroutine tapproxy started must be gone.
func goroutinesBack(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(waitBound)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines: %d, baseline %d\n%s", runtime.NumGoroutine(), base, buf[:n])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// raiseNoFile lifts the soft RLIMIT_NOFILE to the hard limit and returns
// the limit in force.
func raiseNoFile(t *testing.T) uint64 {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatal(err)
		}
	}
	return rl.Cur
}

// goodClientAnswered checks that a well-behaved client (from another
// loopback address) still gets its answer.
func goodClientAnswered(t *testing.T, to netip.AddrPort, id uint16) {
	t.Helper()
	c := newTCPClient(t, "127.0.0.2", to)
	q := dnsQuery(t, "good.example.", dns.TypeA, id)
	c.sendMsg(q)
	r, err := c.readMsg()
	if err != nil {
		t.Fatalf("good client: %v", err)
	}
	if binary.BigEndian.Uint16(r) != id || r[2]&0x80 == 0 {
		t.Fatalf("good client: wrong answer % x", r[:4])
	}
	c.c.Close()
}

type syscallRawConn = syscall.RawConn

// setRcvBuf shrinks a client socket's receive buffer before connect, so a
// client that does not read stops the proxy's writes quickly.
func setRcvBuf(rc syscall.RawConn, n int) error {
	var serr error
	err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n) })
	if err != nil {
		return err
	}
	return serr
}
