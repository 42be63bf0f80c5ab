package e2e

import (
	"bytes"
	"testing"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// TestACL runs tapproxy with --allow 127.0.0.2/32, so a client bound on
// 127.0.0.1 is outside the allow list. With the default action it gets a
// REFUSED made by tapproxy: same ID, question echoed, never larger than the
// query (so the ACL cannot be used for amplification); with --acl-action
// drop it gets nothing. A client on 127.0.0.2 is served either way, and its
// answer is also the signal that the earlier datagrams were handled (one
// worker, arrival order). Nothing from a refused client goes upstream.
func TestACL(t *testing.T) {
	allowed := query(t, "www."+testenv.Zone, 0x0A0A)
	denied := []ask{
		{name: "www." + testenv.Zone, qtype: dns.TypeA, id: 0x0101, rd: true},
		{name: "Mail.TapProxy.Test.", qtype: dns.TypeMX, id: 0x0202},
		{name: "txt." + testenv.Zone, qtype: dns.TypeTXT, id: 0x0303, rd: true, edns: 4096, do: true},
	}
	tests := []struct {
		name   string
		action []string
		refuse bool
	}{
		{"default action refuses", nil, true},
		{"refuse", []string{"--acl-action", "refuse"}, true},
		{"drop", []string{"--acl-action", "drop"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--allow", "127.0.0.2/32", "--timeout", "2s"}, tc.action...)
			fake, tp, listen := proxyWithFake(t, answerAll("192.0.2.5"), args...)
			outside, inside := newClient(t, "127.0.0.1"), newClient(t, "127.0.0.2")
			for _, a := range denied {
				q := a.wire(t)
				if !tc.refuse {
					outside.send(listen, q)
					continue
				}
				r := outside.exchange(listen, q)
				checkMadeAnswer(t, "REFUSED "+a.name, q, r, dns.RcodeRefused)
				if len(r) > len(q) {
					t.Errorf("REFUSED %s: %d bytes, larger than the %d-byte query", a.name, len(r), len(q))
				}
			}
			r := inside.exchange(listen, allowed)
			if want := answerA(allowed, "192.0.2.5"); !bytes.Equal(r, want) {
				t.Errorf("allowed client got %x, want %x", r, want)
			}
			if got := fake.Received(); len(got) != 1 || !bytes.Equal(got[0].Data[2:], allowed[2:]) {
				t.Errorf("upstream got %d datagrams, want only the allowed client's query", len(got))
			}
			cnt := tp.Stop()
			outside.expectNothing("client outside the ACL")
			inside.expectNothing("client inside the ACL")
			n := len(denied)
			want := counters("received", n+1, "forwarded", 1, "answered", 1, "refused_acl", 0, "dropped_acl", 0)
			if tc.refuse {
				want["refused_acl"] = uint64(n)
			} else {
				want["dropped_acl"] = uint64(n)
			}
			testenv.WantCounters(t, cnt, want)
		})
	}
}
