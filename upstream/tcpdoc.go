// # DNS over TCP (tcp*.go)
//
// A query that arrived over TCP goes upstream over TCP (TCPForwarder); a
// truncated UDP answer is relayed to a UDP client untouched and the client
// retries over TCP itself (RFC 7766 §5).
//
// Connections. Up to PoolSize connections to the first upstream are
// dialled on demand (SO_TIMESTAMPNS on, so ResponseKernel is the kernel time
// of the segment that completed the answer, as on the client side) and
// shared by every client's queries, pipelined up to ConnInflight each; a new
// one is dialled only when the others are full, and a pooled connection
// unused for IdleTimeout is closed. Every query gets an ID from crypto/rand,
// unique among those in flight on its connection and avoiding IDs that
// recently timed out there. An answer is accepted only on that connection,
// with that ID, repeating the question (RFC 5452 §9.1; header-only
// FORMERR/SERVFAIL/NOTIMP/REFUSED accepted; a query whose question did not
// parse is paired on the ID alone); anything else is counted by reason and
// the wait goes on. Answers may come in any order.
//
// Failures. A failed dial or write, or a connection that dies (EOF, reset,
// a frame under 12 bytes) before the answer, costs a query one of its two
// tries: it is sent once more on another connection with a fresh ID. After
// that it ends as tcp_send_failed (never written anywhere) or
// tcp_upstream_closed (written, then lost). A query is never answered with
// bytes that did not pass the matching above on its own connection.
//
// Zone transfers (AXFR, RFC 5936; IXFR, RFC 1995) get a connection of their
// own (at most MaxTransfers at once), so a transfer's stream never mixes
// with other answers and can be paced by the client: its messages are
// relayed with TCPConn.SendWait, every one carrying the client's ID. The
// slot is kept until the last message (xfrState: the closing SOA for AXFR;
// RFC 1995 §4 rules for IXFR; any error rcode or unwalkable message) and
// each next message must come within Timeout of the previous one. A
// transfer cut off midway (connection lost, timeout) is not retried, since
// the client already has part of it: the client connection is closed
// (tcp_closed_aborted) so it knows. One transaction is logged per message,
// all with the query's Seq and bytes; the transfer counts once in
// tcp_answered and each message in tcp_xfr_messages.
//
// Logging: one txn.Transaction per query (per message for transfers) with
// Transport TCP, the client connection's endpoints as Client/Local and the
// upstream connection's as Upstream/UpstreamLocal. ReplySent is when the
// reply was handed to the client socket, or queued behind earlier replies
// for a client that was not reading fast enough.
//
// Invariants (TCPStats), exact once nothing is in flight: handled =
// DroppedFull + SendFailed + Forwarded (+ in flight, not yet sent);
// Forwarded = Answered + TimedOut + ReplyFailed + UpstreamClosed (+ in
// flight); RespReceived = RespMatched + RespShort + RespNotResponse +
// RespUnknownID + RespLate + RespQuestionMismatch; Dialed = ΣConnsClosed +
// open.
//
// The TCP side must never start a goroutine per query (one reader per
// upstream connection and one sweeper do all the waiting), block on a
// client that does not read (Send never blocks; transfers wait on their own
// connection only), or retry a query more than once.
package upstream
