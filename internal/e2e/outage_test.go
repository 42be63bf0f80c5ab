//go:build linux

package e2e

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// TestUpstreamKilledUnderLoad: steady load from four client sockets through
// tapproxy to a real Unbound; Unbound is killed with SIGKILL, the load goes
// on for a few seconds, and Unbound is restarted on the same port. During
// the outage queries must fail in counted ways (timed out, SERVFAIL with
// --servfail-on-timeout, send failures), never a panic; after the restart
// answers must come back (a bounded wait, not a speed assertion); the
// final counters must hold every invariant, every reply a client got must
// be one tapproxy counted (answered or SERVFAIL), and every reply must be
// its own query's: the ID and question of a query that socket sent,
// at most one reply per query, and an upstream answer byte for byte the
// one Unbound gives directly (apart from the ID).
func TestUpstreamKilledUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name     string
		servfail bool
	}{{"silent", false}, {"servfail-on-timeout", true}} {
		t.Run(tc.name, func(t *testing.T) { upstreamOutage(t, tc.servfail) })
	}
}

func upstreamOutage(t *testing.T, servfail bool) {
	const (
		senders     = 4
		pace        = 4 * time.Millisecond // per sender: 1000 queries/s in all
		maxPerSend  = 20_000               // bound on each sender's loop
		timeout     = 400 * time.Millisecond
		minOutage   = 2 * time.Second // load kept on the dead upstream at least this long
		warmAnswers = 200             // answered before the kill
		afterAnswer = 200             // answered after recovery before the load stops
		waitLimit   = 20 * time.Second
	)
	u := testenv.StartUnbound(t, testenv.UnboundOptions{})
	// The questions (every served name, positive and negative) and what
	// Unbound answers to each when asked directly: the reference bytes.
	served := testenv.ServedNames()
	direct := newClient(t, "127.0.0.1")
	qs := make([][]byte, len(served))
	want := make([][]byte, len(served))
	for i, s := range served {
		qs[i] = ask{name: s.Name, qtype: s.Type, id: uint16(i), rd: true, edns: 1232}.wire(t)
		want[i] = direct.exchange(u.Addr4, qs[i])
	}

	listen := loopback(testenv.FreePort(t, "ip4"))
	metrics := loopback(testenv.FreePort(t, "tcp4")).String()
	args := []string{"--listen", listen.String(), "--upstream", u.Addr4.String(), "--workers", "2",
		"--timeout", timeout.String(), "--metrics", metrics}
	if servfail {
		args = append(args, "--servfail-on-timeout")
	}
	tp := testenv.StartTapproxy(t, args...)
	sc := newScraper(metrics)

	// Each sender owns a socket; query i of a sender has ID i+1 and asks
	// question (i + sender) mod len(qs).
	type sender struct {
		conn  *net.UDPConn
		log   *replyLog
		sent  atomic.Int64
		which []int // question index per query
	}
	ss := make([]*sender, senders)
	for k := range ss {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		ss[k] = &sender{conn: conn, log: logReplies(t, conn)}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sendErr atomic.Value
	for k, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(pace)
			defer tick.Stop()
			for i := 0; i < maxPerSend; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				w := (i + k) % len(qs)
				s.which = append(s.which, w)
				if _, err := s.conn.WriteToUDPAddrPort(withID(qs[w], uint16(i+1)), listen); err != nil {
					sendErr.Store(err)
					return
				}
				s.sent.Add(1)
			}
		}()
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopLoad)

	sc.waitMetrics(t, "answers before the kill", waitLimit, func(p promSnap) bool {
		return p.u("tapproxy_answered_total") >= warmAnswers
	})
	failed := func(p promSnap) uint64 {
		return p.u("tapproxy_timed_out_total") + p.u("tapproxy_send_failed_total") + p.u("tapproxy_servfail_all_down_total")
	}
	atKill := sc.must(t)
	killUnbound(t, u) // SIGKILL by PID; returns once the port refuses
	killed := time.Now()
	// Keep the load on the dead upstream until failures are counted and
	// at least minOutage has passed.
	sc.waitMetrics(t, "failures counted during the outage", waitLimit, func(p promSnap) bool {
		return failed(p) >= failed(atKill)+100 && time.Since(killed) >= minOutage
	})
	restartUnbound(t, u) // same config, same port
	restartedAt := make([]int64, senders)
	for k, s := range ss {
		restartedAt[k] = s.sent.Load()
	}
	// Recovery: a query sent after the restart gets Unbound's answer.
	deadline := time.Now().Add(waitLimit)
	for recovered := false; !recovered; {
		for k, s := range ss {
			for _, r := range s.log.replies() {
				if len(r) >= 12 && int64(idOf(r)) > restartedAt[k] && rcodeOf(r) != dns.RcodeServerFailure {
					recovered = true
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer from the restarted Unbound within %v; %s", waitLimit, sc.must(t).summary())
		}
		time.Sleep(20 * time.Millisecond) // polling a condition
	}
	recoveredAfter := time.Since(killed)
	atRecovery := sc.must(t)
	sc.waitMetrics(t, "answers after recovery", waitLimit, func(p promSnap) bool {
		return p.u("tapproxy_answered_total") >= atRecovery.u("tapproxy_answered_total")+afterAnswer
	})
	stopLoad()
	if err, _ := sendErr.Load().(error); err != nil {
		t.Fatalf("a sender failed: %v", err)
	}
	var sent uint64
	for _, s := range ss {
		sent += uint64(s.sent.Load())
	}
	sc.waitMetrics(t, "every query received and settled", waitLimit, func(p promSnap) bool {
		return p.u("tapproxy_received_total")+p.clientKernelDrops() == sent && p.u("tapproxy_in_flight") == 0
	})
	cnt := tp.Stop()
	replied := cnt["answered"] + cnt["servfail_sent"] + cnt["servfail_send_failed"] + cnt["servfail_all_down"]
	total := func() (n uint64) {
		for _, s := range ss {
			n += uint64(s.log.count())
		}
		return n
	}
	// tapproxy has exited: its replies are in the client sockets.
	for deadline := time.Now().Add(answerWait); total() < replied && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // polling the readers
	}

	// Every reply is the reply to one of that socket's queries.
	var upstreamAnswers, servfails, outageFailures, got uint64
	for k, s := range ss {
		seen := map[uint16]bool{} // IDs answered by Unbound or SERVFAIL
		good := map[uint16]bool{} // IDs answered by Unbound
		for _, r := range s.log.replies() {
			got++
			if len(r) < 12 {
				t.Errorf("sender %d: reply %x shorter than a header", k, r)
				continue
			}
			id := idOf(r)
			if id == 0 || int(id) > len(s.which) {
				t.Errorf("sender %d: reply with ID %d, which this socket never sent (sent %d)", k, id, len(s.which))
				continue
			}
			if seen[id] {
				t.Errorf("sender %d: a second reply for ID %d", k, id)
			}
			seen[id] = true
			w := s.which[id-1]
			q := withID(qs[w], id)
			if rcodeOf(r) == dns.RcodeServerFailure {
				servfails++
				if !servfail {
					t.Errorf("sender %d ID %d: SERVFAIL without --servfail-on-timeout", k, id)
				}
				checkMadeAnswer(t, "SERVFAIL during the outage", q, r, dns.RcodeServerFailure)
				continue
			}
			upstreamAnswers++
			good[id] = true
			if !bytes.Equal(r[2:], want[w][2:]) {
				t.Errorf("sender %d ID %d (%s %s): answer differs from Unbound's own\ngot  %x\nwant %x", k, id,
					served[w].Name, dns.TypeToString[served[w].Type], r, withID(want[w], id))
			}
		}
		for id := 1; id <= len(s.which); id++ {
			if !good[uint16(id)] {
				outageFailures++
			}
		}
	}
	t.Logf("%d queries; killed after %d answers, answers back %v after the kill; upstream answers %d, SERVFAIL %d, unanswered or SERVFAIL %d; %s",
		sent, atKill.u("tapproxy_answered_total"), recoveredAfter.Round(time.Millisecond), upstreamAnswers, servfails, outageFailures,
		testenv.FormatCounters(pickCounters(cnt, "received", "forwarded", "answered", "timed_out", "servfail_sent", "send_failed", "servfail_send_failed",
			"servfail_all_down", "failovers", "resp_late", "resp_unknown_id", "kernel_drops", "panics")))

	if got != replied {
		t.Errorf("clients got %d replies; tapproxy counted %d (answered %d + servfail_sent %d + servfail_send_failed %d + servfail_all_down %d)",
			got, replied, cnt["answered"], cnt["servfail_sent"], cnt["servfail_send_failed"], cnt["servfail_all_down"])
	}
	if upstreamAnswers != cnt["answered"] || servfails != cnt["servfail_sent"]+cnt["servfail_send_failed"]+cnt["servfail_all_down"] {
		t.Errorf("upstream answers %d / SERVFAIL %d at the clients; counters answered %d, servfail_sent %d, servfail_send_failed %d, servfail_all_down %d",
			upstreamAnswers, servfails, cnt["answered"], cnt["servfail_sent"], cnt["servfail_send_failed"], cnt["servfail_all_down"])
	}
	if cnt["received"]+cnt["kernel_drops"] < sent || cnt["received"] > sent {
		t.Errorf("received %d (kernel drops %d) of %d queries sent", cnt["received"], cnt["kernel_drops"], sent)
	}
	if cnt["panics"] != 0 || cnt["dropped_panic"] != 0 || cnt["resp_panic"] != 0 {
		t.Errorf("panics during the outage: %s", testenv.FormatCounters(cnt))
	}
	if outageFailures == 0 || cnt["timed_out"]+cnt["send_failed"]+cnt["servfail_all_down"] == 0 {
		t.Errorf("no query failed while Unbound was dead: the outage was not exercised")
	}
	if servfail && (cnt["servfail_sent"] != cnt["timed_out"] || cnt["servfail_send_failed"] != cnt["send_failed"]) {
		t.Errorf("--servfail-on-timeout: servfail_sent %d != timed_out %d or servfail_send_failed %d != send_failed %d",
			cnt["servfail_sent"], cnt["timed_out"], cnt["servfail_send_failed"], cnt["send_failed"])
	}
	if !servfail && cnt["servfail_send_failed"] != 0 {
		t.Errorf("servfail_send_failed %d without --servfail-on-timeout", cnt["servfail_send_failed"])
	}
	if !servfail && servfails != 0 {
		t.Errorf("%d SERVFAIL replies without --servfail-on-timeout", servfails)
	}
}
