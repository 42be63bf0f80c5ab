// Package e2e holds tapproxy's black-box end-to-end tests: they build the
// real binary (internal/testenv), run it as a process with the CLI flags of
// the contract, and talk to it only over loopback UDP, with a real Unbound
// or a scripted fake upstream behind it. They check what a client sees
// (byte-identical answers apart from the ID, REFUSED/SERVFAIL made by
// tapproxy, nothing for dropped datagrams) and the final counters tapproxy
// logs on SIGTERM (every invariant, every test).
//
// The package has no non-test code and must never be imported. Its tests
// must never send traffic beyond 127.0.0.0/8 and ::1, never sleep as
// synchronisation (every wait is a read deadline or a harness signal), and
// never skip: a missing tool fails the test, naming the package to install.
package e2e
