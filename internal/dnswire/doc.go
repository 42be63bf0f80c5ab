// Package dnswire parses the only parts of a DNS message that tapproxy needs:
// the 12-byte header (RFC 1035 §4.1.1) and the first question (§4.1.2),
// including compression pointers (§4.1.4), without allocating.
//
// Everything after the first question stays opaque bytes: tapproxy forwards
// messages verbatim and must never reject or alter what it does not
// understand. The parser has hard caps on label length (63), name length
// (255), and compression pointers (strictly backwards, at most MaxPointers),
// so hostile input costs bounded CPU.
package dnswire
