package e2e

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// TestBadResponsesBeforeTheAnswer: datagrams that are not an acceptable
// answer (RFC 5452 §9.1: wrong ID, not a response, another question, too
// short) must each be counted and dropped, and must not end the wait: the
// real answer that follows still reaches the client (the CVE-2023-28452
// mistake is to give up on the first bad datagram).
func TestBadResponsesBeforeTheAnswer(t *testing.T) {
	// Each bad datagram is built from the query tapproxy sent upstream and
	// has exactly one fault, so the counter it lands in is certain.
	wrongID := func(q []byte) []byte {
		r := answerA(q, "192.0.2.66")
		return withID(r, idOf(q)^0x8001)
	}
	runt := func(q []byte) []byte { return append([]byte(nil), q[:11]...) }
	empty := func([]byte) []byte { return []byte{} }
	notResponse := func(q []byte) []byte { return append([]byte(nil), q...) } // QR=0: the query echoed
	otherQuestion := func(q []byte) []byte {
		r := answerA(withID(query(t, "other."+testenv.Zone, 0), idOf(q)), "192.0.2.67")
		return r
	}
	tests := []struct {
		name string
		bad  []func([]byte) []byte
		want map[string]uint64
	}{
		{"wrong id", []func([]byte) []byte{wrongID}, counters("resp_unknown_id", 1)},
		{"runt", []func([]byte) []byte{runt}, counters("resp_short", 1)},
		{"empty datagram", []func([]byte) []byte{empty}, counters("resp_short", 1)},
		{"not a response", []func([]byte) []byte{notResponse}, counters("resp_not_response", 1)},
		{"other question", []func([]byte) []byte{otherQuestion}, counters("resp_question_mismatch", 1)},
		{"all of them twice", []func([]byte) []byte{runt, wrongID, notResponse, otherQuestion, empty, runt, wrongID, notResponse, otherQuestion},
			counters("resp_short", 3, "resp_unknown_id", 2, "resp_not_response", 2, "resp_question_mismatch", 2)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, tp, listen := proxyWithFake(t, func(q []byte, _ netip.AddrPort, reply func([]byte), _ func(int, []byte)) {
				for _, bad := range tc.bad {
					reply(bad(q))
				}
				reply(answerA(q, "192.0.2.1"))
			}, "--timeout", "2s")
			c := newClient(t, "127.0.0.1")
			q := query(t, "www."+testenv.Zone, 0x1234)
			got := c.exchange(listen, q)
			if want := answerA(q, "192.0.2.1"); !bytes.Equal(got, want) {
				t.Errorf("client got\n%x\nwant the real answer\n%x", got, want)
			}
			cnt := tp.Stop()
			c.expectNothing("after the answer")
			bad := uint64(len(tc.bad))
			want := counters("received", 1, "forwarded", 1, "answered", 1, "timed_out", 0,
				"resp_matched", 1, "resp_received", int(bad)+1)
			for k, v := range tc.want {
				want[k] = v
			}
			testenv.WantCounters(t, cnt, want)
		})
	}
}

// TestAnswerFromWrongSourceIsNotDelivered: an answer with the right ID and
// question but from another port than the upstream's must never reach the
// client (RFC 5452 §9.1: the answer must come from the address and port the
// query went to), so the query times out.
func TestAnswerFromWrongSourceIsNotDelivered(t *testing.T) {
	for _, servfail := range []bool{false, true} {
		t.Run(fmt.Sprintf("servfail=%v", servfail), func(t *testing.T) {
			args := []string{"--timeout", "300ms"}
			if servfail {
				args = append(args, "--servfail-on-timeout")
			}
			fake, tp, listen := proxyWithFake(t, func(q []byte, _ netip.AddrPort, _ func([]byte), replyFrom func(int, []byte)) {
				replyFrom(0, answerA(q, "192.0.2.66"))
			}, args...)
			c := newClient(t, "127.0.0.1")
			q := query(t, "www."+testenv.Zone, 0x5151)
			c.send(listen, q)
			fake.WaitReceived(t, 1, answerWait) // the spoofed answer has been sent
			if servfail {
				// The first thing the client gets must be tapproxy's own
				// SERVFAIL, not the spoofed answer.
				r := c.await(listen, 0x5151, answerWait)
				if r == nil {
					t.Fatalf("no SERVFAIL within %v after the timeout", answerWait)
				}
				checkMadeAnswer(t, "SERVFAIL after a wrong-source answer", q, r, dns.RcodeServerFailure)
			}
			cnt := tp.Stop()
			c.expectNothing("wrong-source answer")
			testenv.WantCounters(t, cnt, counters("received", 1, "forwarded", 1, "answered", 0, "timed_out", 1, "resp_matched", 0))
		})
	}
}

// TestAnswersOutOfOrder: the upstream answers the second query before the
// first. Both clients use the same ID and each must get its own answer:
// pairing is by the upstream ID tapproxy chose, the source and the
// question, never by the client's ID.
func TestAnswersOutOfOrder(t *testing.T) {
	var mu sync.Mutex
	var held []byte
	var holdReply func([]byte)
	fake, tp, listen := proxyWithFake(t, func(q []byte, _ netip.AddrPort, reply func([]byte), _ func(int, []byte)) {
		mu.Lock()
		defer mu.Unlock()
		if held == nil {
			held, holdReply = q, reply
			return
		}
		reply(answerA(q, "192.0.2.2"))
		holdReply(answerA(held, "192.0.2.1"))
	}, "--timeout", "5s")
	c1, c2 := newClient(t, "127.0.0.1"), newClient(t, "127.0.0.1")
	q1 := query(t, "first."+testenv.Zone, 0x4242)
	q2 := query(t, "second."+testenv.Zone, 0x4242)
	c1.send(listen, q1)
	fake.WaitReceived(t, 1, answerWait)
	r2 := c2.exchange(listen, q2)
	r1 := c1.await(listen, 0x4242, answerWait)
	if want := answerA(q1, "192.0.2.1"); !bytes.Equal(r1, want) {
		t.Errorf("first client got\n%x\nwant\n%x", r1, want)
	}
	if want := answerA(q2, "192.0.2.2"); !bytes.Equal(r2, want) {
		t.Errorf("second client got\n%x\nwant\n%x", r2, want)
	}
	got := fake.Received()
	if len(got) == 2 && idOf(got[0].Data) == idOf(got[1].Data) && got[0].From == got[1].From {
		t.Errorf("two in-flight queries went upstream with the same ID %#04x from the same socket %s", idOf(got[0].Data), got[0].From)
	}
	cnt := tp.Stop()
	c1.expectNothing("out of order")
	c2.expectNothing("out of order")
	testenv.WantCounters(t, cnt, counters("received", 2, "forwarded", 2, "answered", 2, "resp_matched", 2, "resp_received", 2))
}

// TestTimeoutsFreeTheTable: with one worker and room for 4 queries in
// flight, 4 queries the upstream ignores fill the table; once they time
// out, new queries are answered again. With --servfail-on-timeout each of
// the 4 also gets a SERVFAIL.
func TestTimeoutsFreeTheTable(t *testing.T) {
	for _, servfail := range []bool{false, true} {
		t.Run(fmt.Sprintf("servfail=%v", servfail), func(t *testing.T) {
			args := []string{"--max-inflight", "4", "--timeout", "300ms"}
			if servfail {
				args = append(args, "--servfail-on-timeout")
			}
			fake, tp, listen := proxyWithFake(t, func(q []byte, _ netip.AddrPort, reply func([]byte), _ func(int, []byte)) {
				if !strings.HasPrefix(qname(q), "ignore") {
					reply(answerA(q, "192.0.2.3"))
				}
			}, args...)
			ignored := newClient(t, "127.0.0.1")
			var qs [][]byte
			for i := range 4 {
				q := query(t, fmt.Sprintf("ignore-%d.%s", i, testenv.Zone), uint16(0x100+i))
				qs = append(qs, q)
				ignored.send(listen, q)
			}
			fake.WaitReceived(t, 4, answerWait)
			if servfail {
				for i, q := range qs {
					r := ignored.await(listen, idOf(q), answerWait)
					if r == nil {
						t.Fatalf("no SERVFAIL for ignored query %d", i)
					}
					checkMadeAnswer(t, fmt.Sprintf("SERVFAIL %d", i), q, r, dns.RcodeServerFailure)
				}
			}
			// Until the 4 time out the table is full and a query is a
			// counted drop; ask again (bounded) until answered.
			c := newClient(t, "127.0.0.1")
			answered := 0
			for attempt := 0; answered < 3; attempt++ {
				if attempt == 30 {
					t.Fatalf("only %d of 3 queries answered in 30 tries after the table should have drained", answered)
				}
				q := query(t, fmt.Sprintf("answer-%d.%s", attempt, testenv.Zone), uint16(0x200+attempt))
				c.send(listen, q)
				if r := c.await(listen, idOf(q), answerWait/5); r != nil {
					if want := answerA(q, "192.0.2.3"); !bytes.Equal(r, want) {
						t.Errorf("answer %d:\n%x\nwant\n%x", attempt, r, want)
					}
					answered++
				}
			}
			cnt := tp.Stop()
			ignored.expectNothing("ignored queries")
			testenv.WantCounters(t, cnt, counters("reply_failed", 0, "send_failed", 0))
			// At least: an answered query could still time out on a
			// machine stalled for 300ms, and that is not what this
			// test is about.
			if cnt["timed_out"] < 4 || cnt["answered"] < 3 {
				t.Errorf("timed_out = %d, answered = %d; want >= 4 and >= 3\n%s", cnt["timed_out"], cnt["answered"], testenv.FormatCounters(cnt))
			}
		})
	}
}

// TestServfailOnTimeout: with --servfail-on-timeout a query the upstream
// never answers gets a SERVFAIL made by tapproxy: the client's ID, the
// question echoed byte for byte (mixed case kept), RD copied.
func TestServfailOnTimeout(t *testing.T) {
	fake, tp, listen := proxyWithFake(t, nil, "--timeout", "300ms", "--servfail-on-timeout")
	c := newClient(t, "127.0.0.1")
	tests := []struct {
		name string
		q    ask
	}{
		{"plain", ask{name: "www." + testenv.Zone, qtype: dns.TypeA, id: 0x0001, rd: true}},
		{"mixed case no RD", ask{name: "WwW.TapProxy.TEST.", qtype: dns.TypeAAAA, id: 0xBEEF}},
		{"EDNS and DO", ask{name: "txt." + testenv.Zone, qtype: dns.TypeTXT, id: 0xFFFF, rd: true, edns: 1232, do: true}},
	}
	for i, tc := range tests {
		q := tc.q.wire(t)
		c.send(listen, q)
		fake.WaitReceived(t, i+1, answerWait)
		r := c.await(listen, tc.q.id, answerWait)
		if r == nil {
			t.Fatalf("%s: no SERVFAIL within %v", tc.name, answerWait)
		}
		checkMadeAnswer(t, tc.name, q, r, dns.RcodeServerFailure)
		if got := fake.Received()[i].Data; !bytes.Equal(got[2:], q[2:]) {
			t.Errorf("%s: upstream got %x, want the query %x apart from the ID", tc.name, got, q)
		}
	}
	n := len(tests)
	cnt := tp.Stop()
	c.expectNothing("after the SERVFAILs")
	testenv.WantCounters(t, cnt, counters("received", n, "forwarded", n, "timed_out", n, "answered", 0))
}
