package listener

import (
	"context"
	"net/netip"
	"testing"
)

// TestKernelDropsWithoutReading fills a small receive queue and checks the
// drop count before anything is read. SO_RXQ_OVFL alone would say 0 here:
// the datagrams still queued were queued before the drops, and each
// carries the count as it was then. Every datagram the sender got out is
// either read or counted dropped, exactly; the count survives Close.
func TestKernelDropsWithoutReading(t *testing.T) {
	ctx := context.Background()
	srv, err := ListenUDP(ctx, netip.MustParseAddrPort("127.0.0.1:0"), Options{RcvBuf: 2048})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := DialUDP(ctx, srv.LocalAddr(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if d := srv.KernelDrops(); d != 0 {
		t.Fatalf("drops before any traffic: %d", d)
	}
	const per, batches = 50, 10
	out := NewBatch(per, 64)
	for i := range out.Pkts {
		out.Pkts[i].N = 64
	}
	w := cli.NewWriter(per)
	sent := 0
	for range batches {
		failed, err := w.Write(out.Pkts)
		if err != nil {
			t.Fatal(err)
		}
		sent += per - failed
	}
	drops := srv.KernelDrops()
	// Read for counters and at each rotated socket's close: no allocation.
	if a := testing.AllocsPerRun(100, func() { srv.KernelDrops() }); a != 0 {
		t.Errorf("KernelDrops: %.1f allocations per call, want 0", a)
	}
	if drops == 0 || int(drops) >= sent {
		t.Fatalf("%d sent into a ~2 KiB queue: %d counted dropped before reading, want some but not all", sent, drops)
	}
	in := NewBatch(64, MaxDatagram)
	r := srv.NewReader(in)
	read := 0
	for {
		n, err := r.ReadNow()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		read += n
	}
	if got := srv.KernelDrops(); got != drops || read+int(drops) != sent {
		t.Errorf("sent %d: read %d, dropped %d (then %d after reading); want read + dropped = sent", sent, read, drops, got)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if got := srv.KernelDrops(); got != drops {
		t.Errorf("after Close: %d drops, want %d", got, drops)
	}
}
