// Package annotate owns what tapproxy learns about a transaction beyond its
// bytes:
//
//   - the latency breakdown (client-socket queue delay, time inside the
//     proxy, upstream round trip, upstream-socket queue delay, total) and
//     flags (malformed, timeout, truncated), carried as the versioned text
//     annotation ("tapproxy/1 …") in dnstap's extra field (dnstap.proto
//     field 3), so writers and readers share one definition;
//   - Observer, a txn.Sink that feeds the same breakdown into Prometheus
//     histograms per listener, upstream and transport, and Tee, which puts
//     it in front of the dnstap sink;
//   - ZoneCache, the zone cut for dnstap's query_zone (field 11): the
//     closest enclosing zone known from SOA/NS owner names seen in answers,
//     in a bounded, sharded LRU (hashicorp/golang-lru/v2).
//
// It must never block or allocate on the forwarding path: Append writes
// into a caller's buffer and Observer.Submit touches only pre-resolved
// atomic histogram children. ZoneCache.Learn parses answers and runs on the
// dnstap writer goroutine, never on the DNS path.
package annotate
