//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tapproxy/tapproxy/bench/responder"
	"github.com/tapproxy/tapproxy/internal/testenv"
)

// TestOverloadFloodRecovers: a Go sender floods one tapproxy worker from two
// sockets as fast as it can for 10 s (5 s under the race detector), far
// above what one worker relays to the benchmark responder; bench/overload.sh
// does the same at a measured 2× capacity for minutes. While flooded:
// drops must be visible and counted (kernel drops on the client socket,
// SO_RXQ_OVFL, or full-table drops), in_flight must stay within the cap,
// RSS and goroutines must stay bounded (below), and no client may get a
// reply to a query it did not send. After the flood, queries must succeed
// again within a bounded wait (20 in a row), and every datagram sent must
// be received or counted as a kernel drop.
//
// RSS bound: nothing in tapproxy is allocated per packet; the in-flight
// table and the batches are preallocated, so after a warm-up the RSS may
// grow only by the preallocated pages the flood touches: the table
// (cap × 768 B + sockets × 144 KiB, see TestOutstandingQueriesBounded) and
// the receive batches (32 datagram buffers per socket reader, one page of
// each touched by a small datagram: 128 KiB for the client socket and for
// each of the 2 × sockets physical upstream sockets); plus the garbage
// collector's headroom (a fifth of next_gc at the baseline: at GOGC=25 the
// heap goal is the live heap × 1.25) and 8 MiB of runtime slack.
// Goroutines: the workers and socket readers are fixed, so at most a few
// more than at the baseline (the metrics scrapes' own).
func TestOverloadFloodRecovers(t *testing.T) {
	const (
		capacity  = 1024
		sockets   = 4
		timeout   = time.Second
		senders   = 2
		maxPerRun = 20_000_000 // bound on each sender's loop besides the time
		recoverN  = 20         // consecutive answered queries that show recovery
		waitLimit = 30 * time.Second
	)
	flood := 10 * time.Second
	slackKiB := uint64(8 * 1024)
	if testenv.RaceEnabled() {
		flood, slackKiB = 5*time.Second, 64*1024
	}
	tableKiB := uint64(capacity*768/1024+sockets*144) + uint64(1+2*sockets)*128 // table + touched batch pages

	resp, err := responder.Listen(responder.Config{Addr: "127.0.0.1:0", RcvBuf: 4 << 20, SndBuf: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- resp.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("responder: %v", err)
		}
	})

	t.Setenv("GOGC", "25") // for the tapproxy child (see the RSS bound above)
	listen := loopback(testenv.FreePort(t, "ip4"))
	metrics := loopback(testenv.FreePort(t, "tcp4")).String()
	tp := testenv.StartTapproxy(t, "--listen", listen.String(), "--upstream", resp.Addr().String(),
		"--workers", "1", "--max-inflight", fmt.Sprint(capacity), "--upstream-sockets", fmt.Sprint(sockets),
		"--timeout", timeout.String(), "--metrics", metrics)
	sc := newScraper(metrics)

	// Warm-up, then the baseline.
	probe := newClient(t, "127.0.0.1")
	probes := 0
	ask1 := func(wait time.Duration) bool {
		probes++
		id := uint16(0xF000 + probes%0x1000)
		probe.send(listen, query(t, fmt.Sprintf("probe%d.bench.test.", probes), id))
		r := probe.await(listen, id, wait)
		return r != nil && rcodeOf(r) == 0
	}
	for i := 0; i < 200; i++ {
		if !ask1(answerWait) {
			t.Fatalf("warm-up query %d not answered", i)
		}
	}
	first := sc.must(t)
	base := rssKiB(tp.PID)
	baseG := first.u("go_goroutines")
	gcKiB := uint64(first.get("go_memstats_next_gc_bytes")) / 5 / 1024 // next_gc = live × 1.25 at GOGC=25
	sm := startSampler(sc, tp.PID, 250*time.Millisecond)

	// The flood. Each sender's replies are checked by a reader: the name
	// carries the query's number, and the ID must be that number's.
	var sent, replies, misdelivered atomic.Uint64
	var wg sync.WaitGroup
	var sendErr atomic.Value
	start := time.Now()
	for k := 0; k < senders; k++ {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		nq := newNumberedQuery(fmt.Sprintf("f%d-", k), 8, "bench.test")
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			buf := make([]byte, 65536)
			for {
				n, err := conn.Read(buf)
				if err != nil {
					return
				}
				replies.Add(1)
				if num := nq.number(buf[:n]); num < 0 || uint16(num) != idOf(buf[:n]) {
					misdelivered.Add(1)
				}
			}
		}()
		t.Cleanup(func() { conn.Close(); <-readDone })
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := newNumberedQuery(fmt.Sprintf("f%d-", k), 8, "bench.test")
			for i := 0; i < maxPerRun; i++ {
				if i%256 == 0 && time.Since(start) > flood {
					return
				}
				if _, err := conn.WriteToUDPAddrPort(q.set(i, uint16(i)), listen); err != nil {
					sendErr.Store(err)
					return
				}
				sent.Add(1)
			}
		}()
	}
	wg.Wait()
	floodTime := time.Since(start)
	if err, _ := sendErr.Load().(error); err != nil {
		t.Fatalf("flood sender: %v", err)
	}

	// Recovery: recoverN queries in a row answered, within a bound.
	recStart := time.Now()
	for streak := 0; streak < recoverN; {
		if time.Since(recStart) > waitLimit {
			t.Fatalf("no %d answered queries in a row within %v of the flood's end; %s", recoverN, waitLimit, sc.must(t).summary())
		}
		if ask1(time.Second) {
			streak++
		} else {
			streak = 0
		}
	}
	recovered := time.Since(recStart)
	samples := sm.finish(t)
	// The recovery queries arrived after every drop, so the kernel's drop
	// count is current.
	end := sc.waitMetrics(t, "the flood settled", waitLimit, func(p promSnap) bool {
		return p.u("tapproxy_in_flight") == 0
	})
	total := sent.Load() + uint64(probes)
	maxInFlight := maxOf(samples, func(s sample) uint64 { return s.inFlight })
	maxRSS := max(maxOf(samples, func(s sample) uint64 { return s.rssKiB }), rssKiB(tp.PID))
	maxG := maxOf(samples, func(s sample) uint64 { return s.goroutines })
	kdrops, full := end.clientKernelDrops(), end.u("tapproxy_dropped_inflight_full_total")
	t.Logf("flood: %d queries in %v (%.0f/s) from %d sockets; received %d, client kernel drops %d, dropped_inflight_full %d, answered %d, timed_out %d; replies seen by the flooders %d; recovered (%d in a row) %v after the flood",
		sent.Load(), floodTime.Round(time.Millisecond), float64(sent.Load())/floodTime.Seconds(), senders,
		end.u("tapproxy_received_total"), kdrops, full, end.u("tapproxy_answered_total"), end.u("tapproxy_timed_out_total"),
		replies.Load(), recoverN, recovered.Round(time.Millisecond))
	t.Logf("samples: %d; max in_flight %d (cap %d); RSS %d KiB at baseline, max %d (bound: that + %d table + %d GC headroom + %d slack); goroutines %d at baseline, max %d",
		len(samples), maxInFlight, capacity, base, maxRSS, tableKiB, gcKiB, slackKiB, baseG, maxG)
	for i, s := range samples {
		if i%4 == 0 || i == len(samples)-1 {
			t.Logf("  %v", s)
		}
	}

	if maxInFlight > capacity {
		t.Errorf("in_flight reached %d, above --max-inflight %d", maxInFlight, capacity)
	}
	if kdrops+full == 0 {
		t.Errorf("the flood caused no counted drop (client kernel drops 0, dropped_inflight_full 0): it was not an overload")
	}
	if got := end.u("tapproxy_received_total") + kdrops; got != total {
		t.Errorf("received %d + client kernel drops %d = %d, want every datagram sent (%d)", end.u("tapproxy_received_total"), kdrops, got, total)
	}
	if limit := base + tableKiB + gcKiB + slackKiB; maxRSS > limit {
		t.Errorf("RSS reached %d KiB under the flood; bound %d KiB (baseline %d + table %d + GC headroom %d + slack %d)",
			maxRSS, limit, base, tableKiB, gcKiB, slackKiB)
	}
	if maxG > baseG+8 {
		t.Errorf("goroutines reached %d under the flood, %d at baseline: something starts goroutines per packet", maxG, baseG)
	}
	if replies.Load() == 0 {
		t.Errorf("the flooders got no reply at all: the per-reply check below proves nothing")
	}
	if misdelivered.Load() != 0 {
		t.Errorf("%d replies under the flood did not belong to the query with their ID", misdelivered.Load())
	}
	cnt := tp.Stop()
	if cnt["panics"] != 0 || cnt["send_failed"] != 0 {
		t.Errorf("after the flood: %s", testenv.FormatCounters(pickCounters(cnt, "panics", "send_failed", "dropped_panic", "resp_panic")))
	}
	if cnt["received"] != end.u("tapproxy_received_total") {
		t.Errorf("received %d at exit, %d after the flood settled", cnt["received"], end.u("tapproxy_received_total"))
	}
}
