package upstream

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// stripProxyV2 returns the DNS message after a PROXY v2 header, or q.
func stripProxyV2(q []byte) []byte {
	if len(q) >= 16 && bytes.Equal(q[:12], proxyV2Sig[:]) {
		if n := 16 + int(binary.BigEndian.Uint16(q[14:16])); n <= len(q) {
			return q[n:]
		}
	}
	return q
}

// TestWorkerRecoversCompletionPanics injects a panic into each path that
// completes a query after its fate is settled (relaying the answer, the
// sweeper, refused sends, failover, immediate SERVFAIL), for queries whose
// name holds a marker. Each panic is recovered and counted in
// complete_panic, every fate is still counted exactly once (the harness
// checks the invariants, free slots and in-flight gauges when it stops),
// the client gets what was already on its way, and later queries work.
func TestWorkerRecoversCompletionPanics(t *testing.T) {
	type want struct {
		answered, timedOut, replyFailed, sendFailed, loop, failovers, servfailSent uint64
		clientAnswers                                                              int // of the marked queries
	}
	tests := []struct {
		name  string
		stage string
		// servfail: SERVFAIL on timeout, and the marked query's
		// upstream stays silent; dead: a closed port is the first
		// upstream (failover); proxyV2: the marked query is too large
		// to send with its PROXY v2 header; loop: the marked client
		// counts as one of our upstream sockets.
		servfail, dead, proxyV2, loop bool
		want                          want
	}{
		{name: "reply: answer sent, log lost", stage: "reply", want: want{answered: 1, clientAnswers: 1}},
		{name: "reply batch: before the write", stage: "reply-batch", want: want{replyFailed: 1}},
		{name: "sweeper", stage: "expire", servfail: true, want: want{timedOut: 1, servfailSent: 1, clientAnswers: 1}},
		{name: "sweeper batch: before SERVFAIL", stage: "expire-batch", servfail: true, want: want{timedOut: 1}},
		{name: "refused send", stage: "sendfail", proxyV2: true, want: want{sendFailed: 1}},
		{name: "failover", stage: "failover", dead: true, want: want{timedOut: 1}},
		{name: "immediate SERVFAIL, log", stage: "answernow", loop: true, want: want{loop: 1, clientAnswers: 1}},
		{name: "immediate SERVFAIL, build", stage: "answernow-build", loop: true, want: want{loop: 1}},
	}
	const marker = "boom"
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The upstream answers everything except names with
			// "silent" (the sweeper cases' marked queries).
			up := startFakeUpstream(t, func(c *net.UDPConn, q []byte, from netip.AddrPort) {
				q = stripProxyV2(q)
				if bytes.Contains(q, []byte("silent")) {
					return
				}
				q[2] |= 0x80
				_, _ = c.WriteToUDPAddrPort(q, from)
			}, nil)
			var dead netip.AddrPort
			if tc.dead {
				c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
				if err != nil {
					t.Fatal(err)
				}
				dead = c.LocalAddr().(*net.UDPAddr).AddrPort()
				c.Close() // nothing listens: ICMP port unreachable
			}
			var logBuf lockedBuf
			log := slog.New(slog.NewTextHandler(&logBuf, nil))
			hits := make(chan struct{}, 16)
			var guard *LoopGuard
			h := startHarness(t, func(netip.AddrPort) Config {
				specs := []Spec{{Addr: up.addr(), Weight: 1, ProxyV2: tc.proxyV2}}
				if tc.dead {
					specs = append([]Spec{{Addr: dead, Weight: 1}}, specs...)
				}
				pool, err := NewPool(specs, FirstAvailable, HealthConfig{FailThreshold: 1 << 30}, log)
				if err != nil {
					t.Fatal(err)
				}
				return Config{Upstreams: []netip.AddrPort{up.addr()}, Pool: pool, Timeout: 200 * time.Millisecond,
					SocketsPerUpstream: 1, PortRotation: 2, ServfailOnTimeout: tc.servfail, Log: log}
			}, func(uw *Worker) {
				uw.faultComplete = func(stage string, data []byte) {
					if stage == tc.stage && bytes.Contains(data, []byte(marker)) {
						hits <- struct{}{}
						panic("injected completion fault")
					}
				}
				if tc.loop {
					guard = NewLoopGuard(nil)
					uw.SetLoopGuard(guard)
				}
			})
			marked, plain := dialClient(t, h.client.LocalAddr()), dialClient(t, h.client.LocalAddr())
			if tc.loop {
				// The marked client's address is "one of our upstream
				// sockets": its queries are answered SERVFAIL at once.
				guard.add(marked.LocalAddr().(*net.UDPAddr).AddrPort())
			}
			name := marker + ".example."
			if tc.servfail {
				name = marker + ".silent.example."
			}
			q := packQuery(t, name, 0x7777)
			if tc.proxyV2 {
				// With the PROXY v2 header it exceeds the largest UDP
				// payload: sendmmsg refuses it (EMSGSIZE).
				q = append(q, make([]byte, 65500-len(q))...)
			}
			if _, err := marked.Write(q); err != nil {
				t.Fatal(err)
			}
			<-hits // the fault fired and was recovered before the next query
			gotAnswer := 0
			if tc.want.clientAnswers > 0 {
				buf := make([]byte, 512)
				_ = marked.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang guard
				k, err := marked.Read(buf)
				if err != nil {
					t.Fatalf("no answer for the marked query: %v", err)
				}
				if binary.BigEndian.Uint16(buf[:k]) != 0x7777 {
					t.Fatalf("answer with ID %x", buf[:2])
				}
				gotAnswer++
			}
			// Later queries work, on the same worker and loop.
			const later = 20
			if got := askAll2(t, plain, "later.example.", later); got != later {
				t.Fatalf("%d of %d later queries answered", got, later)
			}
			h.stop(t)
			st := h.uw.Stats()
			if got := st.CompletePanic.Load(); got != 1 {
				t.Errorf("complete_panic %d, want 1", got)
			}
			w := tc.want
			w.answered += later
			if tc.dead {
				w.failovers = later
			}
			for _, c := range []struct {
				name      string
				got, want uint64
			}{
				{"answered", st.Answered.Load(), w.answered},
				{"timed_out", st.TimedOut.Load(), w.timedOut},
				{"reply_failed", st.ReplyFailed.Load(), w.replyFailed},
				{"send_failed", st.SendFailed.Load(), w.sendFailed},
				{"loop_detected", st.LoopDetected.Load(), w.loop},
				{"failovers", st.Failovers.Load(), w.failovers},
				{"servfail_sent", st.ServfailSent.Load(), w.servfailSent},
			} {
				if c.got != c.want {
					t.Errorf("%s %d, want %d", c.name, c.got, c.want)
				}
			}
			if gotAnswer != w.clientAnswers {
				t.Errorf("marked client got %d answers, want %d", gotAnswer, w.clientAnswers)
			}
			if out := logBuf.String(); !strings.Contains(out, "injected completion fault") || !strings.Contains(out, "complete_panic_test.go") {
				t.Errorf("panic not reported with its stack:\n%s", out)
			}
		})
	}
}

func dialClient(t *testing.T, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func packQuery(t *testing.T, name string, id uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = id
	return pack(t, m)
}

// askAll2 asks n queries for name one at a time on c and counts answers.
func askAll2(t *testing.T, c *net.UDPConn, name string, n int) int {
	t.Helper()
	buf := make([]byte, 512)
	got := 0
	for i := 0; i < n; i++ {
		if _, err := c.Write(packQuery(t, name, uint16(i))); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang guard
		k, err := c.Read(buf)
		if err != nil {
			return got
		}
		if k >= 12 && binary.BigEndian.Uint16(buf) == uint16(i) {
			got++
		}
	}
	return got
}
