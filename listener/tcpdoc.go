// # DNS over TCP (RFC 7766)
//
// The package also owns the client side of DNS over TCP (tcp*.go): one
// SO_REUSEPORT listener per listen address (same port as UDP), an accept
// goroutine per listener, and one goroutine per connection that reads
// length-prefixed messages (RFC 1035 §4.2.2) across arbitrary segment
// boundaries and hands each query to a TCPQueryHandler. Several queries may
// be in flight on a connection; answers are written as they arrive, in any
// order (RFC 7766 §6.2.1.1).
//
// Kernel receive time. Accepted sockets have SO_TIMESTAMPNS and are read
// with recvmsg(2), reading exactly the bytes needed (two for the length,
// then the length), never ahead. A message's QueryKernel is the stamp of
// the read that completed it: for a message that spans segments, the
// arrival time of the segment that carried its last byte, i.e. when it
// became whole. (Linux stamps a TCP read with the last socket buffer it
// consumed; segments that waited in the receive queue behind unread data
// may have been merged into an earlier buffer and then carry that earlier
// time, so under backlog the stamp can only be earlier than the true
// completion, never later. TestStampIsCompletingSegment pins this down.)
//
// ACL. Checked at accept, before a byte is read: a refused client is
// closed with an RST and counted (tcp_refused_acl), whatever --acl-action
// says for UDP. Over TCP a REFUSED answer buys nothing against spoofing (the
// handshake already proved the address) and would cost a read, a buffer and
// a goroutine per unwanted client.
//
// Bounds, each closing the connection with its own counted reason
// (CloseReason, tcp_closed_*): MaxConns and MaxConnsPerIP (per /64 for
// IPv6) close at accept with an RST; a length under 12 closes at once;
// ReadTimeout is the per-message deadline from a message's first byte (so a
// 65535 length followed by silence, or one byte per second, is closed by
// it); IdleTimeout runs from the last complete message and only while
// nothing is outstanding (RFC 7766 §6.2.3); WriteTimeout bounds each write
// to a client that does not read, and MaxPending the reply bytes queued for
// it; MaxLifetime and MaxQueries end a connection gracefully (no more reads,
// outstanding answers still sent). MaxInflight pauses reading (TCP flow
// control then slows the client) instead of dropping.
//
// Memory is bounded whatever clients do. Between messages a connection
// holds no message buffer: one (512 bytes, or 64 KiB for longer messages)
// is taken from a pool when a length has arrived and given back once the
// query is handed on. Replies are written directly with one non-blocking
// writev; only what the kernel does not take is queued (≤ MaxPending). An
// idle connection costs its struct, a 64-byte control buffer and one
// goroutine stack (a few KiB). Worst case: MaxConns × (64 KiB + MaxPending +
// ~16 KiB), about 210 MiB at the defaults (1024 × (64 + 128 + 16) KiB).
//
// Goroutines: one per listener, one per connection, and one writer per
// connection that once had to queue a reply (started then, kept until the
// connection ends): at most 2 × MaxConns + listeners, never one per message.
//
// Invariants (TCPStats): tcp_accepted = tcp_refused_acl +
// tcp_rejected_max_conns + tcp_rejected_per_ip + Σtcp_closed_* + open;
// tcp_received = tcp_dropped_qr + tcp_handled. Every query handed to the
// handler is finished (TCPConn.Finish) exactly once.
//
// The TCP side must never read ahead of the message it is assembling,
// allocate a message buffer for an idle connection, start a goroutine per
// message, or let a slow client block the goroutine that delivers its
// answers (Send never blocks; SendWait, for zone transfers only, waits at
// most WriteTimeout).
package listener
