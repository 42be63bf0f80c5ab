package listener

import "net/netip"

// localAddrPort is the address a datagram was sent to: the pktinfo
// destination on a wildcard bind, else the bound address.
func localAddrPort(c *Conn, p *Packet) netip.AddrPort {
	if p.Local.IsValid() {
		return netip.AddrPortFrom(p.Local.Unmap(), c.local.Port())
	}
	return c.local
}

// LocalAddrPort is localAddrPort for other packages (upstream needs it for
// the transaction record).
func LocalAddrPort(c *Conn, p *Packet) netip.AddrPort { return localAddrPort(c, p) }
