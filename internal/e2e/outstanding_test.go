//go:build linux

package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// TestOutstandingQueriesBounded: 100 000 distinct queries (20 000 under the
// race detector) to an upstream that reads them and never answers, through
// one tapproxy worker with a small in-flight table (--max-inflight 512) and
// a timeout longer than the whole send. The table must fill and never
// overflow (in_flight sampled from /metrics every 50 ms), every query must
// be accounted for (dropped_inflight_full + forwarded = received, and
// received + the client socket's kernel drops = sent), RSS must stay within
// a bound derived from the table size (below), and once the timeout has
// passed in_flight must be back to 0 and queries must be answered again
// when the upstream answers.
//
// RSS bound: the in-flight table is allocated once at start-up
// (upstream/table.go): per slot the slot record (under 256 bytes) and 512
// bytes of inline query storage; per logical upstream socket a 65 536-entry
// ID index (128 KiB); per physical socket (two per logical one when source
// ports rotate) a 1024-word late bitmap (8 KiB). Those pages become
// resident as they are touched, so a full table adds at most
// cap × 768 B + sockets × 144 KiB (under 1 MiB here) to the RSS measured
// at start. On top of that comes the garbage collector's headroom: the heap
// may grow to its goal before a collection, and at GOGC=25 (set for the
// child here, so the headroom is a few MiB rather than the size of the
// preallocated heap) the goal is the live heap × 1.25, so the headroom is
// a fifth of next_gc at start (go_memstats_next_gc_bytes); plus 8 MiB of
// slack for the runtime and the metrics scrapes. None of it depends on the
// number of queries: a proxy that kept anything per outstanding or dropped
// query beyond the table, even 128 bytes, would add 100 000 × 128 B ≈
// 12 MiB and fail.
func TestOutstandingQueriesBounded(t *testing.T) {
	const (
		capacity = 512
		sockets  = 4 // --upstream-sockets (the default, given explicitly)
		timeout  = 6 * time.Second
		step     = 5 * time.Millisecond
		recovery = 50
	)
	total, rate := 100_000, 30_000
	slackKiB := uint64(8 * 1024)
	if testenv.RaceEnabled() {
		// The race detector's shadow memory multiplies every touched page
		// (4x to 8x) and its runtime is slower: fewer queries, looser slack.
		total, rate = 20_000, 10_000
		slackKiB = 64 * 1024
	}
	tableKiB := uint64(capacity*768/1024 + sockets*144)

	t.Setenv("GOGC", "25") // for the tapproxy child (see the RSS bound above)
	up := startHoldUpstream(t, ".outstanding.test.")
	listen := loopback(testenv.FreePort(t, "ip4"))
	metrics := loopback(testenv.FreePort(t, "tcp4")).String()
	tp := testenv.StartTapproxy(t, "--listen", listen.String(), "--upstream", up.addr().String(),
		"--workers", "1", "--max-inflight", fmt.Sprint(capacity), "--upstream-sockets", fmt.Sprint(sockets),
		"--timeout", timeout.String(), "--metrics", metrics)
	sc := newScraper(metrics)
	var first promSnap
	for i := 0; i < 10; i++ { // the metrics endpoint's own first allocations are not the table's
		first = sc.must(t)
	}
	base := rssKiB(tp.PID)
	gcKiB := uint64(first.get("go_memstats_next_gc_bytes")) / 5 / 1024 // next_gc = live × 1.25 at GOGC=25
	sm := startSampler(sc, tp.PID, 50*time.Millisecond)

	// Paced in steps of 5 ms so that the client socket's receive queue is
	// not simply overrun; whatever the kernel drops anyway is counted
	// (SO_RXQ_OVFL) and part of the sum below.
	c := newClient(t, "127.0.0.1")
	nq := newNumberedQuery("q", 6, "outstanding.test")
	perStep := rate * int(step/time.Millisecond) / 1000
	start := time.Now()
	for sent := 0; sent < total; {
		for k := 0; k < perStep && sent < total; k++ {
			c.send(listen, nq.set(sent, uint16(sent)))
			sent++
		}
		time.Sleep(time.Until(start.Add(time.Duration(sent/perStep) * step))) // pacing, not synchronisation
	}
	sendTime := time.Since(start)

	// Every forwarded query times out (nothing answers); then the table
	// is empty.
	idle := sc.waitMetrics(t, "in_flight back to 0 after the timeout", timeout+30*time.Second, func(p promSnap) bool {
		return p.u("tapproxy_in_flight") == 0 && p.u("tapproxy_forwarded_total") > 0 &&
			p.u("tapproxy_timed_out_total") == p.u("tapproxy_forwarded_total")
	})
	samples := sm.finish(t)
	maxInFlight := maxOf(samples, func(s sample) uint64 { return s.inFlight })
	maxRSS := max(maxOf(samples, func(s sample) uint64 { return s.rssKiB }), rssKiB(tp.PID))
	received, full, fwd := idle.u("tapproxy_received_total"), idle.u("tapproxy_dropped_inflight_full_total"), idle.u("tapproxy_forwarded_total")
	t.Logf("%d queries sent in %v; %d samples; max in_flight %d (cap %d); received %d, dropped_inflight_full %d, forwarded %d, client kernel drops %d (so far); RSS %d KiB at start, max %d KiB (bound: that + %d table + %d GC headroom + %d slack)",
		total, sendTime.Round(time.Millisecond), len(samples), maxInFlight, capacity, received, full, fwd,
		idle.clientKernelDrops(), base, maxRSS, tableKiB, gcKiB, slackKiB)

	if maxInFlight > capacity {
		t.Errorf("in_flight reached %d, above --max-inflight %d", maxInFlight, capacity)
	}
	if maxInFlight < capacity {
		t.Errorf("in_flight never reached the cap (max %d of %d): the table was not filled, the test proves nothing", maxInFlight, capacity)
	}
	if full == 0 {
		t.Errorf("no query was dropped for a full table (dropped_inflight_full = 0)")
	}
	if received != full+fwd {
		t.Errorf("received %d != dropped_inflight_full %d + forwarded %d: %s", received, full, fwd, idle.summary())
	}
	if got := up.ours.Load(); got != fwd {
		t.Errorf("the upstream read %d of the test's queries, tapproxy forwarded %d", got, fwd)
	}
	if limit := base + tableKiB + gcKiB + slackKiB; maxRSS > limit {
		t.Errorf("RSS reached %d KiB with %d queries outstanding or dropped; bound %d KiB (start %d + table %d + GC headroom %d + slack %d)",
			maxRSS, total, limit, base, tableKiB, gcKiB, slackKiB)
	}

	// The upstream answers again: queries succeed, byte for byte.
	up.answer.Store(true)
	for i := 0; i < recovery; i++ {
		q := query(t, fmt.Sprintf("after%d.outstanding.test.", i), uint16(0xA000+i))
		r := c.exchange(listen, q)
		if want := answerA(q, "192.0.2.77"); !bytes.Equal(r, want) {
			t.Fatalf("recovery query %d: answer %x, want %x", i, r, want)
		}
	}
	// The recovery queries arrived after every drop, so the kernel's drop
	// count is current: every datagram sent is received or dropped.
	end := sc.must(t)
	sent := uint64(total + recovery)
	if got := end.u("tapproxy_received_total") + end.clientKernelDrops(); got != sent {
		t.Errorf("received %d + client kernel drops %d = %d, want every query sent (%d)",
			end.u("tapproxy_received_total"), end.clientKernelDrops(), got, sent)
	}

	cnt := tp.Stop()
	testenv.WantCounters(t, cnt, counters(
		"received", received+recovery, "dropped_inflight_full", full, "forwarded", fwd+recovery,
		"timed_out", fwd, "answered", recovery, "resp_matched", recovery, "resp_received", recovery,
		"send_failed", 0, "dropped_panic", 0, "panics", 0,
	))
	if cnt["kernel_drops"] < end.clientKernelDrops() {
		t.Errorf("final kernel_drops %d below the client sockets' %d", cnt["kernel_drops"], end.clientKernelDrops())
	}
	c.expectNothing("after the outstanding-queries test")
}

// holdUpstream reads every datagram and, until answer is set, answers
// none. It counts the datagrams asking a name under suffix (the test's
// queries, not tapproxy's health probes). Its receive buffer is 4 MiB
// (SO_RCVBUFFORCE as root), so a burst of forwarded queries is not lost
// in its own socket.
type holdUpstream struct {
	conn   *net.UDPConn
	suffix string
	answer atomic.Bool
	ours   atomic.Uint64
	done   chan struct{}
}

func startHoldUpstream(t *testing.T, suffix string) *holdUpstream {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	}); err != nil || serr != nil {
		_ = conn.SetReadBuffer(4 << 20) // not root: as much as rmem_max allows
	}
	h := &holdUpstream{conn: conn, suffix: suffix, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		buf := make([]byte, 65536)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			if strings.HasSuffix(qname(buf[:n]), h.suffix) {
				h.ours.Add(1)
			}
			if h.answer.Load() {
				if a := answerA(buf[:n], "192.0.2.77"); a != nil {
					_, _ = conn.WriteToUDPAddrPort(a, from)
				}
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-h.done })
	return h
}

func (h *holdUpstream) addr() netip.AddrPort { return h.conn.LocalAddr().(*net.UDPAddr).AddrPort() }
