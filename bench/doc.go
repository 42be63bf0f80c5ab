// Package bench holds tapproxy's performance harness: a reference upstream
// responder (bench/responder, bench/cmd/responder), Go benchmarks of the
// per-packet path (this package's tests: internal/dnswire), and scripts that
// run dnsperf against tapproxy, the upstream directly and dnsdist (run.sh)
// and across worker counts (scale.sh). README.md says how to run them.
// Results are recorded in bench/RESULTS.md, never asserted in tests.
//
// What it must never do: send traffic anywhere but loopback, run a load
// that is not bounded in time (every dnsperf run has -l), or record a number
// that was not measured with the header the scripts print.
package bench
