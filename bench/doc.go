// Package bench holds tapproxy's performance harness: a reference upstream
// responder, Go benchmarks of the per-packet path, and scripts that run
// dnsperf against tapproxy, the upstream directly and dnsdist. Results are
// recorded in bench/RESULTS.md, never asserted in tests.
package bench
