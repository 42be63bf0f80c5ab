package upstream

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/listener"
)

// FuzzClassify feeds arbitrary datagrams to the RFC 5452 §9.1 matcher for
// one in-flight query. Whatever the bytes: no panic, exactly one reason
// counter moves, and an accepted datagram is a response with the in-flight
// ID that either repeats the question or is a header-only error answer.
func FuzzClassify(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("www.example.test.", dns.TypeA)
	query, _ := q.Pack()
	// Seeds: the right answer, its mixed-case twin, a header-only FORMERR,
	// a wrong-ID answer, a runt, and the query itself (QR=0).
	q.Response, q.Id = true, 0x1234
	right, _ := q.Pack()
	q.Question[0].Name = "WWW.Example.TEST."
	twin, _ := q.Pack()
	ho := append([]byte{0x12, 0x34, 0x80, 0x01}, make([]byte, 8)...)
	q.Id = 0x4321
	wrongID, _ := q.Pack()
	for _, s := range [][]byte{right, twin, ho, wrongID, {0x12, 0x34, 0x80}, query} {
		f.Add(s)
	}
	up := netip.MustParseAddrPort("127.0.0.1:5353")
	f.Fuzz(func(t *testing.T, b []byte) {
		w := classifyWorker(up, 2)
		i := w.tab.alloc()
		sl := &w.tab.slots[i]
		sl.qok = dnswire.ParseQuestion(query, &sl.q) == nil
		sl.query = query
		w.tab.bind(i, 0, 0, 0x1234)
		buf := make([]byte, len(b)+1)
		n := copy(buf, b)
		var qq dnswire.Question
		got := w.classify(0, &listener.Packet{Buf: buf, N: n, Peer: up}, &qq)
		s := &w.stats
		total := s.RespMatched.Load() + s.RespShort.Load() + s.RespNotResponse.Load() + s.RespWrongSource.Load() +
			s.RespUnknownID.Load() + s.RespLate.Load() + s.RespQuestionMismatch.Load()
		if total != 1 {
			t.Fatalf("%d reason counters moved, want exactly 1", total)
		}
		if got < 0 {
			return
		}
		h, ok := dnswire.ParseHeader(b)
		if !ok || !h.QR() || h.ID != 0x1234 {
			t.Fatalf("accepted a datagram that is not a response with the in-flight ID: % x", b)
		}
		var rq dnswire.Question
		if dnswire.ParseQuestion(b, &rq) == nil && rq.Equal(&sl.q) {
			return
		}
		if h.QDCount == 0 && dnswire.IsErrorRcode(h.Rcode()) {
			return
		}
		t.Fatalf("accepted an answer to another question: % x", b)
	})
}
