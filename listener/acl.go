package listener

import (
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
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

// ACL is an allow list of prefixes, shared by every worker. Replace swaps
// its contents atomically (SIGHUP reload) while workers keep reading it
// without a lock. The zero ACL allows nothing; use AllowAll for an open
// proxy.
type ACL struct {
	st     atomic.Pointer[aclState]
	action atomic.Uint32
}

// SetAction sets what happens to refused clients (takes effect at once).
func (a *ACL) SetAction(x ACLAction) { a.action.Store(uint32(x)) }

// Action returns what happens to refused clients.
func (a *ACL) Action() ACLAction { return ACLAction(a.action.Load()) }

type aclState struct {
	prefixes []netip.Prefix
	all      bool
}

// AllowAll is an ACL that allows every client.
func AllowAll() *ACL {
	a := &ACL{}
	a.st.Store(&aclState{all: true})
	return a
}

// Replace makes a answer like b from now on.
func (a *ACL) Replace(b *ACL) { a.st.Store(b.st.Load()) }

// String lists the prefixes ("any" for an open ACL).
func (a *ACL) String() string {
	st := a.st.Load()
	if st == nil {
		return ""
	}
	if st.all {
		return "any"
	}
	parts := make([]string, len(st.prefixes))
	for i, p := range st.prefixes {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

// ParseACL builds an ACL from CIDR strings; "any" allows everything. A bare
// address is taken as a host prefix.
func ParseACL(list []string) (*ACL, error) {
	a := &aclState{}
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
	acl := &ACL{}
	acl.st.Store(a)
	return acl, nil
}

// Allowed reports whether addr may use the proxy. IPv4-mapped IPv6
// addresses are checked as IPv4.
func (a *ACL) Allowed(addr netip.Addr) bool {
	st := a.st.Load()
	if st == nil {
		return false
	}
	if st.all {
		return true
	}
	addr = addr.Unmap()
	for _, p := range st.prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
