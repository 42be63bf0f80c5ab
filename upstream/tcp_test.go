package upstream

import (
	"fmt"
	"testing"

	"github.com/miekg/dns"
)

func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func soaRR(t testing.TB, serial uint32) dns.RR {
	return rr(t, fmt.Sprintf("z.example. 300 IN SOA ns.z.example. host.z.example. %d 3600 600 86400 300", serial))
}

func aRR(t testing.TB, i int) dns.RR {
	return rr(t, fmt.Sprintf("h%d.z.example. 300 IN A 192.0.2.%d", i, i))
}

// xfrMsgs packs one message per group of answer records, compressed like a
// real server would.
func xfrMsgs(t testing.TB, qtype uint16, rcode int, groups ...[]dns.RR) [][]byte {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion("z.example.", qtype)
	var out [][]byte
	for k, g := range groups {
		m := new(dns.Msg)
		m.SetRcode(q, rcode)
		m.Compress = true
		if k > 0 && k%2 == 0 {
			m.Question = nil // later messages may omit the question
		}
		m.Answer = g
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func TestXFRScan(t *testing.T) {
	s1, s2, s3 := soaRR(t, 1), soaRR(t, 2), soaRR(t, 3)
	a1, a2, a3 := aRR(t, 1), aRR(t, 2), aRR(t, 3)
	tests := []struct {
		name  string
		qtype uint16
		rcode int
		msgs  [][]dns.RR
		last  int // index of the message that ends it; -1: none does
	}{
		{"axfr one message", dns.TypeAXFR, 0, [][]dns.RR{{s3, a1, a2, s3}}, 0},
		{"axfr three messages", dns.TypeAXFR, 0, [][]dns.RR{{s3, a1}, {a2}, {a3, s3}}, 2},
		{"axfr closing soa alone", dns.TypeAXFR, 0, [][]dns.RR{{s3, a1}, {s3}}, 1},
		{"axfr unfinished", dns.TypeAXFR, 0, [][]dns.RR{{s3, a1}, {a2}}, -1},
		{"axfr refused", dns.TypeAXFR, dns.RcodeRefused, [][]dns.RR{{}}, 0},
		{"axfr no answers", dns.TypeAXFR, 0, [][]dns.RR{{}}, 0},
		{"axfr first not soa", dns.TypeAXFR, 0, [][]dns.RR{{a1, s3}}, 0},
		{"ixfr up to date", dns.TypeIXFR, 0, [][]dns.RR{{s3}}, 0},
		{"ixfr axfr-style", dns.TypeIXFR, 0, [][]dns.RR{{s3, a1}, {a2, s3}}, 1},
		// SOA3 | SOA1 -a1 SOA2 +a2 | SOA2 -a2 SOA3 +a3 | SOA3
		{"ixfr incremental", dns.TypeIXFR, 0, [][]dns.RR{{s3, s1, a1, s2, a2}, {s2, a2, s3, a3}, {s3}}, 2},
		{"ixfr incremental one message", dns.TypeIXFR, 0, [][]dns.RR{{s3, s1, a1, s3, a3, s3}}, 0},
		{"ixfr incremental unfinished", dns.TypeIXFR, 0, [][]dns.RR{{s3, s1, a1, s2, a2}, {s2, a2, s3, a3}}, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var x xfrState
			x.reset(tc.qtype == dns.TypeIXFR)
			got := -1
			for k, m := range xfrMsgs(t, tc.qtype, tc.rcode, tc.msgs...) {
				if x.scan(m) {
					got = k
					break
				}
			}
			if got != tc.last {
				t.Fatalf("ended at message %d, want %d", got, tc.last)
			}
		})
	}
}

func TestXFRScanTruncated(t *testing.T) {
	m := xfrMsgs(t, dns.TypeAXFR, 0, []dns.RR{soaRR(t, 1), aRR(t, 1)})[0]
	// Every cut of a valid message either ends the transfer (cannot be
	// walked) or is a prefix that still parses; none panics.
	for n := 0; n <= len(m); n++ {
		var x xfrState
		x.reset(false)
		_ = x.scan(m[:n])
	}
}

// FuzzXFRScan: the transfer scanner reads server bytes; whatever they are,
// it must not panic, must terminate, and must be deterministic.
func FuzzXFRScan(f *testing.F) {
	for _, ms := range [][][]byte{
		xfrMsgs(f, dns.TypeAXFR, 0, []dns.RR{soaRR(f, 3), aRR(f, 1), soaRR(f, 3)}),
		xfrMsgs(f, dns.TypeIXFR, 0, []dns.RR{soaRR(f, 3), soaRR(f, 1), aRR(f, 1), soaRR(f, 3), soaRR(f, 3)}),
		xfrMsgs(f, dns.TypeAXFR, dns.RcodeRefused, []dns.RR{}),
	} {
		f.Add(ms[0], true)
		f.Add(ms[0], false)
	}
	f.Add([]byte{0, 1, 0x80, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xc0, 12}, false) // pointer to itself as owner
	f.Fuzz(func(t *testing.T, msg []byte, ixfr bool) {
		var x, y xfrState
		x.reset(ixfr)
		y.reset(ixfr)
		if x.scan(msg) != y.scan(msg) || x != y {
			t.Fatal("scan is not deterministic")
		}
		if x.rrs > len(msg) {
			t.Fatalf("%d records in %d bytes", x.rrs, len(msg))
		}
	})
}

func TestSkipName(t *testing.T) {
	tests := []struct {
		name string
		msg  []byte
		off  int
		want int
		ok   bool
	}{
		{"root", []byte{0}, 0, 1, true},
		{"label", []byte{1, 'a', 0}, 0, 3, true},
		{"pointer", []byte{1, 'a', 0xc0, 0}, 2, 4, true},
		{"label past end", []byte{5, 'a'}, 0, 0, false},
		{"pointer cut", []byte{0xc0}, 0, 0, false},
		{"reserved type", []byte{0x40, 0}, 0, 0, false},
		{"no terminator", []byte{1, 'a'}, 0, 0, false},
	}
	for _, tc := range tests {
		got, err := skipName(tc.msg, tc.off)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("%s: got %d, %v", tc.name, got, err)
		}
	}
}
