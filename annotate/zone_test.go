package annotate

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// wireName returns the uncompressed wire form of a presentation name.
func wireName(t testing.TB, s string) []byte {
	t.Helper()
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(dns.Fqdn(s), buf, 0, nil, false)
	if err != nil {
		t.Fatalf("PackDomainName(%q): %v", s, err)
	}
	return buf[:n]
}

func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatalf("NewRR(%q): %v", s, err)
	}
	return r
}

// answer builds a packed response to qname/qtype with the given sections.
func answer(t testing.TB, qname string, qtype uint16, rcode int, ans, auth []string, compress bool) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(qname), qtype)
	m.Response = true
	m.Rcode = rcode
	for _, s := range ans {
		m.Answer = append(m.Answer, rr(t, s))
	}
	for _, s := range auth {
		m.Ns = append(m.Ns, rr(t, s))
	}
	m.Compress = compress
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("Pack: %v", err)
	}
	return b
}

const soaRR = " 3600 IN SOA ns1.example.net. hostmaster.example.net. 1 7200 3600 1209600 300"

func presentation(t testing.TB, wire []byte) string {
	t.Helper()
	s, _, err := dns.UnpackDomainName(wire, 0)
	if err != nil {
		t.Fatalf("UnpackDomainName: %v", err)
	}
	return s
}

func TestZoneLearnLookup(t *testing.T) {
	type look struct {
		qname, zone string // zone "" means no zone known
	}
	cases := []struct {
		name      string
		responses [][]byte
		lookups   []look
		want      ZoneStats // Lookups, Hits and Entries are checked separately
	}{
		{
			name:      "nxdomain authority SOA",
			responses: [][]byte{answer(t, "a.b.example.com", dns.TypeA, dns.RcodeNameError, nil, []string{"example.com." + soaRR}, true)},
			lookups:   []look{{"a.b.example.com", "example.com."}, {"x.example.com", "example.com."}, {"EXAMPLE.com", "example.com."}, {"example.org", ""}, {"com", ""}},
			want:      ZoneStats{Learned: 1},
		},
		{
			name:      "referral NS names the child apex",
			responses: [][]byte{answer(t, "www.sub.example.com", dns.TypeA, dns.RcodeSuccess, nil, []string{"sub.example.com. 3600 IN NS ns1.sub.example.com.", "sub.example.com. 3600 IN NS ns2.sub.example.com."}, true)},
			lookups:   []look{{"www.sub.example.com", "sub.example.com."}, {"other.example.com", ""}},
			want:      ZoneStats{Learned: 1, Renewed: 1},
		},
		{
			name:      "answer-section SOA, uncompressed, mixed case owner",
			responses: [][]byte{answer(t, "Example.NET", dns.TypeSOA, dns.RcodeSuccess, []string{"ExAmPlE.nEt." + soaRR}, nil, false)},
			lookups:   []look{{"host.example.net", "example.net."}},
			want:      ZoneStats{Learned: 1},
		},
		{
			name: "CNAME target's SOA is out of bailiwick",
			responses: [][]byte{answer(t, "www.example.com", dns.TypeA, dns.RcodeNameError,
				[]string{"www.example.com. 300 IN CNAME www.example.net."}, []string{"example.net." + soaRR}, true)},
			lookups: []look{{"www.example.com", ""}, {"www.example.net", ""}},
			want:    ZoneStats{OutOfBailiwick: 1},
		},
		{
			name:      "class CH and other types are ignored",
			responses: [][]byte{answer(t, "version.bind", dns.TypeTXT, dns.RcodeSuccess, []string{"version.bind. 0 CH TXT \"x\""}, []string{"bind. 0 CH NS version.bind.", "bind. 0 IN TXT \"y\""}, true)},
			lookups:   []look{{"version.bind", ""}},
		},
		{
			name: "closest enclosing of several",
			responses: [][]byte{
				answer(t, "foo.com", dns.TypeA, dns.RcodeNameError, nil, []string{"com." + soaRR}, true),
				answer(t, "www.example.com", dns.TypeA, dns.RcodeSuccess, []string{"www.example.com. 60 IN A 192.0.2.1"}, []string{"example.com. 60 IN NS ns.example.com."}, true),
				answer(t, "nope", dns.TypeA, dns.RcodeNameError, nil, []string{"." + soaRR}, true),
			},
			lookups: []look{{"a.www.example.com", "example.com."}, {"bar.com", "com."}, {"com", "com."}, {"org", "."}, {".", "."}},
			want:    ZoneStats{Learned: 3},
		},
		{
			name: "same apex twice is renewed, not re-learned",
			responses: [][]byte{
				answer(t, "a.example.com", dns.TypeA, dns.RcodeNameError, nil, []string{"example.com." + soaRR}, true),
				answer(t, "b.example.com", dns.TypeA, dns.RcodeNameError, nil, []string{"EXAMPLE.COM." + soaRR}, false),
			},
			lookups: []look{{"c.example.com", "example.com."}},
			want:    ZoneStats{Learned: 1, Renewed: 1},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			z := NewZoneCache(64)
			for _, r := range tc.responses {
				z.Learn(r)
			}
			hits := 0
			for _, l := range tc.lookups {
				got, ok := z.Lookup(wireName(t, l.qname))
				switch {
				case l.zone == "" && ok:
					t.Errorf("Lookup(%s) = %s, want no zone", l.qname, presentation(t, got))
				case l.zone != "" && !ok:
					t.Errorf("Lookup(%s): no zone, want %s", l.qname, l.zone)
				case ok && presentation(t, got) != l.zone:
					t.Errorf("Lookup(%s) = %s, want %s", l.qname, presentation(t, got), l.zone)
				}
				if l.zone != "" {
					hits++
				}
			}
			st := z.Stats()
			if st.Lookups != uint64(len(tc.lookups)) || st.Hits != uint64(hits) {
				t.Errorf("lookups/hits = %d/%d, want %d/%d", st.Lookups, st.Hits, len(tc.lookups), hits)
			}
			if st.Entries != int(tc.want.Learned) {
				t.Errorf("entries = %d, want %d", st.Entries, tc.want.Learned)
			}
			st.Lookups, st.Hits, st.Entries = 0, 0, 0
			if st != tc.want {
				t.Errorf("stats = %+v, want %+v", st, tc.want)
			}
		})
	}
}

func TestZoneLearnMalformed(t *testing.T) {
	good := answer(t, "a.b.example.com", dns.TypeA, dns.RcodeNameError, nil,
		[]string{"example.com." + soaRR, "b.example.com. 60 IN NS ns.example.com."}, true)
	query := append([]byte(nil), good...)
	query[2] &^= 0x80
	// Cut inside the second record: the first is still learned.
	cut := good[:len(good)-5]
	ptrLoop := answer(t, "x.example.com", dns.TypeA, 0, nil, nil, false)
	ptrLoop[7] = 1 // ANCOUNT 1
	ptrLoop = append(ptrLoop, 0xC0, byte(len(ptrLoop)))
	cases := []struct {
		name      string
		msg       []byte
		malformed uint64
		learned   uint64
	}{
		{"empty", nil, 1, 0},
		{"short header", good[:11], 1, 0},
		{"query, not a response", query, 1, 0},
		{"truncated in the second record", cut, 1, 1},
		{"forward compression pointer", ptrLoop, 1, 0},
		{"header only (FORMERR, no question)", good[:12:12], 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			z := NewZoneCache(64)
			msg := tc.msg
			if tc.name == "header only (FORMERR, no question)" {
				msg = append([]byte(nil), good[:12]...)
				for i := 4; i < 12; i++ {
					msg[i] = 0
				}
			}
			z.Learn(msg)
			st := z.Stats()
			if st.Malformed != tc.malformed || st.Learned != tc.learned {
				t.Errorf("malformed/learned = %d/%d, want %d/%d", st.Malformed, st.Learned, tc.malformed, tc.learned)
			}
		})
	}
}

func TestZoneLookupBadNames(t *testing.T) {
	z := NewZoneCache(8)
	z.Learn(answer(t, "x", dns.TypeA, dns.RcodeNameError, nil, []string{"." + soaRR}, true))
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"no root label", []byte{3, 'c', 'o', 'm'}},
		{"label runs past end", []byte{5, 'c', 'o', 'm', 0}},
		{"trailing bytes after root", []byte{3, 'c', 'o', 'm', 0, 0}},
		{"compression pointer", []byte{0xC0, 12}},
		{"too long", append(make([]byte, 0, 300), strings.Repeat("\x3f"+strings.Repeat("a", 63), 4)+"\x00"...)},
	} {
		if zone, ok := z.Lookup(tc.b); ok {
			t.Errorf("%s: Lookup = %q, want not ok", tc.name, zone)
		}
	}
	if zone, ok := z.Lookup([]byte{3, 'C', 'o', 'M', 0}); !ok || string(zone) != "\x00" {
		t.Errorf("Lookup(com) = %q %v, want the root", zone, ok)
	}
}

func TestZoneLRUBound(t *testing.T) {
	z := newZoneCache(4, 1)
	for i := 0; i < 5; i++ {
		z.Learn(answer(t, fmt.Sprintf("x.z%d.test", i), dns.TypeA, dns.RcodeNameError, nil, []string{fmt.Sprintf("z%d.test.", i) + soaRR}, true))
	}
	if n := z.Stats().Entries; n != 4 {
		t.Fatalf("entries = %d, want 4", n)
	}
	if _, ok := z.Lookup(wireName(t, "x.z0.test")); ok {
		t.Errorf("z0.test survived; it was the least recently used")
	}
	for i := 1; i < 5; i++ {
		if _, ok := z.Lookup(wireName(t, fmt.Sprintf("x.z%d.test", i))); !ok {
			t.Errorf("z%d.test evicted", i)
		}
	}
}

func TestZoneLookupAllocs(t *testing.T) {
	z := NewZoneCache(64)
	z.Learn(answer(t, "a.example.com", dns.TypeA, dns.RcodeNameError, nil, []string{"example.com." + soaRR}, true))
	hit, miss := wireName(t, "deep.a.b.c.example.com"), wireName(t, "deep.a.b.c.example.org")
	if n := testing.AllocsPerRun(1000, func() {
		if _, ok := z.Lookup(hit); !ok {
			panic("miss")
		}
		if _, ok := z.Lookup(miss); ok {
			panic("hit")
		}
	}); n != 0 {
		t.Errorf("Lookup allocates %.1f times per call pair, want 0", n)
	}
	known := answer(t, "b.example.com", dns.TypeA, dns.RcodeNameError, nil, []string{"example.com." + soaRR}, true)
	if n := testing.AllocsPerRun(1000, func() { z.Learn(known) }); n != 0 {
		t.Errorf("Learn of a known apex allocates %.1f times, want 0", n)
	}
}

// FuzzZoneLearn: Learn must never panic on any input, and whatever it
// learns must be the question name or an ancestor of it.
func FuzzZoneLearn(f *testing.F) {
	// Seeds: a negative answer with a compressed SOA owner, a referral,
	// a CNAME chain leaving the bailiwick, and a header-only FORMERR.
	f.Add(answer(f, "a.b.example.com", dns.TypeA, dns.RcodeNameError, nil, []string{"example.com." + soaRR}, true))
	f.Add(answer(f, "www.sub.example.com", dns.TypeA, 0, nil, []string{"sub.example.com. 3600 IN NS ns1.sub.example.com."}, true))
	f.Add(answer(f, "www.example.com", dns.TypeA, dns.RcodeNameError, []string{"www.example.com. 300 IN CNAME www.example.net."}, []string{"example.net." + soaRR}, false))
	f.Add([]byte{0xBA, 0xD0, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		z := NewZoneCache(16)
		z.Learn(msg)
		st := z.Stats()
		if st.Entries > 0 {
			// The learned apexes must enclose the question name.
			var q [maxNameLen]byte
			n, _, ok := readName(msg, 12, &q)
			if !ok {
				t.Fatalf("learned %d apexes from a message whose question does not parse", st.Entries)
			}
			if _, ok := z.Lookup(q[:n]); !ok {
				t.Fatalf("learned %d apexes but none encloses the question name", st.Entries)
			}
		}
	})
}

var sink atomic.Value

// BenchmarkZoneLookupParallel measures Lookup from many goroutines on a
// warm cache: one golang-lru cache (one lock) against the sharded default.
func BenchmarkZoneLookupParallel(b *testing.B) {
	for _, shards := range []int{1, zoneShards} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			z := newZoneCache(4096, shards)
			var names [][]byte
			for i := 0; i < 1000; i++ {
				zone := fmt.Sprintf("z%d.example", i)
				z.Learn(answer(b, "x."+zone, dns.TypeA, dns.RcodeNameError, nil, []string{zone + "." + soaRR}, true))
				names = append(names, wireName(b, fmt.Sprintf("www.host%d.z%d.example", i, i)))
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i, hits := 0, 0
				for pb.Next() {
					if _, ok := z.Lookup(names[i%len(names)]); ok {
						hits++
					}
					i++
				}
				sink.Store(hits)
			})
		})
	}
}

func BenchmarkZoneLearn(b *testing.B) {
	z := NewZoneCache(0)
	msg := answer(b, "a.b.example.com", dns.TypeA, dns.RcodeNameError, []string{"a.b.example.com. 60 IN CNAME c.example.com."}, []string{"example.com." + soaRR}, true)
	b.ReportAllocs()
	for b.Loop() {
		z.Learn(msg)
	}
}
