package testenv

import (
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Zone is the test zone that StartUnbound (as local-data) and StartNamed (as
// an authoritative zone) serve. Nothing in it is real: addresses come from
// the documentation ranges (RFC 5737, RFC 3849).
const Zone = "tapproxy.test."

// Names in Zone with a special purpose.
const (
	// MediumTXT has about 700 bytes of TXT: an answer over UDP without EDNS
	// (512-byte limit, RFC 1035 §4.2.1) is truncated (TC=1); with EDNS it fits.
	MediumTXT = "medium.tapproxy.test."
	// BigTXT has about 4.4 KB of TXT: truncated over UDP even with EDNS 1232,
	// complete only over TCP.
	BigTXT = "big.tapproxy.test."
	// MultiA has four A records, for tests that RRset order is stable
	// (rrset-roundrobin is off).
	MultiA = "multi.tapproxy.test."
)

// Served is one question the test servers answer and the rcode they give.
type Served struct {
	Name  string
	Type  uint16
	Rcode int
	// Truncates512 is set when the answer does not fit 512 bytes, so it has
	// TC=1 over UDP without EDNS.
	Truncates512 bool
}

// ServedNames lists the questions StartUnbound and StartNamed answer,
// positive and negative. Any other name under Zone is NXDOMAIN.
func ServedNames() []Served {
	return []Served{
		{Zone, dns.TypeSOA, dns.RcodeSuccess, false},
		{Zone, dns.TypeNS, dns.RcodeSuccess, false},
		{Zone, dns.TypeMX, dns.RcodeSuccess, false},
		{"www." + Zone, dns.TypeA, dns.RcodeSuccess, false},
		{"www." + Zone, dns.TypeAAAA, dns.RcodeSuccess, false},
		{"www." + Zone, dns.TypeMX, dns.RcodeSuccess, false},  // NODATA
		{"www." + Zone, dns.TypeTXT, dns.RcodeSuccess, false}, // NODATA
		{"mail." + Zone, dns.TypeA, dns.RcodeSuccess, false},
		{"txt." + Zone, dns.TypeTXT, dns.RcodeSuccess, false},
		{MultiA, dns.TypeA, dns.RcodeSuccess, false},
		{MediumTXT, dns.TypeTXT, dns.RcodeSuccess, true},
		{BigTXT, dns.TypeTXT, dns.RcodeSuccess, true},
		{"nope." + Zone, dns.TypeA, dns.RcodeNameError, false},
		{"nope." + Zone, dns.TypeAAAA, dns.RcodeNameError, false},
		{"no.such.name." + Zone, dns.TypeTXT, dns.RcodeNameError, false},
		{"nx-12345." + Zone, dns.TypeMX, dns.RcodeNameError, false},
	}
}

// zoneRecords returns the zone's records in presentation format, one per
// line, with absolute owner names.
func zoneRecords() []string {
	r := []string{
		Zone + " 300 IN SOA ns1." + Zone + " hostmaster." + Zone + " 2024010101 3600 600 86400 300",
		Zone + " 300 IN NS ns1." + Zone,
		Zone + " 300 IN MX 10 mail." + Zone,
		"ns1." + Zone + " 300 IN A 127.0.0.1",
		"www." + Zone + " 300 IN A 192.0.2.10",
		"www." + Zone + " 300 IN AAAA 2001:db8::10",
		"mail." + Zone + " 300 IN A 192.0.2.25",
		"txt." + Zone + ` 300 IN TXT "hello from tapproxy.test"`,
		MultiA + " 300 IN A 192.0.2.41",
		MultiA + " 300 IN A 192.0.2.42",
		MultiA + " 300 IN A 192.0.2.43",
		MultiA + " 300 IN A 192.0.2.44",
	}
	for i := range 6 {
		r = append(r, fmt.Sprintf(`%s 300 IN TXT "%02d-%s"`, MediumTXT, i, strings.Repeat("x", 97)))
	}
	for i := range 40 {
		r = append(r, fmt.Sprintf(`%s 300 IN TXT "%02d-%s"`, BigTXT, i, strings.Repeat("y", 97)))
	}
	return r
}
