package listener

import (
	"fmt"
	"net/netip"
	"strings"
)

// ACLAction is what happens to a client the ACL does not allow.
type ACLAction uint8

const (
	// ACLRefuse answers REFUSED (RFC 1035 §4.1.1 rcode 5) with the header
	// and question only, so the reply is never larger than the query and
	// tapproxy cannot be used as an amplifier.
	ACLRefuse ACLAction = iota
	// ACLDrop sends nothing.
	ACLDrop
)

// ParseACLAction parses "refuse" or "drop".
func ParseACLAction(s string) (ACLAction, error) {
	switch s {
	case "refuse":
		return ACLRefuse, nil
	case "drop":
		return ACLDrop, nil
	}
	return 0, fmt.Errorf("acl action %q: want refuse or drop", s)
}

// DefaultAllow is the default client ACL: the networks a DNS proxy on a LAN
// or a host serves, and nothing routable on the internet (open resolvers
// are amplifiers).
var DefaultAllow = []string{
	"127.0.0.0/8", "::1/128", // loopback
	"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", // RFC 1918
	"100.64.0.0/10",               // RFC 6598 shared address space
	"169.254.0.0/16", "fe80::/10", // link-local (RFC 3927, RFC 4291)
	"fc00::/7", // ULA (RFC 4193)
}

// ACL is an allow list of prefixes. The zero ACL allows nothing; use
// AllowAll for an open proxy.
type ACL struct {
	prefixes []netip.Prefix
	all      bool
}

// AllowAll is an ACL that allows every client.
func AllowAll() *ACL { return &ACL{all: true} }

// ParseACL builds an ACL from CIDR strings; "any" allows everything. A bare
// address is taken as a host prefix.
func ParseACL(list []string) (*ACL, error) {
	a := &ACL{}
	for _, item := range list {
		for _, s := range strings.Split(item, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			if s == "any" {
				a.all = true
				continue
			}
			p, err := netip.ParsePrefix(s)
			if err != nil {
				addr, aerr := netip.ParseAddr(s)
				if aerr != nil {
					return nil, fmt.Errorf("acl entry %q: %w", s, err)
				}
				p = netip.PrefixFrom(addr, addr.BitLen())
			}
			a.prefixes = append(a.prefixes, p.Masked())
		}
	}
	return a, nil
}

// Allowed reports whether addr may use the proxy. IPv4-mapped IPv6
// addresses are checked as IPv4.
func (a *ACL) Allowed(addr netip.Addr) bool {
	if a.all {
		return true
	}
	addr = addr.Unmap()
	for _, p := range a.prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
