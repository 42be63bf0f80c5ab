package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// tcpBound bounds every wait of the TCP end-to-end tests (a hang, not a
// speed assertion).
const tcpBound = 20 * time.Second

// tcpConn is a DNS-over-TCP client that pipelines: it writes every query
// first, then reads answers in whatever order they come.
type tcpConn struct {
	t *testing.T
	c net.Conn
}

func dialTCPDNS(t *testing.T, to netip.AddrPort) *tcpConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", to.String(), tcpBound)
	if err != nil {
		t.Fatalf("dialling %s over TCP: %v", to, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(tcpBound))
	return &tcpConn{t: t, c: c}
}

func (c *tcpConn) send(msg []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
	if _, err := c.c.Write(append(b, msg...)); err != nil {
		c.t.Fatalf("writing over TCP: %v", err)
	}
}

func (c *tcpConn) recv() []byte {
	c.t.Helper()
	var hdr [2]byte
	if _, err := io.ReadFull(c.c, hdr[:]); err != nil {
		c.t.Fatalf("reading over TCP: %v", err)
	}
	m := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(c.c, m); err != nil {
		c.t.Fatalf("reading over TCP: %v", err)
	}
	return m
}

// pipeline sends every query on one connection, then collects one answer
// per query, keyed by ID (the IDs must be distinct).
func (c *tcpConn) pipeline(qs [][]byte) map[uint16][]byte {
	c.t.Helper()
	for _, q := range qs {
		c.send(q)
	}
	out := make(map[uint16][]byte, len(qs))
	for range qs {
		r := c.recv()
		id := binary.BigEndian.Uint16(r)
		if _, dup := out[id]; dup {
			c.t.Fatalf("two answers with ID %#04x", id)
		}
		out[id] = r
	}
	return out
}

func tcpQuery(t testing.TB, name string, qtype, id uint16, edns uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	if edns != 0 {
		m.SetEdns0(edns, false)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkTCPCounters checks the tcp_* invariants of the final counters line
// (internal/server/tcp.go documents them).
func checkTCPCounters(t testing.TB, c map[string]uint64) {
	t.Helper()
	var closed, upClosed uint64
	for k, v := range c {
		switch {
		case strings.HasPrefix(k, "tcp_closed_"):
			closed += v
		case strings.HasPrefix(k, "tcp_up_closed_"):
			upClosed += v
		}
	}
	if _, ok := c["tcp_accepted"]; !ok {
		t.Fatalf("no tcp_* keys in the final counters: %s", testenv.FormatCounters(c))
	}
	eq := func(what string, a, b uint64) {
		if a != b {
			t.Errorf("final counters: %s (%d != %d)\n%s", what, a, b, testenv.FormatCounters(c))
		}
	}
	eq("tcp_accepted = refused+rejected+closed+open", c["tcp_accepted"],
		c["tcp_refused_acl"]+c["tcp_rejected_max_conns"]+c["tcp_rejected_per_ip"]+closed+c["tcp_open"])
	eq("tcp_received = tcp_dropped_qr + tcp_handled", c["tcp_received"], c["tcp_dropped_qr"]+c["tcp_handled"])
	eq("tcp_handled = dropped_inflight_full+send_failed+servfail_all_down+forwarded+unsent", c["tcp_handled"],
		c["tcp_dropped_inflight_full"]+c["tcp_send_failed"]+c["tcp_servfail_all_down"]+c["tcp_forwarded"]+c["tcp_unsent"])
	eq("tcp_forwarded = answered+timed_out+reply_failed+upstream_closed+in_flight-unsent", c["tcp_forwarded"],
		c["tcp_answered"]+c["tcp_timed_out"]+c["tcp_reply_failed"]+c["tcp_upstream_closed"]+c["tcp_in_flight"]-c["tcp_unsent"])
	eq("tcp_resp_received = sum of response fates", c["tcp_resp_received"],
		c["tcp_resp_matched"]+c["tcp_resp_short"]+c["tcp_resp_not_response"]+c["tcp_resp_unknown_id"]+c["tcp_resp_late"]+c["tcp_resp_question_mismatch"])
	eq("tcp_up_dialed = closed+open", c["tcp_up_dialed"], upClosed+c["tcp_up_open"])
	eq("nothing open after shutdown", c["tcp_open"]+c["tcp_up_open"]+c["tcp_in_flight"], 0)
}

// normDig removes what legitimately differs between two runs of dig or
// kdig against different servers: the ID, timings, the server's address
// and port (also in dig's echo of its command line).
var digVolatile = regexp.MustCompile(`(?m)^(;; (Query time|SERVER|WHEN|Time|From|XFR size)|; <<>> DiG).*$`)
var digID = regexp.MustCompile(`id: \d+`)

func normDig(out []byte) string {
	s := digVolatile.ReplaceAllString(string(out), "")
	return digID.ReplaceAllString(s, "id: X")
}

func runTool(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	bin := testenv.RequireTool(t, name)
	cmd := exec.Command(bin, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// TestTCPUnboundTransparency: through tapproxy over TCP, a Go client that
// pipelines 100 queries on one connection, dig +tcp and kdig +tcp get the
// same bytes (apart from the ID) as asking Unbound directly over TCP; the TXT
// that UDP can only give truncated arrives whole.
func TestTCPUnboundTransparency(t *testing.T) {
	u := testenv.StartUnbound(t, testenv.UnboundOptions{})
	listen := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(testenv.FreePort(t, "ip4")))
	tp := testenv.StartTapproxy(t, "--listen", listen.String(), "--upstream", u.Addr4.String(),
		"--workers", "1", "--timeout", "2s")

	// 100 queries: every served question, NXDOMAIN and REFUSED ones, with
	// and without EDNS; the big TXT among them.
	served := testenv.ServedNames()
	var qs [][]byte
	for i := 0; len(qs) < 100; i++ {
		id := uint16(0x1000 + i)
		var edns uint16
		if i%3 == 1 {
			edns = 1232
		}
		switch {
		case i%10 == 9:
			qs = append(qs, tcpQuery(t, fmt.Sprintf("host%d.example.", i), dns.TypeA, id, edns)) // refused
		case i%10 == 8:
			qs = append(qs, tcpQuery(t, fmt.Sprintf("nx-%d.%s", i, testenv.Zone), dns.TypeAAAA, id, edns))
		default:
			s := served[i%len(served)]
			qs = append(qs, tcpQuery(t, s.Name, s.Type, id, edns))
		}
	}
	direct := dialTCPDNS(t, u.Addr4).pipeline(qs)
	proxied := dialTCPDNS(t, listen).pipeline(qs)
	var big int
	for _, q := range qs {
		id := binary.BigEndian.Uint16(q)
		d, p := direct[id], proxied[id]
		if p == nil {
			t.Fatalf("no answer through tapproxy for ID %#04x", id)
		}
		if !bytes.Equal(d[2:], p[2:]) {
			t.Fatalf("ID %#04x: answer through tapproxy differs from Unbound's\ndirect  %x\nproxied %x", id, d, p)
		}
		if len(p) > 4000 {
			big++
		}
	}
	if big == 0 {
		t.Fatal("no big answer among the 100 (the test lost its point)")
	}

	// The TXT that does not fit UDP: truncated over UDP, whole over TCP.
	uq := tcpQuery(t, testenv.BigTXT, dns.TypeTXT, 0xbeef, 1232)
	uc, err := net.Dial("udp", listen.String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	_ = uc.SetDeadline(time.Now().Add(tcpBound))
	if _, err := uc.Write(uq); err != nil {
		t.Fatal(err)
	}
	ub := make([]byte, 65536)
	n, err := uc.Read(ub)
	if err != nil {
		t.Fatal(err)
	}
	var um, tm dns.Msg
	if err := um.Unpack(ub[:n]); err != nil || !um.Truncated {
		t.Fatalf("big TXT over UDP: want TC=1 (err %v)", err)
	}
	tc := dialTCPDNS(t, listen)
	tc.send(uq)
	tb := tc.recv()
	if err := tm.Unpack(tb); err != nil || tm.Truncated || len(tm.Answer) != 40 {
		t.Fatalf("big TXT over TCP: truncated=%v answers=%d err=%v, want 40 records whole", tm.Truncated, len(tm.Answer), err)
	}
	dc := dialTCPDNS(t, u.Addr4)
	dc.send(uq)
	if db := dc.recv(); !bytes.Equal(db, tb) {
		t.Fatal("big TXT over TCP differs from Unbound's")
	}

	// dig and kdig, the same command against Unbound and tapproxy.
	for _, tool := range []struct {
		name string
		args func(a netip.AddrPort, name, qtype string) []string
	}{
		{"dig", func(a netip.AddrPort, name, qtype string) []string {
			return []string{"+tcp", "+nocookie", "+tries=1", "+time=5", "-p", fmt.Sprint(a.Port()), "@" + a.Addr().String(), name, qtype}
		}},
		{"kdig", func(a netip.AddrPort, name, qtype string) []string {
			return []string{"+tcp", "+retry=0", "+time=5", "-p", fmt.Sprint(a.Port()), "@" + a.Addr().String(), name, qtype}
		}},
	} {
		for _, q := range []struct{ name, qtype string }{
			{"www." + testenv.Zone, "A"}, {testenv.BigTXT, "TXT"}, {"nope." + testenv.Zone, "AAAA"}, {testenv.MultiA, "A"},
		} {
			d := normDig(runTool(t, tool.name, tool.args(u.Addr4, q.name, q.qtype)...))
			p := normDig(runTool(t, tool.name, tool.args(listen, q.name, q.qtype)...))
			if d != p {
				t.Fatalf("%s +tcp %s %s: output through tapproxy differs\ndirect:\n%s\nproxied:\n%s", tool.name, q.name, q.qtype, d, p)
			}
		}
	}

	c := tp.Stop()
	checkTCPCounters(t, c)
	const tcpQueries = 100 + 1 + 2*4 // pipelined, big TXT, dig and kdig
	testenv.WantCounters(t, c, counters(
		"tcp_handled", tcpQueries, "tcp_forwarded", tcpQueries, "tcp_answered", tcpQueries,
		"tcp_resp_matched", tcpQueries, "tcp_timed_out", 0, "tcp_reply_failed", 0, "tcp_retried", 0,
		"received", 1, "answered", 1,
	))
}

// axfr asks for a zone transfer over TCP and returns every message up to
// the one that carries the closing SOA.
func axfr(t *testing.T, to netip.AddrPort, q []byte) [][]byte {
	t.Helper()
	c := dialTCPDNS(t, to)
	c.send(q)
	var msgs [][]byte
	soas := 0
	for soas < 2 {
		b := c.recv()
		msgs = append(msgs, b)
		var m dns.Msg
		if err := m.Unpack(b); err != nil {
			t.Fatalf("transfer message %d: %v", len(msgs), err)
		}
		if m.Rcode != dns.RcodeSuccess {
			t.Fatalf("transfer refused: %s", dns.RcodeToString[m.Rcode])
		}
		for _, rr := range m.Answer {
			if rr.Header().Rrtype == dns.TypeSOA {
				soas++
			}
		}
	}
	return msgs
}

// TestTCPNamedAXFR: an AXFR (and an IXFR answered in full) from a real BIND
// through tapproxy equals the one taken directly, message by message, ID
// aside. BIND is made to split the transfer into many messages.
func TestTCPNamedAXFR(t *testing.T) {
	n := testenv.StartNamed(t, testenv.NamedOptions{ExtraOptions: "\ttransfer-message-size 512;\n"})
	listen := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(testenv.FreePort(t, "ip4")))
	tp := testenv.StartTapproxy(t, "--listen", listen.String(), "--upstream", n.Addr4.String(),
		"--workers", "1", "--timeout", "2s")

	q := tcpQuery(t, testenv.Zone, dns.TypeAXFR, 0x5151, 0)
	direct, proxied := axfr(t, n.Addr4, q), axfr(t, listen, q)
	if len(direct) < 3 {
		t.Fatalf("BIND sent the transfer in %d message(s); the test needs several", len(direct))
	}
	if len(direct) != len(proxied) {
		t.Fatalf("%d messages directly, %d through tapproxy", len(direct), len(proxied))
	}
	for k := range direct {
		if binary.BigEndian.Uint16(proxied[k]) != 0x5151 {
			t.Fatalf("message %d carries ID %#04x, want the query's", k, binary.BigEndian.Uint16(proxied[k]))
		}
		if !bytes.Equal(direct[k][2:], proxied[k][2:]) {
			t.Fatalf("message %d differs\ndirect  %x\nproxied %x", k, direct[k], proxied[k])
		}
	}

	// IXFR from serial 1 with no journal: BIND answers AXFR-style.
	m := new(dns.Msg)
	m.SetIxfr(testenv.Zone, 1, "ns1."+testenv.Zone, "hostmaster."+testenv.Zone)
	m.Id = 0x6161
	iq, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	di, pi := axfr(t, n.Addr4, iq), axfr(t, listen, iq)
	if len(di) != len(pi) {
		t.Fatalf("IXFR: %d messages directly, %d through tapproxy", len(di), len(pi))
	}
	for k := range di {
		if !bytes.Equal(di[k][2:], pi[k][2:]) {
			t.Fatalf("IXFR message %d differs", k)
		}
	}

	// dig's view of the transfer is the same too.
	args := func(a netip.AddrPort) []string {
		return []string{"+nocookie", "+tries=1", "+time=5", "-p", fmt.Sprint(a.Port()), "@" + a.Addr().String(), testenv.Zone, "AXFR"}
	}
	if d, p := normDig(runTool(t, "dig", args(n.Addr4)...)), normDig(runTool(t, "dig", args(listen)...)); d != p {
		t.Fatalf("dig AXFR through tapproxy differs\ndirect:\n%s\nproxied:\n%s", d, p)
	}

	c := tp.Stop()
	checkTCPCounters(t, c)
	msgs := uint64(len(proxied) + len(pi))
	testenv.WantCounters(t, c, counters("tcp_xfr", 3, "tcp_answered", 3, "tcp_upstream_closed", 0, "tcp_timed_out", 0,
		"tcp_up_closed_xfr_done", 3))
	if got := c["tcp_xfr_messages"]; got < msgs+1 {
		t.Errorf("tcp_xfr_messages = %d, want at least %d", got, msgs+1)
	}
}
