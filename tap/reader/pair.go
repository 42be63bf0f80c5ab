package reader

import (
	"cmp"
	"net/netip"
	"slices"
	"time"
)

// Rule says how a Pair was matched.
type Rule uint8

const (
	// BySeq: both records carry a tapproxy annotation with the same seq,
	// and the same endpoints. tapproxy already paired them (RFC 5452 §9.1)
	// when it logged them, so ID and question are not compared again.
	BySeq Rule = iota + 1
	// ByQuestion: same endpoints, same DNS ID, same question
	// (RFC 5452 §9.1: QNAME case-insensitively, QTYPE, QCLASS).
	ByQuestion
	// ByID: same endpoints and DNS ID; the response (or the query) has no
	// question that can be compared, e.g. a FORMERR or NOTIMP answer with
	// QDCOUNT 0, or an unparsable question.
	ByID
	// SelfContained: one response message carrying both query_message and
	// response_message (and no separate query message matched it).
	SelfContained
)

func (r Rule) String() string {
	switch r {
	case BySeq:
		return "seq"
	case ByQuestion:
		return "question"
	case ByID:
		return "id"
	case SelfContained:
		return "self"
	}
	return "unknown"
}

// Pair is a query message and the response message that answers it.
type Pair struct {
	Query    *Message
	Response *Message // == Query for SelfContained
	Rule     Rule
	// Latency is Response.ResponseTime − Query.QueryTime; LatencyKnown is
	// false when either time is absent. It may be 0 with producers that
	// stamp both from a cached clock (named).
	Latency      time.Duration
	LatencyKnown bool
}

// endpoints is the socket family, protocol, addresses and ports of a
// message. query_* is always the initiator in dnstap (addresses are not
// swapped in responses), so query and response compare field by field.
type endpoints struct {
	family, protocol int32
	qaddr, raddr     netip.Addr
	qport, rport     int64
}

func endpointsOf(m *Message) endpoints {
	return endpoints{m.Family, m.Protocol, m.QueryAddr, m.ResponseAddr, m.QueryPort, m.ResponsePort}
}

type idKey struct {
	ep endpoints
	id uint16
}

type seqKey struct {
	ep  endpoints
	seq uint64
}

// Match pairs queries with responses. The rule (deterministic, independent
// of file order; corpus README "Pairing rule"):
//
//   - A query is a *_QUERY message with a query_message of at least a DNS
//     header; a response is a *_RESPONSE message with a response_message of
//     at least a header and QR=1. The type numbers are not otherwise
//     compared (named answers an AUTH_QUERY with a CLIENT_RESPONSE).
//   - Both sides must have the same socket family, protocol, query
//     address/port and response address/port (absent fields compare equal
//     to absent fields only; unbound's port 0 is just a value).
//   - When both carry a tapproxy annotation, the seq must be equal and
//     nothing else is compared (rule BySeq).
//   - Otherwise the DNS IDs must be equal and, when both have a first
//     question that parses, the questions must be equal (ByQuestion); when
//     either has none, ID and endpoints decide (ByID).
//   - When both times are present, the response's response_time must not be
//     earlier than the query's query_time (equal is allowed: named's cached
//     clock). A response's own query_time is not compared (unbound's is
//     earlier than its query message's; dnsdist's is equal).
//   - Responses are taken in order of (response_time, frame index), absent
//     times first; each takes, among the unpaired queries it matches, the
//     one with the earliest (query_time, frame index).
//   - A response left unpaired that carries its own query_message with the
//     same DNS ID becomes a SelfContained pair.
//
// Pairs are returned in order of the query's (query_time, frame index), the
// unmatched messages in frame order. Messages that are neither usable
// queries nor usable responses are returned as unmatched too, so every
// message is accounted for exactly once.
func Match(msgs []*Message) (pairs []Pair, unmatchedQueries, unmatchedResponses []*Message) {
	byID := make(map[idKey][]*Message)
	bySeq := make(map[seqKey][]*Message)
	paired := make(map[*Message]bool)
	var responses []*Message
	for _, m := range msgs {
		switch {
		case m.IsQuery():
			if m.QueryMsg == nil || !m.QueryMsg.HasHeader {
				continue
			}
			ep := endpointsOf(m)
			k := idKey{ep, m.QueryMsg.Header.ID}
			byID[k] = append(byID[k], m)
			if m.Annotation != nil {
				sk := seqKey{ep, m.Annotation.Seq}
				bySeq[sk] = append(bySeq[sk], m)
			}
		case m.IsResponse():
			responses = append(responses, m)
		}
	}
	for _, l := range byID {
		slices.SortStableFunc(l, byQueryTime)
	}
	for _, l := range bySeq {
		slices.SortStableFunc(l, byQueryTime)
	}
	slices.SortStableFunc(responses, func(a, b *Message) int {
		if c := a.ResponseTime.Compare(b.ResponseTime); c != 0 {
			return c
		}
		return cmp.Compare(a.Frame, b.Frame)
	})

	for _, r := range responses {
		if r.ResponseMsg == nil || !r.ResponseMsg.HasHeader || !r.ResponseMsg.Header.QR() {
			continue
		}
		ep := endpointsOf(r)
		var q *Message
		rule := Rule(0)
		if r.Annotation != nil {
			for _, c := range bySeq[seqKey{ep, r.Annotation.Seq}] {
				if !paired[c] && timeOK(c, r) {
					q, rule = c, BySeq
					break
				}
			}
		}
		if q == nil {
			for _, c := range byID[idKey{ep, r.ResponseMsg.Header.ID}] {
				if paired[c] || !timeOK(c, r) {
					continue
				}
				if c.Annotation != nil && r.Annotation != nil {
					continue // both annotated: seq decides, and it differs
				}
				if !c.QueryMsg.usableQuestion() || !r.ResponseMsg.usableQuestion() {
					q, rule = c, ByID
					break
				}
				if c.QueryMsg.Question.Equal(r.ResponseMsg.Question) {
					q, rule = c, ByQuestion
					break
				}
			}
		}
		if q == nil {
			continue
		}
		paired[q], paired[r] = true, true
		pairs = append(pairs, newPair(q, r, rule))
	}
	for _, r := range responses {
		if paired[r] || r.QueryMsg == nil || r.ResponseMsg == nil ||
			!r.QueryMsg.HasHeader || !r.ResponseMsg.HasHeader ||
			r.QueryMsg.Header.ID != r.ResponseMsg.Header.ID {
			continue
		}
		paired[r] = true
		pairs = append(pairs, newPair(r, r, SelfContained))
	}
	slices.SortStableFunc(pairs, func(a, b Pair) int { return byQueryTime(a.Query, b.Query) })
	for _, m := range msgs {
		if paired[m] {
			continue
		}
		if m.IsQuery() {
			unmatchedQueries = append(unmatchedQueries, m)
		} else {
			unmatchedResponses = append(unmatchedResponses, m)
		}
	}
	slices.SortStableFunc(unmatchedQueries, byFrame)
	slices.SortStableFunc(unmatchedResponses, byFrame)
	return pairs, unmatchedQueries, unmatchedResponses
}

func newPair(q, r *Message, rule Rule) Pair {
	p := Pair{Query: q, Response: r, Rule: rule}
	if !q.QueryTime.IsZero() && !r.ResponseTime.IsZero() {
		p.Latency, p.LatencyKnown = r.ResponseTime.Sub(q.QueryTime), true
	}
	return p
}

// timeOK: the response was not stamped before the query.
func timeOK(q, r *Message) bool {
	return q.QueryTime.IsZero() || r.ResponseTime.IsZero() || !r.ResponseTime.Before(q.QueryTime)
}

func byQueryTime(a, b *Message) int {
	if c := a.QueryTime.Compare(b.QueryTime); c != 0 {
		return c
	}
	return cmp.Compare(a.Frame, b.Frame)
}

func byFrame(a, b *Message) int { return cmp.Compare(a.Frame, b.Frame) }
