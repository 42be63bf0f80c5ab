package e2e

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// rawQuery builds a query by hand: header with the given flags and counts,
// then body verbatim.
func rawQuery(id, flags, qd, an, ns, ar uint16, body ...[]byte) []byte {
	b := make([]byte, 12)
	for i, v := range []uint16{id, flags, qd, an, ns, ar} {
		binary.BigEndian.PutUint16(b[2*i:], v)
	}
	for _, p := range body {
		b = append(b, p...)
	}
	return b
}

// wireName encodes a dotted name without compression; labels are not
// checked, so it can build illegal names.
func wireName(name string) []byte {
	var b []byte
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0)
}

var typeA = []byte{0, 1, 0, 1} // QTYPE A, QCLASS IN

const rd = 0x0100

// TestMalformedQueriesForwardedVerbatim: tapproxy must never reject or
// alter a query it does not understand. Each one reaches the upstream byte
// for byte apart from the ID, is flagged malformed when its question does
// not parse, and the upstream's answer (a header-only FORMERR, as servers
// send for what they cannot parse) reaches the client with its own ID.
func TestMalformedQueriesForwardedVerbatim(t *testing.T) {
	www := wireName("www.tapproxy.test")
	tests := []struct {
		name        string
		q           []byte
		unparseable bool // the question does not parse: counted as malformed
	}{
		{"compression loop", rawQuery(1, rd, 1, 0, 0, 0, []byte{0xC0, 12}, typeA), true},
		{"forward pointer", rawQuery(2, rd, 1, 0, 0, 0, []byte{0xC0, 20, 0, 1, 0, 1, 3, 'w', 'w', 'w', 0}), true},
		{"label over 63", rawQuery(3, rd, 1, 0, 0, 0, wireName(strings.Repeat("a", 64)+".test"), typeA), true},
		{"name over 255", rawQuery(4, rd, 1, 0, 0, 0, wireName(strings.Repeat(strings.Repeat("b", 63)+".", 4)+"test"), typeA), true},
		{"reserved label type", rawQuery(5, rd, 1, 0, 0, 0, []byte{0x80, 'x', 0}, typeA), true},
		{"qdcount 0", rawQuery(6, rd, 0, 0, 0, 0), true},
		{"qdcount 0 with a question", rawQuery(7, rd, 0, 0, 0, 0, www, typeA), true},
		{"qdcount 2", rawQuery(8, rd, 2, 0, 0, 0, www, typeA, wireName("mail.tapproxy.test"), typeA), true},
		{"question cut short", rawQuery(9, rd, 1, 0, 0, 0, []byte{3, 'w', 'w', 'w', 8, 't', 'a', 'p'}), true},
		{"type and class missing", rawQuery(10, rd, 1, 0, 0, 0, www), true},
		{"class cut short", rawQuery(11, rd, 1, 0, 0, 0, www, []byte{0, 1, 0}), true},
		{"trailing junk", rawQuery(12, rd, 1, 0, 0, 0, www, typeA, []byte("junk after the question")), false},
		{"counts claim records that are absent", rawQuery(13, rd, 1, 5, 5, 5, www, typeA), false},
		{"unknown opcode and Z bit", rawQuery(14, 15<<11|0x0040|rd, 1, 0, 0, 0, www, typeA), false},
		{"header only, qdcount 1", rawQuery(15, rd, 1, 0, 0, 0), true},
	}
	fake, tp, listen := proxyWithFake(t, func(q []byte, _ netip.AddrPort, reply func([]byte), _ func(int, []byte)) {
		reply(testenv.HeaderOnlyReply(q, dns.RcodeFormatError))
	}, "--timeout", "2s")
	c := newClient(t, "127.0.0.1")
	var unparseable int
	for i, tc := range tests {
		if tc.unparseable {
			unparseable++
		}
		r := c.exchange(listen, tc.q)
		got := fake.WaitReceived(t, i+1, answerWait)[i].Data
		if len(got) != len(tc.q) || !bytes.Equal(got[2:], tc.q[2:]) {
			t.Errorf("%s: upstream got\n%x\nwant the client's query apart from the ID\n%x", tc.name, got, tc.q)
		}
		if want := testenv.HeaderOnlyReply(tc.q, dns.RcodeFormatError); !bytes.Equal(r, want) {
			t.Errorf("%s: client got %x, want the upstream's FORMERR with the client's ID %x", tc.name, r, want)
		}
	}
	n := len(tests)
	cnt := tp.Stop()
	c.expectNothing("after the malformed queries")
	testenv.WantCounters(t, cnt, counters(
		"received", n, "forwarded", n, "answered", n, "resp_matched", n, "resp_received", n,
		"malformed", unparseable, "dropped_short", 0, "dropped_qr", 0,
	))
}

// TestRuntsAndResponsesNeverForwarded: datagrams shorter than a header and
// messages with QR=1 on the client socket are dropped and counted, never
// forwarded and never answered (answering a response invites reflection
// loops). A normal query sent after them from the same client is the
// signal that they were handled: with one worker, datagrams are handled in
// arrival order.
func TestRuntsAndResponsesNeverForwarded(t *testing.T) {
	fake, tp, listen := proxyWithFake(t, answerAll("192.0.2.4"), "--timeout", "2s")
	c := newClient(t, "127.0.0.1")
	q := query(t, "www."+testenv.Zone, 0x7777)
	runts := [][]byte{{}, {0x77}, q[:2], q[:11]}
	responses := [][]byte{
		testenv.Reply(q, dns.RcodeSuccess),             // a response to our own query
		testenv.HeaderOnlyReply(q, dns.RcodeNameError), // header only, QR=1
	}
	for _, b := range runts {
		c.send(listen, b)
	}
	for _, b := range responses {
		c.send(listen, b)
	}
	r := c.exchange(listen, q)
	if want := answerA(q, "192.0.2.4"); !bytes.Equal(r, want) {
		t.Errorf("client got %x, want %x", r, want)
	}
	if got := fake.Received(); len(got) != 1 || !bytes.Equal(got[0].Data[2:], q[2:]) {
		t.Errorf("upstream got %d datagrams (%x), want only the query", len(got), got)
	}
	cnt := tp.Stop()
	c.expectNothing("runts and responses")
	testenv.WantCounters(t, cnt, counters(
		"received", len(runts)+len(responses)+1, "dropped_short", len(runts), "dropped_qr", len(responses),
		"forwarded", 1, "answered", 1,
	))
}
