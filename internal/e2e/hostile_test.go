package e2e

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// reflect returns q as the answer: QR set, every other byte unchanged.
func reflectMsg(q []byte) []byte {
	r := append([]byte(nil), q...)
	r[2] |= 0x80
	return r
}

// tcpReflector is a DNS-over-TCP upstream on 127.0.0.1:port that answers
// every message with reflectMsg and records what it received.
type tcpReflector struct {
	ln  net.Listener
	mu  sync.Mutex
	got [][]byte
}

func newTCPReflector(t *testing.T, port uint16) *tcpReflector {
	t.Helper()
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	if err != nil {
		t.Fatalf("TCP reflector on the fake's port %d: %v", port, err)
	}
	tr := &tcpReflector{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				var l [2]byte
				for {
					if _, err := io.ReadFull(br, l[:]); err != nil {
						return
					}
					m := make([]byte, binary.BigEndian.Uint16(l[:]))
					if _, err := io.ReadFull(br, m); err != nil {
						return
					}
					tr.mu.Lock()
					tr.got = append(tr.got, m)
					tr.mu.Unlock()
					if len(m) < 12 {
						continue
					}
					r := reflectMsg(m)
					if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(r))), r...)); err != nil {
						return
					}
				}
			}()
		}
	}()
	// Close upstream connections at cleanup: Accept's goroutines end when
	// tapproxy (stopped first in cleanup order) closes its side.
	return tr
}

func (tr *tcpReflector) last() []byte {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.got) == 0 {
		return nil
	}
	return tr.got[len(tr.got)-1]
}

// procSample is what /proc and /metrics say about a running tapproxy.
type procSample struct {
	rssKiB     uint64
	cpuTicks   uint64 // utime + stime, in USER_HZ ticks
	goroutines uint64
	tcpOpen    uint64
}

func sampleProc(t *testing.T, pid int, metrics string) procSample {
	t.Helper()
	var s procSample
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			s.rssKiB, _ = strconv.ParseUint(f[1], 10, 64)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the parenthesised command: state is field 3, utime 14,
	// stime 15 (proc(5)).
	rest := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	ut, _ := strconv.ParseUint(rest[11], 10, 64)
	stm, _ := strconv.ParseUint(rest[12], 10, 64)
	s.cpuTicks = ut + stm
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatalf("scraping tapproxy metrics: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(body), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "go_goroutines":
			s.goroutines = uint64(v)
		case "tapproxy_tcp_open":
			s.tcpOpen = uint64(v)
		}
	}
	if s.goroutines == 0 || s.rssKiB == 0 {
		t.Fatalf("no go_goroutines or VmRSS in the samples: %+v", s)
	}
	return s
}

// settle samples until the TCP client connections are gone and the
// goroutine count is at most want, failing after a generous bound: the
// connection goroutines end asynchronously after the client closes.
func settle(t *testing.T, pid int, metrics string, want uint64) procSample {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := sampleProc(t, pid, metrics)
		if s.tcpOpen == 0 && s.goroutines <= want {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines %d (want <= %d), tcp_open %d: not back to baseline", s.goroutines, want, s.tcpOpen)
		}
		time.Sleep(20 * time.Millisecond) // polling a bound, not synchronising
	}
}

// TestHostileCorpus replays a deterministic corpus of hostile messages
// (compression loops and chains, reserved label types, label and name
// overflows, odd question counts, EDNS oddities, trailing data, maximum
// sizes, random bodies and mutations) over UDP and TCP through the binary to
// a reflecting upstream. Every query must reach the upstream byte for byte
// (ID aside) and its reflection the client byte for byte (with the client's
// ID); runts and QR=1 messages are dropped and counted. The process must
// survive, the accounting invariants hold, goroutines and RSS come back to
// their baseline, and the CPU per message stays sane.
func TestHostileCorpus(t *testing.T) {
	const seed = 20261127
	udpMsgs, dropped := hostileCorpus(seed, maxUDPQuery)
	tcpMsgs, _ := hostileCorpus(seed, 65535)
	fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", func(q []byte, _ netip.AddrPort, reply func([]byte), _ func(int, []byte)) {
		if len(q) >= 12 {
			reply(reflectMsg(q))
		}
	})
	tr := newTCPReflector(t, fake.Addr.Port())
	listen := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(testenv.FreePort(t, "ip4")))
	metrics := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(testenv.FreePort(t, "ip4"))).String()
	tp := testenv.StartTapproxy(t, "--listen", listen.String(), "--upstream", fake.Addr.String(),
		"--workers", "1", "--timeout", "2s", "--metrics", metrics)
	c := newClient(t, "127.0.0.1")

	udpPass := func() {
		for _, m := range udpMsgs {
			n := len(fake.Received())
			r := c.exchange(listen, m.b)
			got := fake.WaitReceived(t, n+1, answerWait)[n].Data
			if len(got) != len(m.b) || !bytes.Equal(got[2:], m.b[2:]) {
				t.Fatalf("UDP %s: upstream got %d bytes, not the client's %d verbatim (ID aside)", m.name, len(got), len(m.b))
			}
			if !bytes.Equal(r, reflectMsg(m.b)) {
				t.Fatalf("UDP %s: client got %d bytes, not the upstream's answer verbatim with its own ID", m.name, len(r))
			}
		}
	}
	tcpPass := func() {
		tc := dialTCPDNS(t, listen)
		defer tc.c.Close()
		for _, m := range tcpMsgs {
			tc.send(m.b)
			r := tc.recv()
			got := tr.last()
			if len(got) != len(m.b) || !bytes.Equal(got[2:], m.b[2:]) {
				t.Fatalf("TCP %s: upstream got %d bytes, not the client's %d verbatim (ID aside)", m.name, len(got), len(m.b))
			}
			if !bytes.Equal(r, reflectMsg(m.b)) {
				t.Fatalf("TCP %s: client got %d bytes, not the upstream's answer verbatim", m.name, len(r))
			}
		}
	}
	droppedPass := func() {
		for _, m := range dropped {
			c.send(listen, m.b)
		}
		// With one worker, datagrams are handled in order: the answer to
		// this query shows every dropped one was handled.
		sentinel := query(t, "www."+testenv.Zone, 0x5151)
		if r := c.exchange(listen, sentinel); !bytes.Equal(r, reflectMsg(sentinel)) {
			t.Fatalf("sentinel answer %x", r)
		}
	}

	// One warm-up pass allocates what steady state needs (pools, slot
	// buffers for large queries), then the baseline.
	udpPass()
	tcpPass()
	droppedPass()
	base := settle(t, tp.PID, metrics, 1<<20)
	const passes = 3
	for i := 0; i < passes; i++ {
		udpPass()
		tcpPass()
		droppedPass()
	}
	after := settle(t, tp.PID, metrics, base.goroutines)
	msgs := passes * (len(udpMsgs) + len(tcpMsgs) + len(dropped) + 1)
	// USER_HZ is 100 on every Linux ABI Go supports.
	cpuPerMsg := time.Duration(after.cpuTicks-base.cpuTicks) * 10 * time.Millisecond / time.Duration(msgs)
	t.Logf("hostile corpus: %d UDP + %d TCP + %d dropped messages per pass, %d passes; RSS %d -> %d KiB; goroutines %d -> %d; CPU %v per message (utime+stime / messages)",
		len(udpMsgs), len(tcpMsgs), len(dropped), passes, base.rssKiB, after.rssKiB, base.goroutines, after.goroutines, cpuPerMsg)
	limit := base.rssKiB + base.rssKiB/2 + 32*1024
	if testenv.RaceEnabled() {
		// The race detector's shadow memory grows with every address the
		// program touches (65 KiB messages): bound it loosely; the tight
		// bound holds for normal builds (measured 21.6 -> 24.6 MiB).
		limit = 3*base.rssKiB + 64*1024
	}
	if after.rssKiB > limit {
		t.Errorf("RSS grew from %d to %d KiB over %d passes of the corpus (limit %d)", base.rssKiB, after.rssKiB, passes, limit)
	}
	if cpuPerMsg > 5*time.Millisecond { // a generous sanity bound, not a benchmark
		t.Errorf("CPU per message %v", cpuPerMsg)
	}

	cnt := tp.Stop()
	c.expectNothing("after the hostile corpus")
	var runts, qr int
	for _, m := range dropped {
		if len(m.b) < 12 {
			runts++
		} else {
			qr++
		}
	}
	n := (passes + 1) * (len(udpMsgs) + 1)
	nt := (passes + 1) * len(tcpMsgs)
	testenv.WantCounters(t, cnt, counters(
		"received", n+(passes+1)*len(dropped), "forwarded", n, "answered", n,
		"dropped_short", (passes+1)*runts, "dropped_qr", (passes+1)*qr,
		"resp_received", n, "resp_matched", n, "dropped_panic", 0, "resp_panic", 0, "panics", 0,
		"tcp_forwarded", nt, "tcp_answered", nt, "tcp_dropped_panic", 0,
	))
}
