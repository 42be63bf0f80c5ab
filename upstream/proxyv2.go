package upstream

import "net/netip"

// proxyV2Sig is the PROXY protocol v2 signature (haproxy proxy-protocol.txt
// §2.2).
var proxyV2Sig = [12]byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

// MaxProxyV2Header is the longest header AppendProxyV2 writes (IPv6).
const MaxProxyV2Header = 16 + 36

// AppendProxyV2 appends a PROXY protocol v2 header (command PROXY) that
// tells the upstream the real client (src) and the address it asked (dst).
// The header is sent in front of the DNS message (each datagram over UDP,
// once per connection over TCP) and is never part of the logged message.
// It allocates nothing when dst has room.
func AppendProxyV2(b []byte, src, dst netip.AddrPort, tcp bool) []byte {
	b = append(b, proxyV2Sig[:]...)
	b = append(b, 0x21)  // version 2, PROXY
	transport := byte(2) // DGRAM
	if tcp {
		transport = 1 // STREAM
	}
	sa, da := src.Addr().Unmap(), dst.Addr().Unmap()
	if sa.Is4() && da.Is4() {
		b = append(b, 0x10|transport, 0, 12)
		s4, d4 := sa.As4(), da.As4()
		b = append(b, s4[:]...)
		b = append(b, d4[:]...)
	} else {
		b = append(b, 0x20|transport, 0, 36)
		s16, d16 := src.Addr().As16(), dst.Addr().As16()
		b = append(b, s16[:]...)
		b = append(b, d16[:]...)
	}
	b = append(b, byte(src.Port()>>8), byte(src.Port()), byte(dst.Port()>>8), byte(dst.Port()))
	return b
}
