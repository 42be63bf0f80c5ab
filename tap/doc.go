// Package tap owns dnstap output: the encoder for dnstap.proto messages, the
// bounded queue between the forwarding path and the writers, and the Frame
// Streams sinks (file, unix socket, TCP).
//
// It must never block the DNS path: Submit copies into a bounded queue or
// counts a drop, and encoding happens on the writer goroutine.
package tap
