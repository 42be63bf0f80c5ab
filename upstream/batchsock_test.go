package upstream

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/listener"
)

// TestBatchOneSocketPerUpstream: the queries of one batch for an upstream
// leave from one of its sockets (one sendmmsg, and their answers come back
// on one socket), while successive batches pick among the sockets at
// random. A socket chosen per query would spread each batch over all four.
func TestBatchOneSocketPerUpstream(t *testing.T) {
	up := startFakeUpstream(t, nil, nil) // echoes at once
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client, err := listener.ListenUDP(ctx, netip.MustParseAddrPort("127.0.0.1:0"), listener.Options{PktInfo: true})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	const sockets = 4
	uw, err := NewWorker(ctx, Config{Upstreams: []netip.AddrPort{up.addr()}, Timeout: 10 * time.Second,
		SocketsPerUpstream: sockets, Log: slog.New(slog.DiscardHandler)}, client)
	if err != nil {
		t.Fatal(err)
	}
	upCtx, upCancel := context.WithCancel(context.Background())
	uw.Start(upCtx)
	// The answers are relayed here; nobody needs to read them.
	sink, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	peer := sink.LocalAddr().(*net.UDPAddr).AddrPort()

	const batches, per = 40, 8
	pkts := make([]*listener.Packet, per)
	for b := range batches {
		for i := range per {
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("b%d-q%d.batch.test.", b, i), dns.TypeA)
			m.Id = uint16(b*per + i)
			q, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			pkts[i] = &listener.Packet{Buf: q, N: len(q), Peer: peer}
		}
		// HandleQueries returns after the batch's sendmmsg, so batch b
		// reaches the upstream's one socket before batch b+1. Each batch
		// is awaited before the next: 320 queries at once can overflow
		// the fake upstream's receive buffer when the machine is busy
		// (seen once: 288 of 320 arrived).
		uw.HandleQueries(pkts, time.Now().UnixNano())
		deadline := time.Now().Add(10 * time.Second)
		for len(up.sources()) < (b+1)*per && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if n := len(up.sources()); n != (b+1)*per {
			t.Fatalf("after batch %d the upstream saw %d of %d queries", b, n, (b+1)*per)
		}
	}
	from := up.sources()
	used := map[uint16]bool{}
	for b := range batches {
		port := from[b*per].Port()
		for i, f := range from[b*per : (b+1)*per] {
			if f.Port() != port {
				t.Fatalf("batch %d: query %d left from port %d, the batch's first from %d", b, i, f.Port(), port)
			}
		}
		used[port] = true
	}
	// 40 batches over 4 sockets: all on one would happen with odds 4^-39.
	if len(used) < 2 {
		t.Errorf("%d batches all left from one of %d sockets: the choice is not random", batches, sockets)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	uw.Drain(dctx)
	dcancel()
	upCancel()
	uw.Wait()
	uw.Close()
	checkAccounting(t, uw, batches*per)
	if st := uw.Stats(); st.Answered.Load() != batches*per {
		t.Errorf("answered %d of %d", st.Answered.Load(), batches*per)
	}
}
