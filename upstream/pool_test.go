package upstream

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
)

func specs(ws ...int) []Spec {
	var out []Spec
	for i, w := range ws {
		out = append(out, Spec{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(5000+i)), Weight: w})
	}
	return out
}

func TestParseSpec(t *testing.T) {
	tests := []struct {
		in      string
		want    Spec
		wantErr bool
	}{
		{"127.0.0.1:53", Spec{Addr: netip.MustParseAddrPort("127.0.0.1:53"), Weight: 1}, false},
		{"[::1]:5353;weight=3;proxy-v2", Spec{Addr: netip.MustParseAddrPort("[::1]:5353"), Weight: 3, ProxyV2: true}, false},
		{"127.0.0.1", Spec{}, true},
		{"127.0.0.1:53;weight=0", Spec{}, true},
		{"127.0.0.1:53;bogus", Spec{}, true},
		{"127.0.0.1:0", Spec{}, true},
	}
	for _, tc := range tests {
		got, err := ParseSpec(tc.in)
		if (err != nil) != tc.wantErr || (!tc.wantErr && got != tc.want) {
			t.Errorf("%q: got %+v, %v", tc.in, got, err)
		}
	}
}

func pickCounts(t *testing.T, p *Pool, n int, name func(i int) []byte) []int {
	t.Helper()
	counts := make([]int, len(p.ups))
	for i := 0; i < n; i++ {
		u, err := p.Pick(name(i))
		if err != nil {
			t.Fatal(err)
		}
		counts[u.index]++
	}
	return counts
}

func fixed(i int) []byte  { return []byte("\x03www\x07example\x00") }
func varied(i int) []byte { return []byte(fmt.Sprintf("\x04n%03d\x04test\x00", i%1000)) }

func TestPolicies(t *testing.T) {
	p, _ := NewPool(specs(1, 1, 1), FirstAvailable, HealthConfig{}, nil)
	if c := pickCounts(t, p, 100, fixed); c[0] != 100 {
		t.Errorf("first-available: %v", c)
	}
	p.setUp(p.ups[0], false, "test")
	if c := pickCounts(t, p, 100, fixed); c[1] != 100 {
		t.Errorf("first-available with #0 down: %v", c)
	}

	p, _ = NewPool(specs(1, 2, 1), RoundRobin, HealthConfig{}, nil)
	if c := pickCounts(t, p, 400, fixed); c[0] != 100 || c[1] != 200 || c[2] != 100 {
		t.Errorf("weighted round-robin: %v", c)
	}
	p.setUp(p.ups[1], false, "test")
	if c := pickCounts(t, p, 400, fixed); c[1] != 0 || c[0]+c[2] != 400 {
		t.Errorf("round-robin skips down: %v", c)
	}

	p, _ = NewPool(specs(1, 1), LeastOutstanding, HealthConfig{}, nil)
	p.ups[0].InFlight.Store(10)
	if c := pickCounts(t, p, 10, fixed); c[1] != 10 {
		t.Errorf("least-outstanding: %v", c)
	}

	p, _ = NewPool(specs(1, 1, 1), ConsistentHash, HealthConfig{}, nil)
	first := map[string]int{}
	for i := 0; i < 1000; i++ {
		u, _ := p.Pick(varied(i))
		first[string(varied(i))] = u.index
		if again, _ := p.Pick(varied(i)); again != u {
			t.Fatal("consistent hash not stable")
		}
	}
	c := pickCounts(t, p, 1000, varied)
	for i, n := range c {
		if n < 200 {
			t.Errorf("consistent hash badly skewed: upstream %d got %d of 1000", i, n)
		}
	}
	// Taking one down moves only its names.
	p.setUp(p.ups[2], false, "test")
	moved := 0
	for name, idx := range first {
		u, _ := p.Pick([]byte(name))
		if idx != 2 && u.index != idx {
			moved++
		}
	}
	if moved != 0 {
		t.Errorf("%d names of healthy upstreams moved", moved)
	}
}

func TestHealthTransitions(t *testing.T) {
	p, _ := NewPool(specs(1, 1), FirstAvailable, HealthConfig{FailThreshold: 3, RiseThreshold: 2}, nil)
	u := p.ups[0]
	p.Failure(u, true)
	p.Failure(u, false)
	p.Success(u, 0) // resets the streak
	p.Failure(u, true)
	p.Failure(u, true)
	if !u.Up() {
		t.Fatal("down before 3 consecutive failures")
	}
	p.Failure(u, true)
	if u.Up() || u.Transitions.Load() != 1 {
		t.Fatal("not down after 3 consecutive failures")
	}
	p.ProbeResult(u, true)
	p.ProbeResult(u, false)
	p.ProbeResult(u, true)
	if u.Up() {
		t.Fatal("up before 2 consecutive good probes")
	}
	p.ProbeResult(u, true)
	if !u.Up() || u.Transitions.Load() != 2 {
		t.Fatal("not up after 2 good probes")
	}
}

func TestAllDown(t *testing.T) {
	p, _ := NewPool(specs(1, 1), RoundRobin, HealthConfig{AllDown: AllDownServfail}, nil)
	for _, u := range p.ups {
		p.setUp(u, false, "test")
	}
	if _, err := p.Pick(nil); err != ErrAllDown {
		t.Fatalf("servfail policy: %v", err)
	}
	p, _ = NewPool(specs(1, 1), RoundRobin, HealthConfig{AllDown: AllDownLeastBad}, nil)
	p.Failure(p.ups[1], true)
	p.Failure(p.ups[0], true)
	for _, u := range p.ups {
		p.setUp(u, false, "test")
	}
	if u, err := p.Pick(nil); err != nil || u.index != 1 {
		t.Fatalf("least-bad should pick the one that failed longest ago: %v %v", u, err)
	}
}

func TestPickAllocs(t *testing.T) {
	for _, pol := range []Policy{FirstAvailable, RoundRobin, LeastOutstanding, ConsistentHash} {
		p, _ := NewPool(specs(1, 2, 3), pol, HealthConfig{}, nil)
		name := fixed(0)
		if n := testing.AllocsPerRun(1000, func() { _, _ = p.Pick(name) }); n != 0 {
			t.Errorf("%v: Pick allocates %v", pol, n)
		}
	}
}

// TestProxyV2Header checks the header byte for byte against the layout in
// haproxy's proxy-protocol.txt §2.2.
func TestProxyV2Header(t *testing.T) {
	sig := []byte("\r\n\r\n\x00\r\nQUIT\n")
	got := AppendProxyV2(nil, netip.MustParseAddrPort("127.0.0.2:40000"), netip.MustParseAddrPort("127.0.0.1:53"), false)
	want := append(append([]byte{}, sig...), 0x21, 0x12, 0, 12, 127, 0, 0, 2, 127, 0, 0, 1, 0x9c, 0x40, 0, 53)
	if !bytes.Equal(got, want) {
		t.Errorf("v4 udp:\n got % x\nwant % x", got, want)
	}
	got = AppendProxyV2(nil, netip.MustParseAddrPort("[::1]:1"), netip.MustParseAddrPort("[::2]:2"), true)
	if len(got) != 16+36 || got[13] != 0x21 || got[15] != 36 {
		t.Errorf("v6 tcp: % x", got)
	}
	if len(got) > MaxProxyV2Header {
		t.Error("header longer than MaxProxyV2Header")
	}
}
