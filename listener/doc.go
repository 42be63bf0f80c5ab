// Package listener owns tapproxy's client-facing sockets: for each listen
// address, N SO_REUSEPORT UDP sockets, each read by one fixed worker in
// batches (recvmmsg) and written in batches (sendmmsg). Readers wait in Go's
// netpoller; Reader.ReadLoop goes back to waiting right after a batch shorter
// than the batch size (the queue was empty) instead of reading once more for
// an EAGAIN. The same Reader and Writer serve upstream's sockets.
//
// Per datagram it records the kernel receive time (SO_TIMESTAMPNS, socket(7)),
// the time the worker read it, the destination address (IP_PKTINFO, ip(7);
// IPV6_RECVPKTINFO, RFC 3542 §6) so replies leave from the address the client
// asked even on a wildcard bind, and the socket's kernel drop counter
// (SO_RXQ_OVFL; Conn.KernelDrops also reads it with SO_MEMINFO, since each
// datagram carries the count as of its own queueing). Options the kernel
// refuses are reported, never ignored.
//
// It must never allocate or start a goroutine per packet, and never parse
// more of a message than the header: what a query means is upstream's job.
package listener
