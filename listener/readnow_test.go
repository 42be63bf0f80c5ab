package listener

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"testing"
)

// TestReadNowIgnoresDeadline: after Unblock (a read deadline in the past)
// Read fails at once without reading, but ReadNow still returns what is
// queued, then 0 when the queue is empty: a socket about to close is
// emptied, not discarded.
func TestReadNowIgnoresDeadline(t *testing.T) {
	srv, cli := loopbackPair(t)
	// One datagram first, read with a normal Read: once it is in, the
	// other two (sent in the same sendmmsg, behind it) are queued too.
	sendLens(t, cli, 12, 13, 14)
	in := NewBatch(1, MaxDatagram)
	r := srv.NewReader(in)
	if n, err := r.Read(); n != 1 || err != nil {
		t.Fatalf("Read: %d %v", n, err)
	}
	if err := srv.Unblock(); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after Unblock: %d %v, want a deadline error", n, err)
	}
	var lens []int
	for range 4 {
		n, err := r.ReadNow()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		lens = append(lens, in.Pkts[0].N)
	}
	if len(lens) != 2 || lens[0] != 13 || lens[1] != 14 {
		t.Fatalf("ReadNow read datagrams of lengths %v, want [13 14]", lens)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadNow(); err == nil {
		t.Fatal("ReadNow on a closed socket: no error")
	}
}

// loopbackPair returns a socket on 127.0.0.1 and one connected to it, both
// closed when the test ends.
func loopbackPair(t *testing.T) (srv, cli *Conn) {
	t.Helper()
	ctx := context.Background()
	srv, err := ListenUDP(ctx, netip.MustParseAddrPort("127.0.0.1:0"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	cli, err = DialUDP(ctx, srv.LocalAddr(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return srv, cli
}

// sendLens sends, in one sendmmsg from cli, one datagram of each length.
func sendLens(t *testing.T, cli *Conn, lens ...int) {
	t.Helper()
	out := NewBatch(len(lens), 64)
	for i, n := range lens {
		out.Pkts[i].N = n
	}
	if failed, err := cli.NewWriter(len(lens)).Write(out.Pkts); failed != 0 || err != nil {
		t.Fatalf("write: %d %v", failed, err)
	}
}
