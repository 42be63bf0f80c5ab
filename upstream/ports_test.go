package upstream

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/tapproxy/tapproxy/listener"
)

// BenchmarkRotationSocket is the cost of one port rotation's socket work:
// opening a connected UDP socket on a random port (as a spare is opened)
// and closing one (as a drained socket is), with the options the proxy
// sets. Divide by --upstream-port-rotate for the cost per query.
func BenchmarkRotationSocket(b *testing.B) {
	r, _ := readPortRange("/")
	to := netip.MustParseAddrPort("127.0.0.1:53") // connect only: nothing is sent
	var retries, fallbacks atomic.Uint64
	b.ReportAllocs()
	for b.Loop() {
		c, err := dialRandom(context.Background(), to, listener.Options{}, r, &retries, &fallbacks)
		if err != nil {
			b.Fatal(err)
		}
		_ = c.Close()
	}
	b.ReportMetric(float64(retries.Load())/float64(b.N), "retries/op")
}

// BenchmarkKernelPortSocket is BenchmarkRotationSocket with the kernel
// choosing the port (the fixed-port open), for comparison.
func BenchmarkKernelPortSocket(b *testing.B) {
	to := netip.MustParseAddrPort("127.0.0.1:53")
	b.ReportAllocs()
	for b.Loop() {
		c, err := listener.DialUDP(context.Background(), to, listener.Options{})
		if err != nil {
			b.Fatal(err)
		}
		_ = c.Close()
	}
}
