// Package faultinject holds what the data path needs to survive its own
// bugs: PanicLog, the rate-limited report of a recovered panic, and the
// convention for test-only fault points.
//
// A fault point is an unexported func field of the object that owns the
// loop (listener.Worker, upstream.Worker, upstream.TCPForwarder,
// tap.Logger), nil in every normal build and settable only by tests in the
// same package. That keeps no package-level mutable state: the production
// cost is one nil check per packet, and no flag or global can switch a fault
// on in a running proxy.
//
// This package must never recover panics itself, decide a packet's fate or
// hold global state: each loop recovers per packet, counts the packet in
// its own panic fate and only asks PanicLog to report.
package faultinject
