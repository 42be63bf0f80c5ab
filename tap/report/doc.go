// Package report owns "tapproxy report": a latency and traffic summary of a
// dnstap file written by tapproxy or by any other producer (Unbound, BIND,
// dnsdist, kdig): queries per second over time; latency percentiles
// overall, per upstream and per query type; for tapproxy files the
// breakdown into client-socket queue, time inside tapproxy and upstream
// round trip (from the "tapproxy/1" annotation); the rcode mix; the top
// query names and clients; unanswered queries and responses without a
// query; and the share of answers within 1, 10 and 100 ms. It renders a
// terminal report, JSON, or a self-contained HTML file with inline SVG
// plots.
//
// Decoding and pairing are tap/reader's (Decoder, Match: RFC 5452 §9.1
// question matching, or the annotation's seq). This package only counts and
// sorts: it must never send anything anywhere, never load anything into the
// HTML it writes from elsewhere (no scripts, fonts or styles from the
// network), and never fail on odd input: a malformed DNS payload is counted
// under "-" and a damaged file is summarised up to the damage, with the
// damage reported.
//
// # Definitions
//
// The client leg is every message type except RESOLVER_* and FORWARDER_*
// (those are a server's own queries to other servers: the upstream leg).
// Queries, answers, latency, rcodes, names and clients are about the client
// leg. A pair's latency is response_time − query_time as tap/reader computes
// it. Percentiles use the nearest-rank method: p is the ⌈p·n⌉-th smallest
// value. "Within X ms" counts latencies ≤ X.
//
// Per upstream, the latency is the upstream round trip: for tapproxy
// records the annotation's rtt, grouped by its up= address (one value per
// transaction, whether or not FORWARDER records were logged); for other
// producers the RESOLVER/FORWARDER pairs, grouped by the response address.
package report
