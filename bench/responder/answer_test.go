package responder

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func mustZone(t testing.TB, name string) *Zone {
	t.Helper()
	z, err := NewZone(name)
	if err != nil {
		t.Fatalf("NewZone(%q): %v", name, err)
	}
	return z
}

// query packs a query built with miekg/dns.
func query(t testing.TB, name string, qtype uint16, edit func(*dns.Msg)) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0xBEEF
	if edit != nil {
		edit(m)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("packing query %s: %v", name, err)
	}
	return b
}

func TestAnswer(t *testing.T) {
	z := mustZone(t, "bench.test.")
	soa := func(t *testing.T, ns []dns.RR) {
		t.Helper()
		if len(ns) != 1 {
			t.Fatalf("authority = %v, want one SOA", ns)
		}
		s, ok := ns[0].(*dns.SOA)
		if !ok {
			t.Fatalf("authority = %v, want SOA", ns[0])
		}
		if s.Hdr.Name != "bench.test." || s.Ns != "ns.bench.test." || s.Mbox != "hostmaster.bench.test." ||
			s.Serial != 1 || s.Minttl != 300 {
			t.Errorf("SOA = %v", s)
		}
	}
	cases := []struct {
		name    string
		qname   string
		qtype   uint16
		edit    func(*dns.Msg)
		outcome Outcome
		rcode   int
		aa      bool
		check   func(*testing.T, *dns.Msg)
	}{
		{name: "A", qname: "www.bench.test.", qtype: dns.TypeA, outcome: Answered, aa: true,
			check: func(t *testing.T, m *dns.Msg) {
				a := m.Answer[0].(*dns.A)
				if !a.A.Equal(net.IPv4(192, 0, 2, 1)) || a.Hdr.Ttl != 300 || a.Hdr.Name != "www.bench.test." {
					t.Errorf("A = %v", a)
				}
			}},
		{name: "AAAA", qname: "x.y.bench.test.", qtype: dns.TypeAAAA, outcome: Answered, aa: true,
			check: func(t *testing.T, m *dns.Msg) {
				a := m.Answer[0].(*dns.AAAA)
				if !a.AAAA.Equal(net.ParseIP("2001:db8::1")) || a.Hdr.Name != "x.y.bench.test." {
					t.Errorf("AAAA = %v", a)
				}
			}},
		{name: "TXT", qname: "t.bench.test.", qtype: dns.TypeTXT, outcome: Answered, aa: true,
			check: func(t *testing.T, m *dns.Msg) {
				if txt := m.Answer[0].(*dns.TXT); len(txt.Txt) != 1 || txt.Txt[0] != "bench" {
					t.Errorf("TXT = %v", txt)
				}
			}},
		{name: "apex A", qname: "bench.test.", qtype: dns.TypeA, outcome: Answered, aa: true},
		{name: "mixed case keeps the client's case", qname: "WwW.BeNcH.TeSt.", qtype: dns.TypeA, outcome: Answered, aa: true,
			check: func(t *testing.T, m *dns.Msg) {
				if m.Answer[0].Header().Name != "WwW.BeNcH.TeSt." {
					t.Errorf("owner = %q", m.Answer[0].Header().Name)
				}
			}},
		{name: "NXDOMAIN", qname: "a.nx.bench.test.", qtype: dns.TypeA, outcome: NXDomain, rcode: dns.RcodeNameError, aa: true,
			check: func(t *testing.T, m *dns.Msg) { soa(t, m.Ns) }},
		{name: "NXDOMAIN at nx", qname: "NX.bench.test.", qtype: dns.TypeAAAA, outcome: NXDomain, rcode: dns.RcodeNameError, aa: true,
			check: func(t *testing.T, m *dns.Msg) { soa(t, m.Ns) }},
		{name: "xnx is not nx", qname: "xnx.bench.test.", qtype: dns.TypeA, outcome: Answered, aa: true},
		{name: "NODATA MX", qname: "www.bench.test.", qtype: dns.TypeMX, outcome: NoData, aa: true,
			check: func(t *testing.T, m *dns.Msg) { soa(t, m.Ns) }},
		{name: "outside", qname: "www.example.com.", qtype: dns.TypeA, outcome: Refused, rcode: dns.RcodeRefused},
		{name: "label boundary", qname: "xbench.test.", qtype: dns.TypeA, outcome: Refused, rcode: dns.RcodeRefused},
		{name: "parent", qname: "test.", qtype: dns.TypeA, outcome: Refused, rcode: dns.RcodeRefused},
		{name: "root", qname: ".", qtype: dns.TypeNS, outcome: Refused, rcode: dns.RcodeRefused},
		{name: "class CH", qname: "www.bench.test.", qtype: dns.TypeTXT, outcome: Refused, rcode: dns.RcodeRefused,
			edit: func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }},
		{name: "EDNS echoed with DO", qname: "www.bench.test.", qtype: dns.TypeA, outcome: Answered, aa: true,
			edit: func(m *dns.Msg) { m.SetEdns0(4096, true) },
			check: func(t *testing.T, m *dns.Msg) {
				o := m.IsEdns0()
				if o == nil || !o.Do() || o.UDPSize() != 1232 || o.Version() != 0 || len(o.Option) != 0 {
					t.Errorf("OPT = %v", o)
				}
			}},
		{name: "EDNS without DO", qname: "www.nx.bench.test.", qtype: dns.TypeA, outcome: NXDomain, rcode: dns.RcodeNameError, aa: true,
			edit: func(m *dns.Msg) {
				m.SetEdns0(1232, false)
				m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
			},
			check: func(t *testing.T, m *dns.Msg) {
				if o := m.IsEdns0(); o == nil || o.Do() || len(o.Option) != 0 {
					t.Errorf("OPT = %v", o)
				}
				soa(t, m.Ns)
			}},
		{name: "EDNS version 1", qname: "www.bench.test.", qtype: dns.TypeA, outcome: BadVers, rcode: dns.RcodeBadVers,
			edit: func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) }},
		{name: "RD and CD copied", qname: "www.bench.test.", qtype: dns.TypeA, outcome: Answered, aa: true,
			edit: func(m *dns.Msg) { m.RecursionDesired = true; m.CheckingDisabled = true },
			check: func(t *testing.T, m *dns.Msg) {
				if !m.RecursionDesired || !m.CheckingDisabled || m.RecursionAvailable {
					t.Errorf("flags: rd=%v cd=%v ra=%v", m.RecursionDesired, m.CheckingDisabled, m.RecursionAvailable)
				}
			}},
		{name: "RD clear stays clear", qname: "www.bench.test.", qtype: dns.TypeA, outcome: Answered, aa: true,
			edit: func(m *dns.Msg) { m.RecursionDesired = false },
			check: func(t *testing.T, m *dns.Msg) {
				if m.RecursionDesired {
					t.Error("RD set")
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := query(t, tc.qname, tc.qtype, tc.edit)
			dst := make([]byte, MaxAnswerLen)
			n, o := z.Answer(dst, q)
			if o != tc.outcome {
				t.Fatalf("outcome = %v, want %v", o, tc.outcome)
			}
			var m dns.Msg
			if err := m.Unpack(dst[:n]); err != nil {
				t.Fatalf("answer does not unpack: %v\n% x", err, dst[:n])
			}
			var qm dns.Msg
			if err := qm.Unpack(q); err != nil {
				t.Fatal(err)
			}
			if m.Id != 0xBEEF || !m.Response || m.Opcode != dns.OpcodeQuery {
				t.Errorf("header: id=%#x qr=%v opcode=%d", m.Id, m.Response, m.Opcode)
			}
			if m.Rcode != tc.rcode {
				t.Errorf("rcode = %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.rcode])
			}
			if m.Authoritative != tc.aa {
				t.Errorf("AA = %v, want %v", m.Authoritative, tc.aa)
			}
			if len(m.Question) != 1 || m.Question[0] != qm.Question[0] {
				t.Errorf("question = %v, want %v", m.Question, qm.Question)
			}
			if !bytes.Equal(dst[12:12+len(tc.qname)+5], q[12:12+len(tc.qname)+5]) && tc.qname != "." {
				t.Errorf("question bytes differ from the query's")
			}
			if wantAns := tc.outcome == Answered; (len(m.Answer) == 1) != wantAns || len(m.Answer) > 1 {
				t.Errorf("answer = %v", m.Answer)
			}
			if (m.IsEdns0() != nil) != (qm.IsEdns0() != nil) {
				t.Errorf("OPT in answer = %v, in query = %v", m.IsEdns0() != nil, qm.IsEdns0() != nil)
			}
			if tc.check != nil {
				tc.check(t, &m)
			}
		})
	}
}

func TestAnswerBadInput(t *testing.T) {
	z := mustZone(t, "bench.test")
	good := query(t, "www.bench.test.", dns.TypeA, nil)
	mod := func(f func([]byte) []byte) []byte { return f(bytes.Clone(good)) }
	withOPTs := func(n int) []byte {
		b := bytes.Clone(good)
		for range n {
			b = append(b, 0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 0)
		}
		b[11] = byte(n)
		return b
	}
	cases := []struct {
		name    string
		msg     []byte
		dstLen  int
		outcome Outcome
		rcode   int // checked when an answer is sent
	}{
		{name: "empty", msg: nil, outcome: DropShort},
		{name: "11 bytes", msg: good[:11], outcome: DropShort},
		{name: "QR set", msg: mod(func(b []byte) []byte { b[2] |= 0x80; return b }), outcome: DropQR},
		{name: "small dst", msg: good, dstLen: MaxAnswerLen - 1, outcome: DropNoRoom},
		{name: "header only", msg: good[:12], outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "QDCOUNT 0", msg: mod(func(b []byte) []byte { b[5] = 0; return b }), outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "QDCOUNT 2", msg: mod(func(b []byte) []byte { b[5] = 2; return b }), outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "opcode STATUS", msg: mod(func(b []byte) []byte { b[2] |= 2 << 3; return b }), outcome: NotImp, rcode: dns.RcodeNotImplemented},
		{name: "name cut", msg: good[:15], outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "no root label", msg: good[:12+len("www.bench.test")+1], outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "qtype cut", msg: good[:len(good)-1], outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "pointer in question", msg: append(bytes.Clone(good[:12]), 0xC0, 12, 0, 1, 0, 1), outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "label type 0x40", msg: append(bytes.Clone(good[:12]), 0x41, 'a', 0, 0, 1, 0, 1), outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "two OPTs", msg: withOPTs(2), outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "one OPT", msg: withOPTs(1), outcome: Answered},
		{name: "ARCOUNT without record", msg: mod(func(b []byte) []byte { b[11] = 1; return b }), outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "OPT rdata cut", msg: func() []byte { b := withOPTs(1); b[len(b)-1] = 4; return b }(), outcome: FormErr, rcode: dns.RcodeFormatError},
		{name: "trailing junk ignored", msg: append(bytes.Clone(good), 1, 2, 3), outcome: Answered},
		{name: "long name", msg: func() []byte {
			m := new(dns.Msg)
			m.SetQuestion(strings.Repeat(strings.Repeat("a", 60)+".", 3)+strings.Repeat("b", 52)+".bench.test.", dns.TypeTXT)
			m.Id = 0xBEEF
			b, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			return b
		}(), outcome: Answered},
		{name: "name over 255 octets", msg: func() []byte {
			b := bytes.Clone(good[:12])
			for range 5 {
				b = append(b, 63)
				b = append(b, bytes.Repeat([]byte{'a'}, 63)...)
			}
			return append(b, 0, 0, 1, 0, 1)
		}(), outcome: FormErr, rcode: dns.RcodeFormatError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dl := tc.dstLen
			if dl == 0 {
				dl = MaxAnswerLen
			}
			dst := make([]byte, dl)
			n, o := z.Answer(dst, tc.msg)
			if o != tc.outcome {
				t.Fatalf("outcome = %v, want %v", o, tc.outcome)
			}
			drop := o == DropShort || o == DropQR || o == DropNoRoom
			if drop != (n == 0) {
				t.Fatalf("n = %d for outcome %v", n, o)
			}
			if drop {
				return
			}
			var m dns.Msg
			if err := m.Unpack(dst[:n]); err != nil {
				t.Fatalf("answer does not unpack: %v", err)
			}
			if m.Rcode != tc.rcode || !m.Response || m.Id != 0xBEEF {
				t.Errorf("rcode=%s qr=%v id=%#x", dns.RcodeToString[m.Rcode], m.Response, m.Id)
			}
		})
	}
}

func TestNewZone(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []byte
		err  bool
	}{
		{in: "bench.test.", want: []byte("\x05bench\x04test\x00")},
		{in: "Bench.Test", want: []byte("\x05bench\x04test\x00")},
		{in: ".", want: []byte{0}},
		{in: "a..b", err: true},
		{in: strings.Repeat("a", 64) + ".test", err: true},
		{in: strings.Repeat("abcdefg.", 32), err: true},
		{in: `a\.b.test`, err: true},
	} {
		z, err := NewZone(tc.in)
		if tc.err {
			if !errors.Is(err, ErrZone) {
				t.Errorf("NewZone(%q) err = %v, want ErrZone", tc.in, err)
			}
			continue
		}
		if err != nil || !bytes.Equal(z.apex, tc.want) {
			t.Errorf("NewZone(%q) = %q, %v; want %q", tc.in, z.apex, err, tc.want)
		}
	}
}

// TestAnswerAllocs makes "no allocation per packet" a test.
func TestAnswerAllocs(t *testing.T) {
	z := mustZone(t, DefaultZone)
	queries := [][]byte{
		query(t, "www.bench.test.", dns.TypeA, nil),
		query(t, "www.bench.test.", dns.TypeAAAA, func(m *dns.Msg) { m.SetEdns0(1232, true) }),
		query(t, "x.nx.bench.test.", dns.TypeA, nil),
		query(t, "example.com.", dns.TypeA, nil),
		{1, 2, 3},
	}
	dst := make([]byte, MaxAnswerLen)
	allocs := testing.AllocsPerRun(1000, func() {
		for _, q := range queries {
			z.Answer(dst, q)
		}
	})
	if allocs != 0 {
		t.Fatalf("Answer allocates %.1f times per run, want 0", allocs)
	}
}

// FuzzAnswer: any input gets one outcome, never a panic; every answer sent
// unpacks with miekg/dns and carries the query's ID.
func FuzzAnswer(f *testing.F) {
	z := mustZone(f, DefaultZone)
	f.Add(query(f, "www.bench.test.", dns.TypeA, nil))                                            // plain A
	f.Add(query(f, "a.nx.bench.test.", dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(1232, true) })) // NXDOMAIN + OPT
	f.Add(query(f, "example.", dns.TypeA, nil))                                                   // refused
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1})                       // pointer loop
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 1, 0, 1, 0, 0, 41})                    // cut OPT
	dst := make([]byte, MaxAnswerLen)
	f.Fuzz(func(t *testing.T, msg []byte) {
		n, o := z.Answer(dst, msg)
		if o >= NumOutcomes {
			t.Fatalf("outcome %d out of range", o)
		}
		if n > MaxAnswerLen {
			t.Fatalf("n = %d > MaxAnswerLen", n)
		}
		if n == 0 {
			if o != DropShort && o != DropQR {
				t.Fatalf("no answer for outcome %v", o)
			}
			return
		}
		var m dns.Msg
		if err := m.Unpack(dst[:n]); err != nil {
			t.Fatalf("outcome %v: answer does not unpack: %v\nquery % x\nanswer % x", o, err, msg, dst[:n])
		}
		if m.Id != uint16(msg[0])<<8|uint16(msg[1]) || !m.Response {
			t.Fatalf("id %#x qr %v", m.Id, m.Response)
		}
	})
}

func BenchmarkAnswer(b *testing.B) {
	z := mustZone(b, DefaultZone)
	for _, bc := range []struct {
		name string
		q    []byte
	}{
		{"A", query(b, "host-12345.bench.test.", dns.TypeA, nil)},
		{"AAAA+EDNS", query(b, "host-12345.bench.test.", dns.TypeAAAA, func(m *dns.Msg) { m.SetEdns0(1232, false) })},
		{"NXDOMAIN", query(b, "host-12345.nx.bench.test.", dns.TypeA, nil)},
		{"REFUSED", query(b, "host-12345.example.com.", dns.TypeA, nil)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dst := make([]byte, MaxAnswerLen)
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.q)))
			for b.Loop() {
				z.Answer(dst, bc.q)
			}
		})
	}
}
