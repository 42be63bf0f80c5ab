// Package upstream owns forwarding: upstream sockets whose source ports are
// drawn at random from the ephemeral range and replaced every PortRotation
// queries (RFC 5452 §9.2, §10: an off-path forger must guess port and ID; a
// retired port is read until its queries are done), a fresh crypto/rand ID
// per forwarded query (unique among that socket's in-flight queries), a
// bounded in-flight table, and the
// acceptance of answers per RFC 5452 §9.1 (source address and port, ID, and
// the question repeated; header-only error answers accepted).
//
// Bytes are forwarded verbatim: only the 16-bit ID is rewritten on the way up
// and restored on the way down. A datagram that is not an acceptable answer
// is counted by reason and dropped, and the wait for the real answer goes on
// (the CVE-2023-28452 lesson: a bad datagram must never end the wait).
package upstream
