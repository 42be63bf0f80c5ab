package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
)

func TestRetryTCPPort(t *testing.T) {
	inUse := fmt.Errorf("listening on tcp: %w", syscall.EADDRINUSE)
	zero := Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}}
	fixed := Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:5300")}}
	tests := []struct {
		name string
		cfg  Config
		err  error
		want bool
	}{
		{"port 0, in use", zero, inUse, true},
		{"fixed port, in use", fixed, inUse, false},
		{"port 0, other error", zero, errors.New("permission denied"), false},
	}
	for _, tc := range tests {
		if _, got := retryTCPPort(context.Background(), tc.cfg, tc.err); got != tc.want {
			t.Errorf("%s: retry=%v, want %v", tc.name, got, tc.want)
		}
	}
	// Bounded: the ninth attempt is refused.
	ctx := context.Background()
	for i := range 9 {
		var ok bool
		ctx, ok = retryTCPPort(ctx, zero, inUse)
		if ok != (i < 8) {
			t.Fatalf("attempt %d: retry=%v", i, ok)
		}
	}
}

// TestTCPCountersCheck: the invariants catch a fate counted twice.
func TestTCPCountersCheck(t *testing.T) {
	c := TCPCounters{Accepted: 2, Closed: []uint64{2}, Received: 3, Handled: 3, Forwarded: 3, Answered: 3,
		RespReceived: 3, RespMatched: 3, UpDialed: 1, UpClosed: []uint64{1}}
	if err := c.check(); err != nil {
		t.Fatalf("consistent counters rejected: %v", err)
	}
	c.Answered++
	if err := c.check(); err == nil {
		t.Fatal("answered counted twice: not caught")
	}
}
