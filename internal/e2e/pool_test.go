//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// TestPoolFailoverUnbound: two real Unbound servers behind one tapproxy.
// Under a bounded load (50 UDP queries/s for 6 s, and one TCP query in
// five), the first server is killed with SIGKILL midway. Its port is then
// closed, so a query sent there draws an ICMP port unreachable
// (ECONNREFUSED on the upstream UDP socket, a refused connect over TCP):
// the query fails over to the other server at once, within its deadline,
// and after --health-fails (3) such fast failures the server is marked
// down. That is the documented switch: three fast failures (milliseconds
// here); a server that goes silent instead costs three timeouts. At least
// 99 % of the queries must be answered across the switch. The server is
// then restarted on the same port; with --probe-interval 200ms and
// --health-rise 2 it comes back, and traffic returns per policy: all of it
// to the first server (first-available), or to both (round-robin).
func TestPoolFailoverUnbound(t *testing.T) {
	for _, policy := range []string{"first-available", "round-robin"} {
		t.Run(policy, func(t *testing.T) {
			a := testenv.StartUnbound(t, testenv.UnboundOptions{Extra: whoData("a")})
			b := testenv.StartUnbound(t, testenv.UnboundOptions{Extra: whoData("b")})
			listen := loopback(testenv.FreePort(t, "ip4"))
			tp := testenv.StartTapproxy(t, "--listen", listen.String(),
				"--upstream", a.Addr4.String(), "--upstream", b.Addr4.String(), "--policy", policy,
				"--health-fails", "3", "--health-rise", "2", "--probe-interval", "200ms", "--workers", "2")
			lc := newLoadClient(t, listen)
			tc := &tcpAsker{to: listen}
			defer tc.close()

			const (
				rate     = 50  // UDP queries per second
				total    = 300 // 6 s
				killAt   = total / 2
				tcpEvery = 5
			)
			tick := time.NewTicker(time.Second / rate)
			defer tick.Stop()
			type sent struct {
				id        uint16
				afterKill bool
			}
			var udp []sent
			var tcp []struct {
				r         result
				afterKill bool
			}
			var killed time.Time
			for i := range total {
				<-tick.C
				if i == killAt {
					killUnbound(t, a)
					killed = time.Now()
				}
				id := uint16(i + 1)
				lc.send(t, id)
				udp = append(udp, sent{id, i >= killAt})
				if i%tcpEvery == 0 {
					tcp = append(tcp, struct {
						r         result
						afterKill bool
					}{tc.ask(t, whoName, dns.TypeTXT, id), i >= killAt})
				}
			}
			ids := make([]uint16, len(udp))
			for k, s := range udp {
				ids[k] = s.id
			}
			got := lc.wait(ids)

			// Success across the switch, and who answered.
			type tally struct{ n, ok, a, b int }
			var before, after tally
			count := func(r result, afterKill bool) {
				tl := &before
				if afterKill {
					tl = &after
				}
				tl.n++
				if r.ok && r.rcode == dns.RcodeSuccess && (r.who == "a" || r.who == "b") {
					tl.ok++
					if r.who == "a" {
						tl.a++
					} else {
						tl.b++
					}
				}
			}
			for _, s := range udp {
				count(got[s.id], s.afterKill)
			}
			for _, s := range tcp {
				count(s.r, s.afterKill)
			}
			t.Logf("before the kill: %d/%d answered (a %d, b %d); after: %d/%d (a %d, b %d)",
				before.ok, before.n, before.a, before.b, after.ok, after.n, after.a, after.b)
			for _, tl := range []struct {
				what string
				t    tally
			}{{"before the kill", before}, {"across the switch", after}} {
				if fails := tl.t.n - tl.t.ok; fails*100 > tl.t.n {
					t.Errorf("%s: %d of %d queries failed, want at most 1 %%", tl.what, fails, tl.t.n)
				}
			}
			if after.a != 0 {
				t.Errorf("%d answers from the killed server after the kill", after.a)
			}
			switch policy {
			case "first-available":
				if before.b != 0 {
					t.Errorf("first-available: %d answers from the standby while the primary was up", before.b)
				}
			case "round-robin":
				if before.a < before.n/4 || before.b < before.n/4 {
					t.Errorf("round-robin: a %d, b %d of %d before the kill: not spread", before.a, before.b, before.n)
				}
			}

			// Marked down, once, by fast failures; the other never changes.
			awaitOutput(t, tp, "the killed server marked down", func(out string) bool { return len(stateChanges(out, a.Addr4)) >= 1 })
			if sc := stateChanges(tp.Output(), a.Addr4); sc[0].state != "down" {
				t.Fatalf("first state change of %v: %q, want down", a.Addr4, sc[0].state)
			} else if !sc[0].at.IsZero() {
				t.Logf("switch: %v marked down %v after the kill was confirmed", a.Addr4, sc[0].at.Sub(killed).Round(time.Millisecond))
			}

			// Back on the same port: the probes bring it up again.
			restartUnbound(t, a)
			awaitOutput(t, tp, "the restarted server marked up", func(out string) bool { return len(stateChanges(out, a.Addr4)) >= 2 })
			if got := states(stateChanges(tp.Output(), a.Addr4)); strings.Join(got, ",") != "down,up" {
				t.Errorf("state changes of %v: %v, want [down up]", a.Addr4, got)
			}
			const again = 40
			var ids2 []uint16
			for i := range again {
				<-tick.C
				id := uint16(1000 + i)
				lc.send(t, id)
				ids2 = append(ids2, id)
			}
			var back tally
			for _, r := range lc.wait(ids2) {
				back.n++
				if r.ok && r.rcode == dns.RcodeSuccess {
					back.ok++
					switch r.who {
					case "a":
						back.a++
					case "b":
						back.b++
					}
				}
			}
			t.Logf("after the restart: %d/%d answered (a %d, b %d)", back.ok, back.n, back.a, back.b)
			switch policy {
			case "first-available":
				if back.a != again {
					t.Errorf("first-available after the restart: a %d, b %d of %d: traffic did not return to the primary", back.a, back.b, again)
				}
			case "round-robin":
				if back.ok != again || back.a < again/4 || back.b < again/4 {
					t.Errorf("round-robin after the restart: a %d, b %d of %d answered %d: not both again", back.a, back.b, again, back.ok)
				}
			}
			if sc := stateChanges(tp.Output(), b.Addr4); len(sc) != 0 {
				t.Errorf("the server that stayed up changed state: %v", states(sc))
			}

			tc.close()
			cnt := tp.Stop()
			checkTCPCounters(t, cnt)
			t.Logf("final counters: failovers=%d retries_denied=%d resp_read_errors=%d timed_out=%d tcp_failovers=%d tcp_retries_denied=%d tcp_timed_out=%d",
				cnt["failovers"], cnt["retries_denied"], cnt["resp_read_errors"], cnt["timed_out"],
				cnt["tcp_failovers"], cnt["tcp_retries_denied"], cnt["tcp_timed_out"])
			if cnt["failovers"]+cnt["tcp_failovers"] == 0 || cnt["resp_read_errors"] == 0 {
				t.Errorf("no failover or no ICMP error counted: %s", testenv.FormatCounters(cnt))
			}
			if cnt["retries_denied"]+cnt["tcp_retries_denied"] != 0 {
				t.Errorf("retries denied at 50 queries/s: %s", testenv.FormatCounters(cnt))
			}
		})
	}
}

// TestProxyV2Unbound: a real Unbound takes PROXY v2 on one port
// (proxy-protocol-port, unbound ≥ 1.17) and, by access-control, refuses
// 127.0.0.0/8 except 127.0.0.2. Per unbound.conf(5) the address in the
// header is the client for ACL and logging, and the proxy's own address is
// checked too ("initial ACL"): it must be allowed, so 127.0.0.1/32 is
// (checked by hand on 1.17.1: without that line every proxied query is
// REFUSED). The refuse line for 127.0.0.0/8 replaces testenv's allow for
// the same netblock (the later duplicate wins). Through tapproxy with
// ;proxy-v2, over UDP and TCP, the client from 127.0.0.2 gets NOERROR and
// the one from 127.0.0.3 gets REFUSED from Unbound: Unbound saw the real
// address. The control, the same clients through tapproxy to Unbound's
// plain port, gets NOERROR for both (Unbound sees only 127.0.0.1).
func TestProxyV2Unbound(t *testing.T) {
	pp := testenv.FreePort(t, "ip4")
	u := testenv.StartUnbound(t, testenv.UnboundOptions{Extra: fmt.Sprintf(
		"    interface: 127.0.0.1@%d\n    proxy-protocol-port: %d\n"+
			"    access-control: 127.0.0.0/8 refuse\n"+
			"    access-control: 127.0.0.1/32 allow\n"+ // the proxy itself, and testenv's readiness probe
			"    access-control: 127.0.0.2/32 allow", pp, pp)})
	tests := []struct {
		name     string
		upstream string
		want     map[string]int // client address → rcode
	}{
		{"proxy-v2", fmt.Sprintf("127.0.0.1:%d;proxy-v2", pp),
			map[string]int{"127.0.0.2": dns.RcodeSuccess, "127.0.0.3": dns.RcodeRefused}},
		{"without proxy-v2 (control)", u.Addr4.String(),
			map[string]int{"127.0.0.2": dns.RcodeSuccess, "127.0.0.3": dns.RcodeSuccess}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			listen := loopback(testenv.FreePort(t, "ip4"))
			tp := testenv.StartTapproxy(t, "--listen", listen.String(), "--upstream", tc.upstream,
				"--allow", "127.0.0.0/8", "--workers", "1")
			id := uint16(0x5000)
			for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
				want := tc.want[src]
				id++
				c := newClient(t, src)
				var m dns.Msg
				if err := m.Unpack(c.exchange(listen, query(t, "www."+testenv.Zone, id))); err != nil {
					t.Fatalf("UDP from %s: %v", src, err)
				}
				if m.Rcode != want || (want == dns.RcodeSuccess && len(m.Answer) == 0) {
					t.Errorf("UDP from %s: %s with %d answers, want %s", src, dns.RcodeToString[m.Rcode], len(m.Answer), dns.RcodeToString[want])
				}
				id++
				a := &tcpAsker{to: listen, src: src}
				r := a.ask(t, "www."+testenv.Zone, dns.TypeA, id)
				a.close()
				if !r.ok || r.rcode != want {
					t.Errorf("TCP from %s: %+v, want %s", src, r, dns.RcodeToString[want])
				}
			}
			cnt := tp.Stop()
			checkTCPCounters(t, cnt)
			testenv.WantCounters(t, cnt, counters("received", 2, "forwarded", 2, "answered", 2, "timed_out", 0,
				"refused_acl", 0, "tcp_answered", 2, "tcp_timed_out", 0))
		})
	}
}

// TestLoopRefusedAtStartup: an upstream that is tapproxy's own listen
// address would send every query back to itself; tapproxy refuses to start
// (exit code 2) and says why, whether it is the only upstream or one of
// several.
func TestLoopRefusedAtStartup(t *testing.T) {
	port := testenv.FreePort(t, "ip4")
	self := loopback(port)
	other := loopback(testenv.FreePort(t, "ip4"))
	tests := []struct {
		name string
		args []string
	}{
		{"only upstream", []string{"--listen", self.String(), "--upstream", self.String()}},
		{"second upstream", []string{"--listen", self.String(), "--upstream", other.String(), "--upstream", self.String()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out := runTapproxyExit(t, tc.args...)
			if code != 2 {
				t.Fatalf("exit code %d, want 2; output:\n%s", code, out)
			}
			if !strings.Contains(out, "forwarding loop") || !strings.Contains(out, self.String()) {
				t.Fatalf("output does not name the loop and the upstream %v:\n%s", self, out)
			}
			if strings.Contains(out, "msg=ready") {
				t.Fatalf("tapproxy became ready before refusing:\n%s", out)
			}
		})
	}
}

// TestLoopBetweenTwoProxies: tapproxy A forwards to tapproxy B and B to A.
// Neither can see the loop by addresses (each query comes from the other's
// upstream socket, not its own), so a query goes round until an in-flight
// table is full: the next arrival is dropped (dropped_inflight_full), which
// ends the chain (one datagram in, at most one out: nothing multiplies),
// and every slot then times out. So each query that enters the loop costs
// at most 2 × --max-inflight + 2 datagrams, sent as fast as the two can
// forward them: a burst bounded by the tables, not a storm that feeds
// itself.
//
// What keeps it going is anything that keeps sending queries in: clients,
// and tapproxy's own active probes. After a chain times out, each proxy
// marks the other down and probes it every --probe-interval; a probe is a
// query like any other, so each one sends a fresh chain round. The second
// case measures that rate: about 2 chains per probe interval for as long
// as both run. Both proxies are stopped at the end of each case.
func TestLoopBetweenTwoProxies(t *testing.T) {
	const maxInflight = 64
	chain := uint64(2*maxInflight + 2) // datagrams one query can cause, at most
	tests := []struct {
		name          string
		queries       int
		probeInterval time.Duration
		idle          time.Duration // after the queries, before stopping
	}{
		// Probes every hour: only the client's queries enter the loop.
		{"client queries only", 3, time.Hour, 0},
		// Probes every 250 ms: they keep re-entering the loop.
		{"with active probes", 1, 250 * time.Millisecond, 2 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pa := testenv.FreePort(t, "ip4")
			pb := testenv.FreePort(t, "ip4")
			for pb == pa {
				pb = testenv.FreePort(t, "ip4")
			}
			la, lb := loopback(pa), loopback(pb)
			flags := []string{"--workers", "1", "--max-inflight", fmt.Sprint(maxInflight), "--timeout", "500ms",
				"--probe-interval", tc.probeInterval.String(), "--tcp=false"}
			tpA := testenv.StartTapproxy(t, append([]string{"--listen", la.String(), "--upstream", lb.String()}, flags...)...)
			tpB := testenv.StartTapproxy(t, append([]string{"--listen", lb.String(), "--upstream", la.String()}, flags...)...)
			c := newClient(t, "127.0.0.1")
			start := time.Now()
			for i := range tc.queries {
				id := uint16(0x7000 + i)
				c.send(la, query(t, "loop."+testenv.Zone, id))
				// No server is behind the loop: no answer can come. The
				// wait (a read deadline) is longer than --timeout plus a
				// sweep, so the tables drain before the next query.
				if r := c.await(la, id, time.Second); r != nil {
					t.Errorf("query %d answered through a loop: %x", i, r)
				}
			}
			if r, _, ok := c.recv(tc.idle); ok {
				t.Errorf("unexpected datagram while idle: %x", r)
			}
			window := time.Since(start)
			// A stops reading first; once it has, nothing goes round.
			ca, cb := tpA.Stop(), tpB.Stop()
			recv := ca["received"] + cb["received"]
			t.Logf("%d client queries, probes every %v, %v: A received %d (forwarded %d, dropped_inflight_full %d, timed_out %d), "+
				"B received %d (forwarded %d, dropped_inflight_full %d, timed_out %d): %d datagrams, %.0f/s",
				tc.queries, tc.probeInterval, window.Round(time.Millisecond),
				ca["received"], ca["forwarded"], ca["dropped_inflight_full"], ca["timed_out"],
				cb["received"], cb["forwarded"], cb["dropped_inflight_full"], cb["timed_out"],
				recv, float64(recv)/window.Seconds())
			// Entries into the loop: the client's queries, and each
			// proxy's probes over the window (+2 each for the edges and
			// the time Stop takes to stop the reading).
			entries := uint64(tc.queries)
			if tc.probeInterval < time.Hour {
				entries += 2 * (uint64(window/tc.probeInterval) + 2)
			}
			if recv > entries*chain {
				t.Errorf("%d datagrams, want at most %d (%d entries into the loop × %d): the loop is not bounded by the tables",
					recv, entries*chain, entries, chain)
			}
			if tc.probeInterval == time.Hour && recv <= uint64(tc.queries)*2 {
				t.Errorf("%d datagrams for %d queries: the queries did not go round as described", recv, tc.queries)
			}
			if ca["dropped_inflight_full"]+cb["dropped_inflight_full"] == 0 {
				t.Errorf("no table filled: the chains did not end as described")
			}
			if ca["loop_detected"]+cb["loop_detected"] != 0 {
				t.Errorf("loop_detected counted for another proxy's socket")
			}
		})
	}
}
