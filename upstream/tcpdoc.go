// # DNS over TCP (tcp*.go)
//
// A query that arrived over TCP goes upstream over TCP (TCPForwarder); a
// truncated UDP answer is relayed to a UDP client untouched and the client
// retries over TCP itself (RFC 7766 §5).
//
// Upstreams. Each query's upstream is picked by the Pool the UDP side uses
// (same policy, same health state, same per-upstream figures): Pick on its
// question name; when every upstream is down and the all-down action is
// servfail, the client gets SERVFAIL at once (tcp_servfail_all_down,
// outcome servfail_all_down). Passive health is fed as for UDP: an accepted
// answer is Pool.Success with its round trip (write of the query to the
// kernel stamp of the answer's last segment); a query timeout is a timeout
// failure; a refused or failed dial, a failed write, and a connection that
// ends (EOF, reset, a bad frame) with queries in flight are one fast failure
// each (a connection the server closes while idle is none). Upstream.InFlight
// counts the queries assigned to the upstream and not yet ended; Queries
// counts assignments (first tries and failovers).
//
// Connections. Up to PoolSize connections per upstream are dialled on
// demand (SO_TIMESTAMPNS on, so ResponseKernel is the kernel time of the
// segment that completed the answer, as on the client side) and shared by
// every client's queries, pipelined up to ConnInflight each; a new one is
// dialled only when the others are full, and a pooled connection unused for
// IdleTimeout is closed.
//
// PROXY protocol v2 (Spec.ProxyV2; haproxy proxy-protocol.txt §2.2). Over
// TCP the header goes once, at the start of the connection, and names one
// client for everything that follows, so a connection to such an upstream
// can never be shared between clients: each client connection gets its own
// upstream connection (dialled on its first query, header written before
// any query, pipelined up to ConnInflight), closed once nothing is in
// flight on it and its client's connection has closed (tcp_up_closed_
// client_gone) or it has been unused for IdleTimeout. Their number is
// bounded by the client connections (listener MaxConns) times the PROXY v2
// upstreams. The header is written to the socket only: it is never part of
// a logged message.
//
// Matching. Every query gets an ID from crypto/rand, unique among those in
// flight on its connection and avoiding IDs that recently timed out there.
// An answer is accepted only on that connection, with that ID, repeating
// the question (RFC 5452 §9.1; header-only FORMERR/SERVFAIL/NOTIMP/REFUSED
// accepted; a query whose question did not parse is paired on the ID
// alone); anything else is counted by reason and the wait goes on. Answers
// may come in any order.
//
// Failures. A failed dial or write, or a connection that dies (EOF, reset,
// a frame under 12 bytes) before the answer, costs a query one of its two
// tries: it is sent once more, with a fresh ID on a fresh or other
// connection, to another healthy upstream when the pool has one
// (Pool.PickExcept: a failover, tcp_failovers) and to the same upstream
// otherwise, always within the query's first deadline. Second tries draw on
// a retry budget, as on UDP: each query earns a tenth of a retry, up to a
// burst of 100, so retries stay under ~10 % of queries and a dead upstream
// cannot double the load on the others; a second try the budget refuses
// (tcp_retries_denied) ends the query at once. After that it ends as
// tcp_send_failed (never written anywhere) or tcp_upstream_closed (written,
// then lost). A query is never answered with bytes that did not pass the
// matching above on its own connection. Timeouts are not retried.
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
// DroppedFull + SendFailed + ServfailAllDown + Forwarded (+ in flight, not
// yet sent);
// Forwarded = Answered + TimedOut + ReplyFailed + UpstreamClosed (+ in
// flight); RespReceived = RespMatched + RespShort + RespNotResponse +
// RespUnknownID + RespLate + RespQuestionMismatch; Dialed = ΣConnsClosed +
// open.
//
// The TCP side must never start a goroutine per query (one reader per
// upstream connection and one sweeper do all the waiting), block on a
// client that does not read (Send never blocks; transfers wait on their own
// connection only), retry a query more than once or beyond the budget, or
// share a PROXY v2 connection between two client connections.
package upstream
