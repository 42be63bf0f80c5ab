package tap

import (
	"net/netip"
	"testing"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/txn"
	"google.golang.org/protobuf/proto"
)

// TestEncodeQueryZone: once an answer's authority section has shown the
// zone's SOA, later records for names in that zone carry query_zone.
func TestEncodeQueryZone(t *testing.T) {
	zc := annotate.NewZoneCache(0)
	enc := NewEncoder(EncoderOptions{Zones: zc, Types: TypesClient})
	mk := func(name string, soa bool) *txn.Transaction {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		qb, _ := q.Pack()
		r := new(dns.Msg)
		r.SetRcode(q, dns.RcodeNameError)
		if soa {
			rr, _ := dns.NewRR("Zone.Test. 300 IN SOA ns.zone.test. host.zone.test. 1 2 3 4 5")
			r.Ns = append(r.Ns, rr)
		}
		rb, _ := r.Pack()
		return &txn.Transaction{Seq: 1, Query: qb, Response: rb, QueryKernel: 1e18, ReplySent: 1e18 + 1000,
			Client: netip.MustParseAddrPort("127.0.0.1:1000"), Local: netip.MustParseAddrPort("127.0.0.1:53")}
	}
	zoneOf := func(tx *txn.Transaction) string {
		buf, ends := enc.EncodeTransaction(nil, nil, tx)
		var d dnstap.Dnstap
		if err := proto.Unmarshal(buf[:ends[0]], &d); err != nil {
			t.Fatal(err)
		}
		if d.Message.QueryZone == nil {
			return ""
		}
		name, _, err := dns.UnpackDomainName(d.Message.QueryZone, 0)
		if err != nil {
			t.Fatal(err)
		}
		return name
	}
	if z := zoneOf(mk("a.zone.test.", false)); z != "" {
		t.Fatalf("zone %q before anything was learned", z)
	}
	// The first answer teaches the cache; it is encoded after learning, so
	// it already carries the zone.
	if z := zoneOf(mk("nx.zone.test.", true)); z != "zone.test." {
		t.Fatalf("got %q, want zone.test.", z)
	}
	if z := zoneOf(mk("deep.er.zone.test.", false)); z != "zone.test." {
		t.Fatalf("got %q for a name below the zone", z)
	}
	if z := zoneOf(mk("other.test.", false)); z != "" {
		t.Fatalf("got %q outside the zone", z)
	}
}
