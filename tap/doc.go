// Package tap owns dnstap output: the encoder for dnstap.proto messages, the
// bounded queue between the forwarding path and the writers, and the Frame
// Streams sinks (file, unix socket, TCP).
//
// It must never block the DNS path: Submit copies into a bounded queue or
// counts a drop, and encoding happens on the writer goroutine. It must never
// re-encode or alter a DNS message, except the 16-bit ID of the upstream
// leg's copies (RFC 1035 §4.1.1), and never log a record twice.
//
// # Encoder
//
// Encoder is a hand-written, allocation-free encoder for the current
// dnstap.proto (github.com/dnstap/dnstap.pb; field numbers in encode.go).
// Each record is one serialized Dnstap message (type MESSAGE) carrying
// identity, version, extra and a Message. For one transaction it writes, in
// this order and subject to the configured TypeSet (flag syntax:
// "client_query,client_response,forwarder_query,forwarder_response", or the
// groups "client" (default), "forwarder", "all"):
//
//   - CLIENT_QUERY, always: query address/port = the client, response
//     address/port = the local address the query reached, query_time = the
//     kernel receive time (the worker's read time when the kernel gave
//     none), query_message = the query verbatim.
//   - FORWARDER_QUERY, when the query went upstream (UpstreamSent != 0):
//     query address/port = tapproxy's upstream socket, response address/port
//     = the upstream server, query_time = the upstream send time,
//     query_message = the query with the upstream ID.
//   - FORWARDER_RESPONSE, when in addition the upstream's answer arrived
//     (ResponseKernel != 0 and a response exists): same addresses,
//     query_time = upstream send time, response_time = the kernel receive
//     time of the answer, response_message = the answer with the upstream ID
//     (as received from the upstream).
//   - CLIENT_RESPONSE, when the client was sent a response (including
//     tapproxy's own SERVFAIL after a timeout and REFUSED): the client-leg
//     addresses, query_time as in CLIENT_QUERY (so the pair carries both
//     times, like dnsdist), response_time = when the reply was handed to the
//     socket, response_message = the reply verbatim.
//
// socket_protocol is UDP or TCP from the transaction's transport (both legs).
// socket_family is INET when both addresses are IPv4 (IPv4-mapped IPv6
// addresses are unmapped) and INET6 otherwise, with both addresses written
// as 16 bytes. Unknown addresses, zero or negative times and empty messages
// leave their fields out; query_zone and policy are never written.
//
// Every record's extra field is the transaction's annotation
// (annotate.Version "tapproxy/1 seq=… flags=…", see package annotate); all
// records of a transaction carry the same seq. A transaction that got no
// answer (outcome timeout) has only the query records, and its annotation's
// flags contain "timeout" (annotate.FlagTimeout): that is the timeout
// marker. With a SERVFAIL sent by tapproxy, flags are "timeout,servfail" and
// CLIENT_RESPONSE is present; an ACL refusal has "refused".
//
// # Logger
//
// Logger implements txn.Sink. Submit copies the transaction into a bounded
// queue: a ring of QueueEntries slots plus a byte arena of QueueBytes for
// the messages, both allocated once, under one mutex held for the copy
// only. Sampling (1 in N, Seq%N == 0) is decided there. One writer
// goroutine encodes and calls FrameWriter.WriteFrame for each record; it
// flushes when the queue becomes empty and at least every FlushInterval
// while it stays busy. The FrameWriter is only ever called from that
// goroutine, never concurrently.
//
// Every record produced is counted exactly once, in records (frames):
//
//	written              accepted by WriteFrame
//	dropped_queue_full   no slot or no arena room at Submit
//	dropped_too_large    serialized record above MaxFrameSize (default 64 KiB
//	                     + 4 KiB, which fits a 64 KiB TCP message); no
//	                     truncated fallback: the record is left out, the
//	                     transaction's other records are still written;
//	                     also a transaction whose messages exceed the whole
//	                     QueueBytes arena (impossible for DNS messages, as
//	                     QueueBytes is at least 256 KiB)
//	dropped_write_error  WriteFrame failed; the frame is not retried, and the
//	                     writer waits 10 ms, doubling up to 1 s while failures
//	                     continue, so that a dead destination is probed, not
//	                     hammered; the queue buffers (or drops as
//	                     queue_full) meanwhile
//	dropped_shutdown     still queued when Shutdown's deadline passed, or
//	                     submitted after Shutdown began
//
// so that, once Done is closed, produced = written + the four dropped_*.
// sampled_out counts transactions (they produce no records), submitted
// counts every Submit call. While drops happen the writer logs one summary
// line per SummaryInterval (default 5 s) with the counts since the last
// line, never one line per drop.
//
// Shutdown stops accepting, lets the writer drain the queue, flush and
// Close the FrameWriter (STOP, and FINISH for sockets). If its context ends
// first, the queue is counted dropped_shutdown at once and the writer gives
// up after the WriteFrame in progress, which the FrameWriter bounds with its
// own deadlines.
package tap
