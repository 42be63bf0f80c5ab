package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// Bounds for waits. An expected datagram that has not arrived by then is a
// failure; they are generous because CI machines are small and -race is
// slow, and they never make a passing test slower.
const (
	answerWait = 5 * time.Second
	// drainWait bounds the read of datagrams that are already queued: it
	// is used only after tapproxy has exited, when everything it ever sent
	// over loopback is in the client's socket buffer.
	drainWait = 100 * time.Millisecond
)

// client is a UDP socket bound to one loopback address, as a stub resolver
// would use.
type client struct {
	t     testing.TB
	conn  *net.UDPConn
	buf   []byte
	stray [][]byte // datagrams skipped while waiting for another ID
}

func newClient(t testing.TB, local string) *client {
	t.Helper()
	ip, err := netip.ParseAddr(local)
	if err != nil || !ip.IsLoopback() {
		t.Fatalf("client address %q must be a loopback address", local)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		t.Fatalf("client bind %s: %v", local, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &client{t: t, conn: conn, buf: make([]byte, 65536)}
}

func (c *client) addr() netip.AddrPort { return c.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (c *client) send(to netip.AddrPort, b []byte) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDPAddrPort(b, to); err != nil {
		c.t.Fatalf("client %s send to %s: %v", c.addr(), to, err)
	}
}

// recv returns the next datagram, or ok=false when none arrives in timeout.
func (c *client) recv(timeout time.Duration) (b []byte, from netip.AddrPort, ok bool) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := c.conn.ReadFromUDPAddrPort(c.buf)
	if err != nil {
		return nil, netip.AddrPort{}, false
	}
	return append([]byte(nil), c.buf[:n]...), netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), true
}

// await returns the first datagram from `from` carrying id, skipping (and
// remembering) others; nil when none arrives in timeout.
func (c *client) await(from netip.AddrPort, id uint16, timeout time.Duration) []byte {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		b, src, ok := c.recv(left)
		if !ok {
			return nil
		}
		if src == from && len(b) >= 2 && binary.BigEndian.Uint16(b) == id {
			return b
		}
		c.stray = append(c.stray, b)
	}
}

// exchange sends q to `to` and returns the reply carrying q's ID from `to`,
// failing the test when none arrives within answerWait.
func (c *client) exchange(to netip.AddrPort, q []byte) []byte {
	c.t.Helper()
	c.send(to, q)
	r := c.await(to, binary.BigEndian.Uint16(q), answerWait)
	if r == nil {
		c.t.Fatalf("no reply with ID %#04x from %s within %v to %x (other datagrams: %x)", binary.BigEndian.Uint16(q), to, answerWait, q, c.stray)
	}
	return r
}

// drain returns every datagram already queued on the socket. Call it only
// after tapproxy has exited.
func (c *client) drain() [][]byte {
	out := append([][]byte(nil), c.stray...)
	c.stray = nil
	for {
		b, _, ok := c.recv(drainWait)
		if !ok {
			return out
		}
		out = append(out, b)
	}
}

// expectNothing fails the test if anything is queued on the socket (after
// tapproxy has exited).
func (c *client) expectNothing(why string) {
	c.t.Helper()
	if got := c.drain(); len(got) > 0 {
		c.t.Errorf("%s: client %s received %d datagram(s), want none: %x", why, c.addr(), len(got), got)
	}
}

// ask builds a query with miekg/dns.
type ask struct {
	name  string
	qtype uint16
	id    uint16
	rd    bool
	cd    bool
	edns  uint16 // 0: no OPT record
	do    bool
}

func (a ask) wire(t testing.TB) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(a.name, a.qtype)
	m.Id = a.id
	m.RecursionDesired = a.rd
	m.CheckingDisabled = a.cd
	if a.edns != 0 {
		m.SetEdns0(a.edns, a.do)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("packing %+v: %v", a, err)
	}
	return b
}

func query(t testing.TB, name string, id uint16) []byte {
	return ask{name: name, qtype: dns.TypeA, id: id, rd: true}.wire(t)
}

// withID returns a copy of b with the DNS ID replaced.
func withID(b []byte, id uint16) []byte {
	c := append([]byte(nil), b...)
	binary.BigEndian.PutUint16(c, id)
	return c
}

func idOf(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

// answerA is the fake upstream's answer to a well-formed query: the
// question echoed, one A record for it, built deterministically so a test
// can compute the exact bytes the client must receive (answerA of the
// client's own query).
func answerA(q []byte, ip string) []byte {
	m := new(dns.Msg)
	if err := m.Unpack(q); err != nil || len(m.Question) != 1 {
		return nil
	}
	r := new(dns.Msg)
	r.SetReply(m)
	r.Authoritative = true
	r.Answer = append(r.Answer, &dns.A{
		Hdr: dns.RR_Header{Name: m.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
		A:   net.ParseIP(ip).To4(),
	})
	b, err := r.Pack()
	if err != nil {
		return nil
	}
	return b
}

// qname returns the lower-cased first question name of a well-formed
// message, or "".
func qname(b []byte) string {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil || len(m.Question) == 0 {
		return ""
	}
	return dns.CanonicalName(m.Question[0].Name)
}

// questionBytes returns the raw first question (uncompressed name, type,
// class) of b, or nil when b has no well-formed uncompressed question.
func questionBytes(b []byte) []byte {
	if len(b) < 12 || binary.BigEndian.Uint16(b[4:]) != 1 {
		return nil
	}
	i := 12
	for {
		if i >= len(b) {
			return nil
		}
		l := int(b[i])
		if l == 0 {
			i++
			break
		}
		if l > 63 {
			return nil
		}
		i += 1 + l
	}
	if i+4 > len(b) {
		return nil
	}
	return b[12 : i+4]
}

// checkMadeAnswer checks an answer tapproxy made itself (REFUSED by the
// ACL, SERVFAIL on timeout) to query q: the client's ID, QR=1, the query's
// opcode and RD copied (RFC 1035 §4.1.1), the rcode, and the question
// echoed byte for byte.
func checkMadeAnswer(t testing.TB, what string, q, r []byte, rcode int) {
	t.Helper()
	if len(r) < 12 {
		t.Errorf("%s: reply %x shorter than a header", what, r)
		return
	}
	if idOf(r) != idOf(q) {
		t.Errorf("%s: reply ID %#04x, want the client's %#04x", what, idOf(r), idOf(q))
	}
	if r[2]&0x80 == 0 {
		t.Errorf("%s: reply has QR=0", what)
	}
	if r[2]&0x79 != q[2]&0x79 {
		t.Errorf("%s: reply opcode/RD bits %#02x, query's %#02x", what, r[2]&0x79, q[2]&0x79)
	}
	if got := int(r[3] & 0xF); got != rcode {
		t.Errorf("%s: rcode %s, want %s", what, dns.RcodeToString[got], dns.RcodeToString[rcode])
	}
	if qb, rb := questionBytes(q), questionBytes(r); qb == nil || !bytes.Equal(qb, rb) {
		t.Errorf("%s: question not echoed: query %x, reply %x", what, qb, rb)
	}
	if an, ns := binary.BigEndian.Uint16(r[6:]), binary.BigEndian.Uint16(r[8:]); an != 0 || ns != 0 {
		t.Errorf("%s: reply has %d answer and %d authority records, want none", what, an, ns)
	}
}

// proxyWithFake starts a fake upstream on 127.0.0.1 scripted by h and a
// tapproxy in front of it on 127.0.0.1, with one worker (so datagrams from
// all clients are handled in arrival order) and the given extra flags.
func proxyWithFake(t testing.TB, h testenv.Handler, extra ...string) (*testenv.Fake, *testenv.Tapproxy, netip.AddrPort) {
	t.Helper()
	fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", h)
	listen := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(testenv.FreePort(t, "ip4")))
	args := append([]string{"--listen", listen.String(), "--upstream", fake.Addr.String(), "--workers", "1"}, extra...)
	tp := testenv.StartTapproxy(t, args...)
	return fake, tp, listen
}

// answerAll is a fake upstream handler that answers every well-formed query
// with answerA and every other datagram with a header-only FORMERR.
func answerAll(ip string) testenv.Handler {
	return func(q []byte, _ netip.AddrPort, reply func([]byte), _ func(int, []byte)) {
		if a := answerA(q, ip); a != nil {
			reply(a)
			return
		}
		reply(testenv.HeaderOnlyReply(q, dns.RcodeFormatError))
	}
}

func counters(kv ...any) map[string]uint64 {
	if len(kv)%2 != 0 {
		panic("counters: odd argument count")
	}
	m := make(map[string]uint64)
	for i := 0; i < len(kv); i += 2 {
		var v uint64
		switch n := kv[i+1].(type) {
		case int:
			v = uint64(n)
		case uint64:
			v = n
		default:
			panic(fmt.Sprintf("counters: %T", n))
		}
		m[kv[i].(string)] = v
	}
	return m
}
