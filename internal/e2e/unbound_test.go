package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// transparencyQueries is how many questions each address family asks.
const transparencyQueries = 1000

// variedQueries returns n queries over the names the test Unbound serves and
// names it does not (NXDOMAIN, REFUSED), with random IDs, RD and CD bits,
// EDNS on or off with several buffer sizes and DO, and mixed-case names
// (RFC 4343: the case must survive the round trip). The first few pin the
// cases that matter most: the TXT that is truncated at 512 bytes without
// EDNS and fits with it, and the one truncated even with EDNS.
func variedQueries(r *rand.Rand, n int) []ask {
	served := testenv.ServedNames()
	out := []ask{
		{name: testenv.MediumTXT, qtype: dns.TypeTXT, id: 1, rd: true},
		{name: testenv.MediumTXT, qtype: dns.TypeTXT, id: 2, rd: true, edns: 1232},
		{name: testenv.BigTXT, qtype: dns.TypeTXT, id: 3, rd: true, edns: 1232, do: true},
		{name: testenv.BigTXT, qtype: dns.TypeTXT, id: 4},
		{name: "nope." + testenv.Zone, qtype: dns.TypeA, id: 5, rd: true, edns: 4096, do: true},
	}
	types := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeMX, dns.TypeSOA, dns.TypeNS, dns.TypeSRV, dns.TypeCNAME}
	for len(out) < n {
		var a ask
		switch k := r.IntN(10); {
		case k < 6: // a served question
			s := served[r.IntN(len(served))]
			a.name, a.qtype = s.Name, s.Type
		case k < 8: // an existing or non-existing name with any type
			a.name = served[r.IntN(len(served))].Name
			if r.IntN(2) == 0 {
				a.name = fmt.Sprintf("nx-%d.%s", r.IntN(1_000_000), testenv.Zone)
			}
			a.qtype = types[r.IntN(len(types))]
		case k < 9: // deeper NXDOMAIN
			a.name = fmt.Sprintf("a%d.b%d.%s", r.IntN(100), r.IntN(100), testenv.Zone)
			a.qtype = types[r.IntN(len(types))]
		default: // outside the zone: Unbound refuses locally
			a.name = fmt.Sprintf("host%d.example.", r.IntN(1000))
			a.qtype = dns.TypeA
		}
		if r.IntN(2) == 0 {
			a.name = mixCase(r, a.name)
		}
		a.id = uint16(r.Uint32())
		a.rd = r.IntN(4) != 0
		a.cd = r.IntN(8) == 0
		switch r.IntN(4) {
		case 1:
			a.edns = 512
		case 2:
			a.edns = 1232
		case 3:
			a.edns = 4096
		}
		a.do = a.edns != 0 && r.IntN(2) == 0
		out = append(out, a)
	}
	return out
}

func mixCase(r *rand.Rand, s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' && r.IntN(2) == 0 {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// TestUnboundTransparency asks a real Unbound the same ~1000 questions
// directly and through tapproxy, over IPv4 and IPv6 loopback: the client
// must get the same bytes both ways apart from the ID, and through tapproxy
// the ID must be the client's own (only the ID is rewritten on the
// upstream leg).
func TestUnboundTransparency(t *testing.T) {
	u := testenv.StartUnbound(t, testenv.UnboundOptions{IPv6: true})
	families := []struct {
		name, lo, network string
		upstream          netip.AddrPort
	}{
		{"ipv4", "127.0.0.1", "ip4", u.Addr4},
		{"ipv6", "::1", "ip6", u.Addr6},
	}
	for i, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			seed := uint64(0x7a9 + i)
			t.Logf("query seed %#x", seed)
			qs := variedQueries(rand.New(rand.NewPCG(seed, seed)), transparencyQueries)

			listen := netip.AddrPortFrom(netip.MustParseAddr(fam.lo), uint16(testenv.FreePort(t, fam.network)))
			tp := testenv.StartTapproxy(t, "--listen", listen.String(), "--upstream", fam.upstream.String(),
				"--workers", "2", "--timeout", "2s")
			direct, proxied := newClient(t, fam.lo), newClient(t, fam.lo)

			var truncated, truncated512, nxdomain, refused, edns, mixed int
			for _, a := range qs {
				q := a.wire(t)
				d := direct.exchange(fam.upstream, q)
				p := proxied.exchange(listen, q)
				if !bytes.Equal(d[2:], p[2:]) {
					t.Fatalf("query %s %s id=%#04x edns=%d do=%v: answer through tapproxy differs from Unbound's\ndirect  %x\nproxied %x\ndirect:\n%v\nproxied:\n%v",
						a.name, dns.TypeToString[a.qtype], a.id, a.edns, a.do, d, p, msgString(d), msgString(p))
				}
				// Coverage of the cases the test exists for.
				if d[2]&0x02 != 0 {
					truncated++
					if a.edns == 0 {
						truncated512++
					}
				}
				switch int(d[3] & 0xF) {
				case dns.RcodeNameError:
					nxdomain++
				case dns.RcodeRefused:
					refused++
				}
				if a.edns != 0 {
					edns++
				}
				if a.name != strings.ToLower(a.name) {
					mixed++
				}
			}
			t.Logf("%d queries: %d truncated (%d without EDNS), %d NXDOMAIN, %d REFUSED, %d with EDNS, %d mixed case",
				len(qs), truncated, truncated512, nxdomain, refused, edns, mixed)
			if truncated512 == 0 || truncated == truncated512 || nxdomain == 0 || refused == 0 || edns == 0 || mixed == 0 {
				t.Errorf("the queries did not cover every case (see counts above)")
			}

			n := len(qs)
			c := tp.Stop()
			testenv.WantCounters(t, c, counters(
				"received", n, "forwarded", n, "answered", n, "resp_received", n, "resp_matched", n,
				"timed_out", 0, "reply_failed", 0, "malformed", 0,
			))
			direct.expectNothing("after the transparency run (direct)")
			proxied.expectNothing("after the transparency run (proxied)")
		})
	}
}

func msgString(b []byte) string {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return fmt.Sprintf("(unparseable: %v)", err)
	}
	return m.String()
}
