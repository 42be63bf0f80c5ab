package server

import "testing"

// TestCheckCountsPanicFates: a recovered panic is one fate of its datagram
// (dropped_panic, resp_panic, tcp_dropped_panic); Check balances only when
// it is counted there, and panics sums them.
func TestCheckCountsPanicFates(t *testing.T) {
	tcp := (&Server{}).tcpCounters() // TCP off: zero, with the per-reason slices sized
	tcp.Received, tcp.Handled, tcp.DroppedPanic, tcp.Forwarded, tcp.Answered = 2, 2, 1, 1, 1
	ok := Counters{Received: 3, DroppedPanic: 1, Forwarded: 2, Answered: 2,
		RespReceived: 3, RespMatched: 2, RespPanic: 1, TCP: tcp}
	if err := ok.Check(); err != nil {
		t.Fatalf("balanced counters: %v", err)
	}
	for name, c := range map[string]Counters{
		"udp panic not counted":   func() Counters { c := ok; c.DroppedPanic = 0; return c }(),
		"resp panic not counted":  func() Counters { c := ok; c.RespPanic = 0; return c }(),
		"tcp panic not counted":   func() Counters { c := ok; c.TCP.DroppedPanic = 0; return c }(),
		"udp panic counted twice": func() Counters { c := ok; c.Forwarded++; c.Answered++; return c }(),
	} {
		if c.Check() == nil {
			t.Errorf("%s: Check passed", name)
		}
	}
	attrs := map[string]bool{}
	a := ok.Attrs()
	for i := 0; i < len(a); i += 2 {
		attrs[a[i].(string)] = true
	}
	for _, k := range []string{"dropped_panic", "resp_panic", "panics", "tcp_dropped_panic"} {
		if !attrs[k] {
			t.Errorf("final counters lack %s", k)
		}
	}
}
