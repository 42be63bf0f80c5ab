package upstream

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/listener"
)

func TestTable(t *testing.T) {
	// Two logical sockets; logical 1 has physical sockets 1 and 2.
	tab := newTable(3, 2, 3)
	var got []int32
	for i := 0; i < 3; i++ {
		s := tab.alloc()
		if s < 0 {
			t.Fatalf("alloc %d failed", i)
		}
		got = append(got, s)
	}
	if tab.alloc() != -1 {
		t.Fatal("full table handed out a slot")
	}
	if tab.inflight() != 3 {
		t.Fatalf("inflight %d", tab.inflight())
	}
	tab.bind(got[0], 1, 1, 0xABCD)
	if tab.idFree(1, 0xABCD) || !tab.idFree(0, 0xABCD) {
		t.Fatal("ID uniqueness is per logical socket")
	}
	if tab.lookup(1, 1, 0xABCD) != got[0] || tab.lookup(0, 0, 0xABCD) != -1 {
		t.Fatal("lookup")
	}
	if tab.lookup(1, 2, 0xABCD) != -1 {
		t.Fatal("an answer on another port of the same logical socket matched")
	}
	if tab.pin[1] != 1 || tab.pin[2] != 0 {
		t.Fatalf("pending per physical socket %v", tab.pin)
	}
	tab.detach(got[0], true)
	if tab.lookup(1, 1, 0xABCD) != -1 || tab.pin[1] != 0 {
		t.Fatal("detached slot still found or counted")
	}
	if tab.takeLate(2, 0xABCD) {
		t.Fatal("late mark is per physical socket")
	}
	if !tab.takeLate(1, 0xABCD) || tab.takeLate(1, 0xABCD) {
		t.Fatal("late mark must be reported once")
	}
	tab.release(got[0])
	if tab.inflight() != 2 || tab.alloc() != got[0] {
		t.Fatal("release did not free the slot")
	}
	// Rebinding an ID that timed out clears its late mark.
	tab.bind(got[1], 1, 1, 0x1111)
	tab.detach(got[1], true)
	tab.bind(got[2], 1, 1, tab.slots[got[1]].id)
	if tab.takeLate(1, tab.slots[got[1]].id) {
		t.Fatal("reused ID still marked late")
	}
}

// classifyWorker is a Worker with one logical socket to up, one physical
// socket, and a table of capacity slots: enough for classify.
func classifyWorker(up netip.AddrPort, capacity int) *Worker {
	return &Worker{socks: []*usock{{upstream: up, phys: []int{0}}}, phys: []*psock{{state: psActive}},
		tab: newTable(capacity, 1, 1)}
}

func pack(t *testing.T, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestClassify walks the RFC 5452 §9.1 acceptance rules.
func TestClassify(t *testing.T) {
	up := netip.MustParseAddrPort("127.0.0.1:5353")
	newW := func(query []byte) (*Worker, uint16) {
		w := classifyWorker(up, 4)
		i := w.tab.alloc()
		sl := &w.tab.slots[i]
		sl.qok = dnswire.ParseQuestion(query, &sl.q) == nil
		sl.query = query
		w.tab.bind(i, 0, 0, 0x1234)
		return w, 0x1234
	}
	q := new(dns.Msg)
	q.SetQuestion("Www.Example.test.", dns.TypeA)
	query := pack(t, q)
	answer := func(name string, qt uint16, id uint16, mut func(*dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qt)
		m.Response = true
		m.Id = id
		if mut != nil {
			mut(m)
		}
		return pack(t, m)
	}
	headerOnly := func(id uint16, rcode int) []byte {
		m := new(dns.Msg)
		m.Id, m.Response, m.Rcode = id, true, rcode
		return pack(t, m)
	}
	malformedQuery := append([]byte(nil), query[:12]...) // QDCOUNT 1, no question
	malformedQuery = append(malformedQuery, 0xC0, 12, 0, 1, 0, 1)
	tests := []struct {
		name  string
		query []byte
		resp  []byte
		from  netip.AddrPort
		want  bool
		count func(*Stats) uint64
	}{
		{"match, other case", query, answer("www.EXAMPLE.test.", dns.TypeA, 0x1234, nil), up, true, func(s *Stats) uint64 { return s.RespMatched.Load() }},
		{"short", query, []byte{0x12, 0x34, 0x80}, up, false, func(s *Stats) uint64 { return s.RespShort.Load() }},
		{"wrong port", query, answer("www.example.test.", dns.TypeA, 0x1234, nil), netip.MustParseAddrPort("127.0.0.1:5354"), false, func(s *Stats) uint64 { return s.RespWrongSource.Load() }},
		{"wrong address", query, answer("www.example.test.", dns.TypeA, 0x1234, nil), netip.MustParseAddrPort("127.0.0.2:5353"), false, func(s *Stats) uint64 { return s.RespWrongSource.Load() }},
		{"not a response", query, query, up, false, func(s *Stats) uint64 { return s.RespNotResponse.Load() }},
		{"unknown id", query, answer("www.example.test.", dns.TypeA, 0x4321, nil), up, false, func(s *Stats) uint64 { return s.RespUnknownID.Load() }},
		{"other name", query, answer("evil.example.test.", dns.TypeA, 0x1234, nil), up, false, func(s *Stats) uint64 { return s.RespQuestionMismatch.Load() }},
		{"other type", query, answer("www.example.test.", dns.TypeAAAA, 0x1234, nil), up, false, func(s *Stats) uint64 { return s.RespQuestionMismatch.Load() }},
		{"other class", query, answer("www.example.test.", dns.TypeA, 0x1234, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), up, false, func(s *Stats) uint64 { return s.RespQuestionMismatch.Load() }},
		{"header-only FORMERR", query, headerOnly(0x1234, dns.RcodeFormatError), up, true, func(s *Stats) uint64 { return s.RespMatched.Load() }},
		{"header-only REFUSED", query, headerOnly(0x1234, dns.RcodeRefused), up, true, func(s *Stats) uint64 { return s.RespMatched.Load() }},
		{"header-only NOERROR is no answer", query, headerOnly(0x1234, dns.RcodeSuccess), up, false, func(s *Stats) uint64 { return s.RespQuestionMismatch.Load() }},
		{"header-only NXDOMAIN is no answer", query, headerOnly(0x1234, dns.RcodeNameError), up, false, func(s *Stats) uint64 { return s.RespQuestionMismatch.Load() }},
		{"malformed query: ID and addresses suffice", malformedQuery, answer("anything.", dns.TypeMX, 0x1234, nil), up, true, func(s *Stats) uint64 { return s.RespMatched.Load() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, _ := newW(tc.query)
			buf := make([]byte, 512)
			n := copy(buf, tc.resp)
			p := &listener.Packet{Buf: buf, N: n, Peer: tc.from}
			var q dnswire.Question
			got := w.classify(0, p, &q) >= 0
			if got != tc.want {
				t.Fatalf("accepted=%v want %v", got, tc.want)
			}
			if tc.count(&w.stats) != 1 {
				t.Fatalf("reason counter not incremented")
			}
		})
	}
	t.Run("late", func(t *testing.T) {
		w, id := newW(query)
		w.tab.detach(w.tab.lookup(0, 0, id), true)
		buf := make([]byte, 512)
		n := copy(buf, answer("www.example.test.", dns.TypeA, id, nil))
		var q dnswire.Question
		if w.classify(0, &listener.Packet{Buf: buf, N: n, Peer: up}, &q) >= 0 || w.stats.RespLate.Load() != 1 {
			t.Fatal("late answer not counted as late")
		}
	})
}

func TestClassifyAllocs(t *testing.T) {
	up := netip.MustParseAddrPort("127.0.0.1:5353")
	w := classifyWorker(up, 4)
	q := new(dns.Msg)
	q.SetQuestion("www.example.test.", dns.TypeA)
	query := pack(t, q)
	i := w.tab.alloc()
	sl := &w.tab.slots[i]
	sl.qok = dnswire.ParseQuestion(query, &sl.q) == nil
	w.tab.bind(i, 0, 0, 7)
	q.Response, q.Id = true, 7
	resp := pack(t, q)
	p := &listener.Packet{Buf: resp, N: len(resp), Peer: up}
	var qq dnswire.Question
	if n := testing.AllocsPerRun(1000, func() { w.classify(0, p, &qq) }); n != 0 {
		t.Fatalf("classify allocates %v", n)
	}
}

func BenchmarkClassify(b *testing.B) {
	up := netip.MustParseAddrPort("127.0.0.1:5353")
	w := classifyWorker(up, 4)
	q := new(dns.Msg)
	q.SetQuestion("www.example.test.", dns.TypeA)
	query, _ := q.Pack()
	i := w.tab.alloc()
	sl := &w.tab.slots[i]
	sl.qok = dnswire.ParseQuestion(query, &sl.q) == nil
	w.tab.bind(i, 0, 0, 7)
	q.Response, q.Id = true, 7
	resp, _ := q.Pack()
	p := &listener.Packet{Buf: resp, N: len(resp), Peer: up}
	var qq dnswire.Question
	b.ReportAllocs()
	for b.Loop() {
		w.classify(0, p, &qq)
	}
}
