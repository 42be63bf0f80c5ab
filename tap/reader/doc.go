// Package reader owns "tapproxy read": decoding dnstap Frame Streams files
// and streams (dnstap.proto, the fstrm "Frame Streams" framing), rendering
// the messages dig-like, as JSON lines or as YAML, pairing queries with
// responses (Match, reused by the latency report), and the collector side of
// bidirectional Frame Streams connections on unix sockets and TCP.
//
// It must never panic or grow without bound on hostile input: frames are
// capped (DefaultMaxFrameSize), oversized ones are skipped by discarding,
// and a malformed DNS payload inside a dnstap message is shown as hex with a
// "malformed" note, never treated as an error (real servers log malformed
// queries). It must never be imported by the forwarding path; it is a
// diagnostic reader, not part of tapproxy's data path, and it never sends
// anything but Frame Streams control frames (ACCEPT, FINISH) to producers.
//
// # Strictness
//
// A file must be START (content type exactly "protobuf:dnstap.Dnstap"),
// data frames, STOP, and nothing after STOP. Everything else is reported
// with an offset, after every complete message before it was printed. The
// golang-framestream Reader is used for the bidirectional collector
// (handshake, FINISH); files are decoded by Decoder because that Reader
// cannot tell a STOP frame from an input that simply ends.
//
// # Exit codes of "tapproxy read"
//
//	0  success: every frame decoded and the file ended with a STOP frame
//	1  usage error (bad flags or arguments)
//	2  cannot open or read the input, write the output, or listen
//	3  not a Frame Streams file (this includes an empty file), or a content type other than protobuf:dnstap.Dnstap
//	4  the file ends in the middle of a frame or without a STOP frame (every complete message is printed first)
//	5  a data frame is not a decodable Dnstap protobuf (its frame index is reported; the others are still printed)
//
// When a file has undecodable frames and is also truncated, 4 wins (both
// problems are reported on stderr). In collector mode the command exits 0
// after SIGINT/SIGTERM, 2 when it cannot listen or write, and 5 when a
// producer sent an undecodable frame; a producer that fails the handshake
// (other content type) is logged and refused, not fatal.
//
// # Pairing
//
// Match implements the corpus rule (shared/testdata/dnstap/README.md): same
// socket family, protocol, addresses and ports; same DNS ID with QR=1 on the
// response; same question (RFC 5452 §9.1) unless either side has none;
// response_time not earlier than query_time; file order, equal query_time
// values and response type = query type + 1 are never relied on. Records
// that both carry a tapproxy annotation (annotate package, Dnstap.extra) are
// paired by its seq instead of ID and question. Producer quirks handled:
// named stamps query and response from a cached clock (equal times are
// accepted, latency 0), kdig's nanoseconds are elapsed time (differences
// stay right; a note says the absolute times are not), unbound writes
// port 0 for upstream TCP (compared as a value), responses carrying both
// times (the response's own query_time is not compared). See Match for the
// tie-break rule.
package reader
