package server

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/tapproxy/tapproxy/internal/txn"
)

// BenchmarkUDPRoundTripPortRotation: one client's sequential round trips
// through the whole proxy, with fixed upstream ports (rotate=0) and with a
// new source port every N queries per socket. The difference between the
// rows is the rotation's cost per query: cpu-ns/op is the process's CPU
// time per round trip (socket open and close run on the readers, off the
// client worker's path, but not for free).
func BenchmarkUDPRoundTripPortRotation(b *testing.B) {
	for _, rot := range []int{0, 16, 64, 256, 1024} {
		b.Run(fmt.Sprintf("rotate=%d", rot), func(b *testing.B) {
			up := startEcho(b, false)
			s, stop := startServer(b, up.conn.LocalAddr(), txn.Discard{}, func(c *Config) {
				c.Upstream.Timeout = 5 * time.Second
				c.Upstream.PortRotation = rot
			})
			cl := newClient(b, s.Addrs()[0])
			q := query(b, "bench.test.", 7)
			for i := 0; i < 1000; i++ {
				if _, err := cl.exchange(q); err != nil {
					b.Fatal(err)
				}
			}
			before := s.Counters().PortRotations
			cpu0 := cpuTime(b)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := cl.exchange(q); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
			c := stop()
			b.ReportMetric(float64(c.PortRotations-before)/float64(b.N), "rotations/op")
		})
	}
}

// cpuTime is the process's user plus system CPU time in nanoseconds: the
// client, proxy and echo upstream of the benchmark together, so the
// difference between rows is what rotation adds, wherever it runs.
func cpuTime(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// TestSocketDropsStableUnderRotation: the per-socket drop list keeps one
// entry per client listen address (summed over its SO_REUSEPORT workers)
// and one per upstream, keyed by the upstream's address, however often the
// upstream sockets' ports rotate: a metric built on it gets no new series
// per port, and closed sockets' drops stay in the sums.
func TestSocketDropsStableUnderRotation(t *testing.T) {
	up := startEcho(t, false)
	s, stop := startServer(t, up.conn.LocalAddr(), txn.Discard{}, func(c *Config) {
		c.Workers = 2
		c.Upstream.Timeout = 5 * time.Second
		c.Upstream.PortRotation = 2
	})
	keys := func() map[SocketDrop]bool {
		m := map[SocketDrop]bool{}
		for _, d := range s.SocketDrops() {
			d.Drops = 0
			if m[d] {
				t.Errorf("%s %s listed twice", d.Kind, d.Local)
			}
			m[d] = true
		}
		return m
	}
	before := keys()
	cl := newClient(t, s.Addrs()[0])
	for i := 0; i < 200; i++ {
		deadline(t, cl.c)
		if _, err := cl.exchange(query(t, "drops.test.", uint16(i))); err != nil {
			t.Fatal(err)
		}
	}
	after := keys()
	c := stop()
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if c.PortRotations == 0 {
		t.Fatal("no rotation happened")
	}
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("socket drop keys changed with rotation:\nbefore %v\nafter  %v", before, after)
	}
	for k := range after {
		switch {
		case k.Kind == "client" && k.Local == s.Addrs()[0]:
		case k.Kind == "upstream" && k.Local == up.conn.LocalAddr():
		default:
			t.Errorf("unexpected entry %s %s", k.Kind, k.Local)
		}
	}
	if len(after) > 2 {
		t.Errorf("%d entries, want at most one client and one upstream", len(after))
	}
}
