// Package testenv is the test harness shared by tapproxy's tests: it finds
// the module root and the dnstap corpus in ../shared/testdata/dnstap, checks
// that the external tools a test needs are installed, picks free loopback
// ports, starts real DNS servers (Unbound, BIND named) with private configs
// in t.TempDir(), builds and runs the tapproxy binary, parses its
// `msg="final counters"` line and checks the counter invariants of the CLI
// contract, and provides a scriptable in-process UDP DNS server
// (FakeUpstream) for the answers a real server never sends.
//
// It owns nothing outside tests and must never be imported by non-test code.
// It must never:
//   - send traffic anywhere but 127.0.0.0/8 and ::1 (the servers it starts
//     are configured to answer only from local data, never to recurse);
//   - skip a test: a missing tool or corpus is a t.Fatal naming the Debian
//     package to install, so a CI machine without it fails loudly;
//   - stop a process it did not start (everything is killed by PID from
//     t.Cleanup);
//   - wait without a bound: every wait has a deadline, and readiness is a
//     signal (a log line, an answered query), never a sleep.
package testenv
