package txn

import "net/netip"

// Transport is the client-facing (and, for TCP, upstream) transport.
type Transport uint8

const (
	UDP Transport = iota
	TCP
)

func (t Transport) String() string {
	switch t {
	case UDP:
		return "udp"
	case TCP:
		return "tcp"
	}
	return "unknown"
}

// Outcome is how the transaction ended. Exactly one per transaction.
type Outcome uint8

const (
	// Answered: the upstream's answer was relayed to the client.
	Answered Outcome = iota
	// TimedOut: no acceptable answer arrived within the query timeout; the
	// client got nothing.
	TimedOut
	// TimedOutServfail: as TimedOut, but the client was sent a SERVFAIL that
	// tapproxy made (Response holds it).
	TimedOutServfail
	// Refused: the client was refused by the ACL; Response holds the
	// REFUSED that tapproxy made. Nothing went upstream.
	Refused
	// SendFailed: the query could not be sent upstream (socket error).
	SendFailed
	// ReplyFailed: the upstream answered but the reply to the client could
	// not be sent.
	ReplyFailed
	// UpstreamClosed: (TCP) the upstream connection closed before an answer
	// and the retry budget was spent.
	UpstreamClosed
	// ServfailAllDown: every upstream was down and the configured
	// all-down action is SERVFAIL; nothing went upstream.
	ServfailAllDown
	// ServfailLoop: the query came from tapproxy's own upstream socket (a
	// forwarding loop); answered SERVFAIL, nothing went upstream.
	ServfailLoop
)

var outcomeNames = [...]string{"answered", "timeout", "timeout_servfail", "refused", "send_failed", "reply_failed", "upstream_closed", "servfail_all_down", "servfail_loop"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

// Flags describe properties of a transaction; several may be set.
type Flags uint16

const (
	// Malformed: the query's header was valid but its question did not parse
	// (or QDCOUNT != 1); it was forwarded verbatim and paired on ID and
	// addresses alone.
	Malformed Flags = 1 << iota
	// Truncated: the response to the client had TC=1.
	Truncated
	// ResponseMalformed: the response's question did not parse but it was
	// accepted as a header-only error answer (RFC 5452 §9.1 exception) or
	// because the query itself was malformed.
	ResponseMalformed
)

// Transaction is one query and (if any) its response, with the times that
// tapproxy observed. All times are Unix nanoseconds (CLOCK_REALTIME); zero
// means "not observed".
type Transaction struct {
	// Seq is unique within the process and shared by every record logged
	// for this transaction.
	Seq uint64

	Transport Transport
	Outcome   Outcome
	Flags     Flags

	// Client is the query's source; Local is the address it was sent to
	// (from IP_PKTINFO on wildcard binds), which is also where the reply
	// comes from.
	Client netip.AddrPort
	Local  netip.AddrPort

	// Upstream is the server the query went to; UpstreamLocal is the
	// source address and port tapproxy used; UpstreamID the DNS ID on the
	// upstream leg (the client's ID is in Query[0:2]).
	Upstream      netip.AddrPort
	UpstreamLocal netip.AddrPort
	UpstreamID    uint16

	// Query is the client's message exactly as received. Response is the
	// message exactly as sent to the client (ID restored), or nil.
	Query    []byte
	Response []byte

	// QueryKernel is the kernel receive time of the query (SO_TIMESTAMPNS),
	// QueryRead when a worker read it, UpstreamSent when it was handed to the
	// upstream socket, ResponseKernel the kernel receive time of the
	// upstream's answer, ResponseRead when tapproxy read that answer, and
	// ReplySent when the reply was handed to the client socket.
	QueryKernel    int64
	QueryRead      int64
	UpstreamSent   int64
	ResponseKernel int64
	ResponseRead   int64
	ReplySent      int64
}

// Sink receives finished transactions. Submit must never block and must not
// retain t or any slice it points to after it returns.
type Sink interface {
	Submit(t *Transaction)
}

// Discard is a Sink that drops everything (logging off).
type Discard struct{}

// Submit implements Sink.
func (Discard) Submit(*Transaction) {}
