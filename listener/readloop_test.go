package listener

import (
	"errors"
	"os"
	"testing"
	"time"
)

// TestReadLoop: datagrams arriving after a short batch (while the loop
// waits in the netpoller without a second read) and beyond a full batch
// are all delivered, in order; handle returning false ends ReadLoop with
// nil; Unblock ends a waiting ReadLoop with the deadline error.
func TestReadLoop(t *testing.T) {
	srv, cli := loopbackPair(t)
	const total = 9
	in := NewBatch(4, MaxDatagram)
	r := srv.NewReader(in)
	got := make(chan int, total)
	batches := 0
	done := make(chan error, 1)
	go func() {
		seen := 0
		done <- r.ReadLoop(func(n int) bool {
			batches++
			for i := range n {
				got <- in.Pkts[i].N
			}
			seen += n
			return seen < total
		})
	}()
	recv := func(want ...int) {
		t.Helper()
		for _, w := range want {
			select {
			case n := <-got:
				if n != w {
					t.Fatalf("datagram of length %d, want %d", n, w)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("datagram of length %d never handled", w)
			}
		}
	}
	sendLens(t, cli, 12, 13, 14) // a short batch: the loop then waits without reading
	recv(12, 13, 14)
	sendLens(t, cli, 20, 21, 22, 23, 24, 25) // a full batch of 4, then 2 more
	recv(20, 21, 22, 23, 24, 25)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ReadLoop ended by its handler: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadLoop did not end when its handler returned false")
	}
	if batches < 3 {
		t.Errorf("%d batches for 3 + 6 datagrams with a batch size of 4, want at least 3", batches)
	}
	go func() {
		done <- r.ReadLoop(func(int) bool { t.Error("handler called with nothing sent"); return true })
	}()
	if err := srv.Unblock(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("ReadLoop after Unblock: %v, want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Unblock did not end a waiting ReadLoop")
	}
}
