package reader

import (
	"slices"
	"strconv"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/miekg/dns"
)

// TestMatchRules exercises each clause of the pairing rule on hand-made
// messages. Each case lists its messages; want is the pairs as
// "queryIndex/responseIndex/rule" (indices into the case's list) and the
// unmatched indices.
func TestMatchRules(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	at := func(us int) time.Time { return t0.Add(time.Duration(us) * time.Microsecond) }
	q1 := dnsQuery(t, 100, "www.example.", dns.TypeA)
	r1 := dnsReply(t, q1, dns.RcodeSuccess)
	q1AAAA := dnsQuery(t, 100, "www.example.", dns.TypeAAAA)
	q1Upper := dnsQuery(t, 100, "WWW.Example.", dns.TypeA)
	q2 := dnsQuery(t, 200, "www.example.", dns.TypeA)
	r2 := dnsReply(t, q2, dns.RcodeSuccess)
	notQR := append([]byte{}, r1...)
	notQR[2] &^= 0x80

	cq := func(qmsg []byte, qt time.Time, port uint32) spec {
		return spec{typ: dnstap.Message_CLIENT_QUERY, proto: dnstap.SocketProtocol_UDP, qaddr: "127.0.0.1", qport: port, raddr: "127.0.0.1", rport: 53, qt: qt, qmsg: qmsg}
	}
	cr := func(rmsg []byte, rt time.Time, port uint32) spec {
		return spec{typ: dnstap.Message_CLIENT_RESPONSE, proto: dnstap.SocketProtocol_UDP, qaddr: "127.0.0.1", qport: port, raddr: "127.0.0.1", rport: 53, rt: rt, rmsg: rmsg}
	}
	with := func(s spec, f func(*spec)) spec { f(&s); return s }
	ann := func(seq int) []byte { return []byte("tapproxy/1 seq=" + strconv.Itoa(seq)) }

	tests := []struct {
		name   string
		msgs   []spec
		pairs  []string
		uq, ur []int
	}{
		{"simple", []spec{cq(q1, at(0), 1000), cr(r1, at(10), 1000)}, []string{"0/1/question"}, nil, nil},
		{"response first in the file", []spec{cr(r1, at(10), 1000), cq(q1, at(0), 1000)}, []string{"1/0/question"}, nil, nil},
		{"named cached clock: equal times", []spec{cq(q1, at(5), 1000), cr(r1, at(5), 1000)}, []string{"0/1/question"}, nil, nil},
		{"response before query is not its answer", []spec{cq(q1, at(10), 1000), cr(r1, at(9), 1000)}, nil, []int{0}, []int{1}},
		{"other port", []spec{cq(q1, at(0), 1000), cr(r1, at(1), 1001)}, nil, []int{0}, []int{1}},
		{"other protocol", []spec{cq(q1, at(0), 1000), with(cr(r1, at(1), 1000), func(s *spec) { s.proto = dnstap.SocketProtocol_TCP })}, nil, []int{0}, []int{1}},
		{"other response address", []spec{cq(q1, at(0), 1000), with(cr(r1, at(1), 1000), func(s *spec) { s.raddr = "127.0.0.2" })}, nil, []int{0}, []int{1}},
		{"other ID", []spec{cq(q2, at(0), 1000), cr(r1, at(1), 1000)}, nil, []int{0}, []int{1}},
		{"other question", []spec{cq(q1AAAA, at(0), 1000), cr(r1, at(1), 1000)}, nil, []int{0}, []int{1}},
		{"question case-insensitive (RFC 5452 §9.1)", []spec{cq(q1Upper, at(0), 1000), cr(r1, at(1), 1000)}, []string{"0/1/question"}, nil, nil},
		{"QR=0 response refused", []spec{cq(q1, at(0), 1000), cr(notQR, at(1), 1000)}, nil, []int{0}, []int{1}},
		{"header-only answer pairs on ID", []spec{cq(q1, at(0), 1000), cr(headerOnly(100, dns.RcodeNotImplemented), at(1), 1000)}, []string{"0/1/id"}, nil, nil},
		{"malformed query pairs on ID", []spec{cq([]byte{0, 100, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63}, at(0), 1000), cr(r1, at(1), 1000)}, []string{"0/1/id"}, nil, nil},
		{"short query never pairs", []spec{cq([]byte{0, 100, 1}, at(0), 1000), cr(r1, at(1), 1000)}, nil, []int{0}, []int{1}},
		{"cross-type (named AUTH_QUERY/CLIENT_RESPONSE)", []spec{with(cq(q1, at(0), 1000), func(s *spec) { s.typ = dnstap.Message_AUTH_QUERY }), cr(r1, at(0), 1000)}, []string{"0/1/question"}, nil, nil},
		{"retransmission: earliest query wins", []spec{cq(q1, at(5), 1000), cq(q1, at(0), 1000), cr(r1, at(10), 1000)}, []string{"1/2/question"}, []int{0}, nil},
		{"two answers to two copies", []spec{cr(r1, at(20), 1000), cq(q1, at(5), 1000), cr(r1, at(10), 1000), cq(q1, at(0), 1000)}, []string{"3/2/question", "1/0/question"}, nil, nil},
		{"second copy sent after the first answer", []spec{cq(q1, at(0), 1000), cr(r1, at(10), 1000), cq(q1, at(15), 1000), cr(r1, at(20), 1000)}, []string{"0/1/question", "2/3/question"}, nil, nil},
		{"absent times do not block", []spec{cq(q1, time.Time{}, 1000), cr(r1, time.Time{}, 1000)}, []string{"0/1/question"}, nil, nil},
		{"kdig: same ID on UDP and TCP", []spec{
			cq(q1, at(0), 1000), cr(r1, at(10), 1000),
			with(cq(q1, at(20), 1000), func(s *spec) { s.proto = dnstap.SocketProtocol_TCP }),
			with(cr(r1, at(30), 1000), func(s *spec) { s.proto = dnstap.SocketProtocol_TCP }),
		}, []string{"0/1/question", "2/3/question"}, nil, nil},
		{"unbound: TCP port 0 on both", []spec{with(cq(q1, at(0), 0), func(s *spec) { s.typ = dnstap.Message_RESOLVER_QUERY }), with(cr(r1, at(1), 0), func(s *spec) { s.typ = dnstap.Message_RESOLVER_RESPONSE })}, []string{"0/1/question"}, nil, nil},
		{"response with both times, earlier own query_time (unbound)", []spec{cq(q1, at(10), 1000), with(cr(r1, at(20), 1000), func(s *spec) { s.qt = at(5) })}, []string{"0/1/question"}, nil, nil},
		{"tapproxy seq pairs across IDs", []spec{
			with(cq(q1, at(0), 1000), func(s *spec) { s.extra = ann(7) }),
			with(cr(r2, at(1), 1000), func(s *spec) { s.extra = ann(7) }),
		}, []string{"0/1/seq"}, nil, nil},
		{"tapproxy seq keeps same-ID transactions apart", []spec{
			with(cq(q1, at(0), 1000), func(s *spec) { s.extra = ann(1) }),
			with(cq(q1, at(1), 1000), func(s *spec) { s.extra = ann(2) }),
			with(cr(r1, at(5), 1000), func(s *spec) { s.extra = ann(2) }),
		}, []string{"1/2/seq"}, []int{0}, nil},
		{"tapproxy seq still needs the same endpoints", []spec{
			with(cq(q1, at(0), 1000), func(s *spec) { s.extra = ann(3) }),
			with(cr(r1, at(1), 2000), func(s *spec) { s.extra = ann(3) }),
		}, nil, []int{0}, []int{1}},
		{"one annotated side falls back to ID and question", []spec{
			with(cq(q1, at(0), 1000), func(s *spec) { s.extra = ann(3) }),
			cr(r1, at(1), 1000),
		}, []string{"0/1/question"}, nil, nil},
		{"self-contained response", []spec{with(cr(r1, at(10), 1000), func(s *spec) { s.qmsg, s.qt = q1, at(2) })}, []string{"0/0/self"}, nil, nil},
		{"a separate query takes precedence over self-containment", []spec{cq(q1, at(0), 1000), with(cr(r1, at(10), 1000), func(s *spec) { s.qmsg, s.qt = q1, at(0) })}, []string{"0/1/question"}, nil, nil},
		{"messages without DNS payloads are unmatched", []spec{cq(nil, at(0), 1000), cr(nil, at(1), 1000)}, nil, []int{0}, []int{1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var payloads [][]byte
			for _, s := range tc.msgs {
				payloads = append(payloads, s.marshal(t))
			}
			msgs := messagesOf(t, payloads...)
			pairs, uq, ur := Match(msgs)
			var got []string
			for _, p := range pairs {
				got = append(got, strconv.Itoa(p.Query.Frame)+"/"+strconv.Itoa(p.Response.Frame)+"/"+p.Rule.String())
			}
			if !slices.Equal(got, tc.pairs) {
				t.Errorf("pairs %v, want %v", got, tc.pairs)
			}
			if g := frames(uq); !slices.Equal(g, tc.uq) {
				t.Errorf("unmatched queries %v, want %v", g, tc.uq)
			}
			if g := frames(ur); !slices.Equal(g, tc.ur) {
				t.Errorf("unmatched responses %v, want %v", g, tc.ur)
			}
			// Every message is accounted for exactly once.
			seen := map[int]int{}
			for _, p := range pairs {
				seen[p.Query.Frame]++
				if p.Response != p.Query {
					seen[p.Response.Frame]++
				}
			}
			for _, m := range append(uq, ur...) {
				seen[m.Frame]++
			}
			for i := range msgs {
				if seen[i] != 1 {
					t.Errorf("message %d accounted for %d times", i, seen[i])
				}
			}
			// Pairing does not depend on the order of the input.
			rev := slices.Clone(msgs)
			slices.Reverse(rev)
			rp, _, _ := Match(rev)
			var gotRev []string
			for _, p := range rp {
				gotRev = append(gotRev, strconv.Itoa(p.Query.Frame)+"/"+strconv.Itoa(p.Response.Frame)+"/"+p.Rule.String())
			}
			if !slices.Equal(gotRev, got) {
				t.Errorf("reversed input pairs %v, forward %v", gotRev, got)
			}
		})
	}
}

func frames(ms []*Message) []int {
	var f []int
	for _, m := range ms {
		f = append(f, m.Frame)
	}
	return f
}

// TestMatchLatency: latency is the response's response_time minus the
// query message's query_time; a self-contained pair uses its own two times.
func TestMatchLatency(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	q := dnsQuery(t, 1, "a.example.", dns.TypeA)
	r := dnsReply(t, q, dns.RcodeSuccess)
	msgs := messagesOf(t,
		spec{typ: dnstap.Message_CLIENT_QUERY, qmsg: q, qt: t0}.marshal(t),
		spec{typ: dnstap.Message_CLIENT_RESPONSE, rmsg: r, qt: t0.Add(-time.Second), rt: t0.Add(1500 * time.Microsecond)}.marshal(t),
	)
	pairs, _, _ := Match(msgs)
	if len(pairs) != 1 || !pairs[0].LatencyKnown || pairs[0].Latency != 1500*time.Microsecond {
		t.Fatalf("pairs %+v", pairs)
	}
	msgs = messagesOf(t, spec{typ: dnstap.Message_CLIENT_RESPONSE, qmsg: q, rmsg: r, qt: t0, rt: t0.Add(time.Millisecond)}.marshal(t))
	pairs, _, _ = Match(msgs)
	if len(pairs) != 1 || pairs[0].Rule != SelfContained || pairs[0].Latency != time.Millisecond {
		t.Fatalf("self-contained pairs %+v", pairs)
	}
	msgs = messagesOf(t, spec{typ: dnstap.Message_CLIENT_QUERY, qmsg: q}.marshal(t), spec{typ: dnstap.Message_CLIENT_RESPONSE, rmsg: r, rt: t0}.marshal(t))
	pairs, _, _ = Match(msgs)
	if len(pairs) != 1 || pairs[0].LatencyKnown {
		t.Fatalf("pair without query time: %+v", pairs)
	}
}
