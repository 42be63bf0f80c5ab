// Package annotate owns what tapproxy learns about a transaction beyond its
// bytes: the latency breakdown (client-socket queue delay, time inside the
// proxy, upstream round trip, upstream-socket queue delay, total), flags
// (malformed, timeout, truncated) and, later, the zone cut. It also owns the
// versioned text annotation ("tapproxy/1 …") carried in dnstap's extra field
// (dnstap.proto field 3), so writers and readers share one definition.
//
// It must never block or allocate on the forwarding path: Append writes into
// a caller's buffer.
package annotate
