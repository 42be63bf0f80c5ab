// Package txn defines the record of one DNS transaction as it flows from the
// forwarding path (listener/, upstream/) to the consumers that learn from it
// (annotate/) and log it (tap/). It owns vocabulary, not behaviour.
//
// A Transaction is built by the forwarding path in memory it owns and reuses.
// A Sink receives it by pointer and must copy whatever it needs before Submit
// returns: the slices point into receive buffers that are recycled at once.
package txn
