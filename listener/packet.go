package listener

import (
	"net/netip"
)

// MaxDatagram is the receive buffer size per datagram: one byte more than
// the largest UDP payload, so an over-long datagram is seen as truncated
// (MSG_TRUNC) instead of silently cut (tailscale forwarder habit).
const MaxDatagram = 65536

// Packet is one datagram and what the kernel told us about it. Buffers are
// owned by the batch that holds the Packet and reused for the next read.
type Packet struct {
	// Buf is the backing buffer; the datagram is Buf[:N].
	Buf []byte
	N   int
	// Peer is the remote address: the source of a received datagram, the
	// destination of one to send.
	Peer netip.AddrPort
	// Local is the address the datagram was sent to (IP_PKTINFO /
	// IPV6_PKTINFO) and, for a reply, the source address to use. IfIndex is
	// the interface it arrived on.
	Local   netip.Addr
	IfIndex uint32
	// KernelTime is the kernel receive time (SO_TIMESTAMPNS) in Unix
	// nanoseconds, 0 when the kernel gave none.
	KernelTime int64
	// Truncated is set when the datagram did not fit Buf (MSG_TRUNC).
	Truncated bool
	// Head, when set on a packet to send, goes on the wire before
	// Buf[:N] in the same datagram (a PROXY protocol v2 header), through
	// a second iovec so the message is never copied.
	Head []byte
}

// Data returns the datagram's bytes.
func (p *Packet) Data() []byte { return p.Buf[:p.N] }

// Batch is a reusable set of packets with their buffers.
type Batch struct {
	Pkts []Packet
}

// NewBatch allocates n packets with bufSize-byte buffers, in one block so a
// batch costs one allocation for its lifetime.
func NewBatch(n, bufSize int) *Batch {
	b := &Batch{Pkts: make([]Packet, n)}
	block := allocBlock(n * bufSize)
	for i := range b.Pkts {
		b.Pkts[i].Buf = block[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
	}
	return b
}
