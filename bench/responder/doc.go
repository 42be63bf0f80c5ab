// Package responder is the reference upstream for tapproxy's benchmarks: a
// tiny authoritative-only UDP server that answers every name under one test
// zone (default "bench.test.") with fixed data, as cheaply as possible, so
// that a benchmark measures the proxy in front of it and not the upstream.
//
// What it owns:
//   - Zone.Answer, which builds an answer by copying the query's header and
//     question and appending fixed, pre-encoded records (RFC 1035 §4.1). It
//     never parses more than the question and the additional section's OPT
//     record, never allocates and never panics on bad input: every input gets
//     exactly one Outcome, which the server counts.
//   - Server, which reads and writes in batches (recvmmsg/sendmmsg on Linux,
//     one datagram per syscall elsewhere) on N SO_REUSEPORT sockets, one fixed
//     worker goroutine each, with no allocation per packet.
//
// What it answers:
//   - A, AAAA and TXT for any name at or below the zone apex: one record with
//     fixed data (192.0.2.1, 2001:db8::1, "bench"; RFC 5737 / RFC 3849
//     documentation addresses), TTL 300, AA set.
//   - NXDOMAIN with the zone's SOA in the authority section (RFC 2308 §3) for
//     names at or below "nx." + zone.
//   - NOERROR/NODATA with the SOA (RFC 2308 §2.2) for other types in the zone.
//   - REFUSED for names outside the zone or a class other than IN.
//   - FORMERR (header only) for QDCOUNT != 1, compressed or truncated
//     question names and undecodable or duplicate OPT records
//     (RFC 6891 §6.1.1); NOTIMP (header only) for opcodes other than QUERY.
//   - Nothing for datagrams shorter than a header or with QR=1.
//
// When the query carries an EDNS OPT record the answer carries a minimal one
// (UDP size 1232, DO copied, no options; RFC 6891 §6.1.1, RFC 3225 §3); an
// OPT with a version other than 0 gets BADVERS (RFC 6891 §6.1.3). Answers
// never exceed 512 octets, so truncation never arises.
//
// What it must never do: allocate, log or block per packet; listen anywhere
// but where it is told (the command refuses non-loopback addresses).
package responder
