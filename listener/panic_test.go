package listener

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// chanHandler hands every accepted query's ID to a channel.
type chanHandler struct{ ids chan uint16 }

func (h chanHandler) HandleQueries(pkts []*Packet, _ int64) {
	for _, p := range pkts {
		d := p.Data()
		h.ids <- uint16(d[0])<<8 | uint16(d[1])
	}
}

// syncBuf is a bytes.Buffer safe for the worker's logger and the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestWorkerRecoversPanic: a panic while sorting a datagram is recovered
// per datagram; that datagram counts dropped_panic, the others in the same
// read and every later one are handled, and the report carries the stack.
func TestWorkerRecoversPanic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := ListenUDP(ctx, netip.MustParseAddrPort("127.0.0.1:0"), Options{PktInfo: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var logBuf syncBuf
	h := chanHandler{ids: make(chan uint16, 64)}
	w := NewWorker(c, WorkerConfig{Log: slog.New(slog.NewTextHandler(&logBuf, nil))}, h)
	calls := 0
	w.fault = func() {
		calls++ // only the worker goroutine runs the fault point
		if calls%3 == 2 {
			panic("injected listener fault")
		}
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	cl, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(c.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n = 30
	for i := 0; i < n; i++ {
		q := []byte{0, byte(i), 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		if _, err := cl.Write(q); err != nil {
			t.Fatal(err)
		}
		// Wait for each query's fate before the next, so that the
		// injected panics fall on known datagrams (every third one).
		if i%3 != 1 {
			if id := <-h.ids; id != uint16(i) {
				t.Fatalf("handled ID %d, want %d", id, i)
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := w.Stats()
	if got := st.DroppedPanic.Load(); got != n/3 {
		t.Errorf("dropped_panic = %d, want %d", got, n/3)
	}
	if got := st.Handled.Load(); got != n-n/3 {
		t.Errorf("handled = %d, want %d", got, n-n/3)
	}
	if sum := st.DroppedShort.Load() + st.DroppedQR.Load() + st.RefusedACL.Load() + st.DroppedACL.Load() +
		st.DroppedPanic.Load() + st.Handled.Load(); sum != st.Received.Load() {
		t.Errorf("received %d != sum of fates %d", st.Received.Load(), sum)
	}
	out := logBuf.String()
	if !strings.Contains(out, "where=listener.udp") || !strings.Contains(out, "injected listener fault") || !strings.Contains(out, "panic_test.go") {
		t.Errorf("panic report lacks where, value or stack:\n%s", out)
	}
}
