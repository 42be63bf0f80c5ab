//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// The impairment the slow and lossy upstream tests apply, in each
// direction: 10 % loss, 10 % duplicates, delays uniform in [0, 120 ms) so
// datagrams overtake each other. With tapproxy's --timeout of 100 ms, most
// answers (a round trip is the sum of two such delays) arrive after their
// query has timed out.
const (
	impairTimeout = 100 * time.Millisecond
	impairSeed    = 20261127
)

var impairCfg = impairConfig{seed: impairSeed, drop: 0.10, dup: 0.10, jitter: 120 * time.Millisecond}

// impairSetup is one way of putting a slow and lossy path between tapproxy
// and its upstream.
type impairSetup struct {
	how      string
	listen   netip.AddrPort               // tapproxy's client-facing address
	newConn  func() (*net.UDPConn, error) // a client socket that reaches listen
	sc       *scraper                     // tapproxy's metrics
	stop     func() map[string]uint64     // SIGTERM, final counters (invariants checked)
	relay    *impairRelay                 // nil when the kernel (netem) impairs
	servfail bool
	// fixedPorts: tapproxy runs with --upstream-port-rotate 0, so every
	// datagram the relay delivers reaches an open tapproxy socket and
	// must be counted. With rotation (the default), a late or duplicate
	// answer may arrive after its source port was retired and closed: it
	// never reaches tapproxy (ICMP port unreachable) and is not counted.
	fixedPorts bool
	// settle bounds the wait for answers still on their way once tapproxy
	// has nothing in flight, when there is no relay to ask (netem's
	// largest delay, twice, plus scheduling).
	settle time.Duration
}

// TestImpairedUpstream: many clients through tapproxy to an upstream behind
// a slow and lossy path (delay with jitter, loss, duplicates, reordering);
// the timeout is short, so most answers arrive late. All clients use the
// same IDs, and each asks names of its own. No client may ever get a reply
// that is not for its own query (ID and question), nor two replies for
// one query; an answer must be the upstream's answer to that very query,
// byte for byte; late and duplicate answers must be counted (resp_late,
// resp_unknown_id), and every datagram the path delivered to tapproxy must
// be counted in exactly one response fate.
//
// "loopback-relay" runs everything on 127.0.0.1 with the impairment relay
// of this package and --servfail-on-timeout; "netns" runs tapproxy and the
// upstream in two network namespaces joined by a veth pair, impaired by
// tc netem on the veth when the kernel has it and by the relay (inside the
// upstream's namespace) when it does not, without --servfail-on-timeout.
// It needs root (ip netns); CI runs as root.
func TestImpairedUpstream(t *testing.T) {
	t.Run("loopback-relay", func(t *testing.T) {
		up, err := listenUDPIn("", netip.MustParseAddrPort("127.0.0.1:0"))
		if err != nil {
			t.Fatal(err)
		}
		serveAnswers(t, up)
		front, err := listenUDPIn("", netip.MustParseAddrPort("127.0.0.1:0"))
		if err != nil {
			t.Fatal(err)
		}
		relay := startImpairRelay(t, impairCfg, front, up.LocalAddr().(*net.UDPAddr).AddrPort(), func() (*net.UDPConn, error) {
			return listenUDPIn("", netip.MustParseAddrPort("127.0.0.1:0"))
		})
		listen := loopback(testenv.FreePort(t, "ip4"))
		metrics := loopback(testenv.FreePort(t, "tcp4")).String()
		tp := testenv.StartTapproxy(t, "--listen", listen.String(), "--upstream", front.LocalAddr().String(),
			"--workers", "2", "--timeout", impairTimeout.String(), "--probe-interval", "1h",
			"--servfail-on-timeout", "--metrics", metrics)
		runImpaired(t, impairSetup{
			how:    "impairment relay on loopback",
			listen: listen,
			newConn: func() (*net.UDPConn, error) {
				return listenUDPIn("", netip.MustParseAddrPort("127.0.0.1:0"))
			},
			sc: newScraper(metrics), stop: tp.Stop, relay: relay, servfail: true,
		})
	})
	t.Run("netns", impairNetns)
}

// impairNetns builds the namespace pair: tapproxy and its clients in one,
// the upstream in the other (192.0.2.1:53, TEST-NET-1, which exists only
// inside these namespaces).
func impairNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the netns variant needs root for ip netns (CI runs as root)")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s (iproute2) is required: apt-get install iproute2", tool)
		}
	}
	nsUp, nsPx, vUp, vPx := netnsPair(t, "tpi")

	upAddr := netip.MustParseAddrPort("192.0.2.1:53")
	// netem: the same impairment as the relay, in each direction (delay
	// 60 ms ± 60 ms is uniform in [0, 120 ms)).
	netem := []string{"qdisc", "add", "dev", "", "root", "netem", "delay", "60ms", "60ms",
		"loss", "10%", "duplicate", "10%"}
	withDev := func(dev string) []string { a := append([]string(nil), netem...); a[3] = dev; return a }
	var relay *impairRelay
	how := "tc netem on the veth pair between two network namespaces"
	out, err := exec.Command("tc", append([]string{"-n", nsPx}, withDev(vPx)...)...).CombinedOutput()
	if err == nil {
		if out, err := exec.Command("tc", append([]string{"-n", nsUp}, withDev(vUp)...)...).CombinedOutput(); err != nil {
			t.Fatalf("netem on %s worked but not on %s: %v\n%s", vPx, vUp, err, out)
		}
		up, err := listenUDPIn(nsUp, upAddr)
		if err != nil {
			t.Fatal(err)
		}
		serveAnswers(t, up)
	} else {
		// This kernel has no netem (sch_netem): the relay impairs
		// instead, inside the upstream's namespace, in front of an
		// upstream on that namespace's loopback.
		how = fmt.Sprintf("impairment relay inside the upstream's namespace (tc netem unavailable: %s)", strings.TrimSpace(string(out)))
		up, err := listenUDPIn(nsUp, netip.MustParseAddrPort("127.0.0.1:53"))
		if err != nil {
			t.Fatal(err)
		}
		serveAnswers(t, up)
		front, err := listenUDPIn(nsUp, upAddr)
		if err != nil {
			t.Fatal(err)
		}
		relay = startImpairRelay(t, impairCfg, front, up.LocalAddr().(*net.UDPAddr).AddrPort(), func() (*net.UDPConn, error) {
			return listenUDPIn(nsUp, netip.MustParseAddrPort("127.0.0.1:0"))
		})
	}

	listen := netip.MustParseAddrPort("127.0.0.1:5300")
	metrics := "127.0.0.1:9153"
	tp := startInNetns(t, nsPx, testenv.BuildTapproxy(t), "--listen", listen.String(), "--upstream", upAddr.String(),
		"--workers", "2", "--timeout", impairTimeout.String(), "--probe-interval", "1h", "--upstream-port-rotate", "0",
		"--metrics", metrics)
	tp.await(t, "msg=ready")
	runImpaired(t, impairSetup{
		how:    how,
		listen: listen,
		newConn: func() (*net.UDPConn, error) {
			return listenUDPIn(nsPx, netip.MustParseAddrPort("127.0.0.1:0"))
		},
		sc: newScraperInNetns(nsPx, metrics),
		stop: func() map[string]uint64 {
			t.Helper()
			out := tp.stop(t)
			c, err := testenv.ParseFinalCounters(out)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			testenv.CheckCounters(t, c)
			return c
		},
		relay:      relay,
		fixedPorts: true,
		settle:     2*120*time.Millisecond + time.Second,
	})
}

// runImpaired sends the clients' queries through s and checks what they
// got and what tapproxy counted.
func runImpaired(t *testing.T, s impairSetup) {
	t.Helper()
	clients, perClient := 50, 60
	if testenv.RaceEnabled() {
		clients, perClient = 20, 40
	}
	const (
		pace      = 10 * time.Millisecond // between rounds (one query per client)
		firstID   = 0x4000                // every client uses IDs firstID, firstID+1, ...
		waitLimit = 20 * time.Second
	)
	t.Logf("impairment: %s; seed %d; %d clients × %d queries, every client using the same IDs", s.how, impairSeed, clients, perClient)
	type cl struct {
		log *replyLog
		q   map[uint16][]byte
	}
	cs := make([]*cl, clients)
	conns := make([]*net.UDPConn, clients)
	for k := range cs {
		c, err := s.newConn()
		if err != nil {
			t.Fatalf("client socket: %v", err)
		}
		conns[k] = c
		cs[k] = &cl{log: logReplies(t, c), q: map[uint16][]byte{}}
	}
	for i := 0; i < perClient; i++ {
		start := time.Now()
		for k, c := range cs {
			id := uint16(firstID + i)
			q := query(t, fmt.Sprintf("c%02d-q%03d.impair.test.", k, i), id)
			c.q[id] = q
			if _, err := conns[k].WriteToUDPAddrPort(q, s.listen); err != nil {
				t.Fatalf("client %d: %v", k, err)
			}
		}
		time.Sleep(time.Until(start.Add(pace))) // pacing, not synchronisation
	}
	sent := uint64(clients * perClient)

	// Quiescence: every query read and settled, the path drained, and
	// every datagram it delivered read by tapproxy.
	s.sc.waitMetrics(t, "every query received and settled", waitLimit, func(p promSnap) bool {
		return p.u("tapproxy_received_total")+p.clientKernelDrops() == sent && p.u("tapproxy_in_flight") == 0
	})
	var delivered uint64
	if s.relay != nil {
		s.relay.waitIdle(t, waitLimit)
		delivered = s.relay.toProxy.Load()
		if s.fixedPorts {
			// Every datagram the relay handed to tapproxy's upstream
			// sockets is read and counted in exactly one response fate
			// (or dropped by the kernel, counted too).
			s.sc.waitMetrics(t, fmt.Sprintf("every relayed answer (%d) counted", delivered), waitLimit, func(p promSnap) bool {
				return p.u("tapproxy_resp_received_total")+uint64(p.getWhere("tapproxy_socket_kernel_drops_total", `kind="upstream"`)) == delivered
			})
		}
	} else {
		time.Sleep(s.settle) // netem's largest delay bounds what is still on the wire
	}
	before := s.sc.must(t)
	cnt := s.stop()
	replied := cnt["answered"] + cnt["servfail_sent"]
	total := func() (n uint64) {
		for _, c := range cs {
			n += uint64(c.log.count())
		}
		return n
	}
	for deadline := time.Now().Add(answerWait); total() < replied && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // polling the readers: tapproxy has exited
	}

	var answers, servfails, wrong uint64
	for k, c := range cs {
		seen := map[uint16]bool{}
		for _, r := range c.log.replies() {
			if len(r) < 12 {
				t.Errorf("client %d: reply %x shorter than a header", k, r)
				continue
			}
			id := idOf(r)
			q, ok := c.q[id]
			if !ok {
				t.Errorf("client %d: reply with ID %#04x, an ID it never used", k, id)
				continue
			}
			if !bytes.Equal(questionBytes(r), questionBytes(q)) {
				wrong++
				t.Errorf("client %d ID %#04x: reply for question %q, the client asked %q (delivered to the wrong client)", k, id, qname(r), qname(q))
				continue
			}
			if seen[id] {
				t.Errorf("client %d ID %#04x: a second reply for one query", k, id)
			}
			seen[id] = true
			if rcodeOf(r) == dns.RcodeServerFailure {
				servfails++
				if !s.servfail {
					t.Errorf("client %d ID %#04x: SERVFAIL without --servfail-on-timeout", k, id)
				}
				checkMadeAnswer(t, "SERVFAIL on timeout", q, r, dns.RcodeServerFailure)
				continue
			}
			answers++
			if want := answerA(q, "192.0.2.53"); !bytes.Equal(r, want) {
				t.Errorf("client %d ID %#04x: reply %x is not the upstream's answer to its query %x", k, id, r, want)
			}
		}
		if s.servfail && len(seen) != len(c.q) {
			t.Errorf("client %d: replies to %d of its %d queries; with --servfail-on-timeout every query gets one", k, len(seen), len(c.q))
		}
	}
	relayNote := "netem (no relay counts)"
	if s.relay != nil {
		relayNote = fmt.Sprintf("relay: %d to the upstream, %d to tapproxy (%d not read: sent to a retired port), %d dropped, %d duplicated",
			s.relay.toUp.Load(), delivered, delivered-min(delivered, cnt["resp_received"]), s.relay.dropped.Load(), s.relay.duplicated.Load())
	}
	t.Logf("%d queries: %d answered, %d SERVFAIL at the clients; %s; %s", sent, answers, servfails, relayNote,
		testenv.FormatCounters(pickCounters(cnt, "received", "forwarded", "answered", "timed_out", "servfail_sent",
			"resp_received", "resp_matched", "resp_late", "resp_unknown_id", "resp_question_mismatch", "resp_wrong_source", "kernel_drops")))

	if wrong != 0 {
		t.Errorf("%d replies were delivered to a client that did not ask", wrong)
	}
	if answers != cnt["answered"] || servfails != cnt["servfail_sent"] {
		t.Errorf("clients got %d answers and %d SERVFAIL; counters: answered %d, servfail_sent %d", answers, servfails, cnt["answered"], cnt["servfail_sent"])
	}
	if cnt["received"] != before.u("tapproxy_received_total") || cnt["received"]+before.clientKernelDrops() != sent {
		t.Errorf("received %d (+ %d kernel drops) of %d queries sent", cnt["received"], before.clientKernelDrops(), sent)
	}
	if s.relay != nil && s.fixedPorts && cnt["resp_received"] != before.u("tapproxy_resp_received_total") {
		t.Errorf("resp_received %d at exit, %d once the relay was drained: an answer arrived after the path was idle", cnt["resp_received"], before.u("tapproxy_resp_received_total"))
	}
	if s.relay != nil && cnt["resp_received"] > delivered {
		t.Errorf("resp_received %d, but the relay delivered only %d datagrams to tapproxy", cnt["resp_received"], delivered)
	}
	// The impairment must really have happened, or nothing was tested.
	if cnt["answered"] == 0 || cnt["timed_out"] == 0 {
		t.Errorf("want both answered and timed-out queries: answered %d, timed_out %d", cnt["answered"], cnt["timed_out"])
	}
	if cnt["resp_late"] == 0 {
		t.Errorf("no late answer was counted (resp_late = 0) although most answers arrive after the %v timeout", impairTimeout)
	}
	if cnt["resp_unknown_id"] == 0 {
		t.Errorf("no duplicate answer was counted (resp_unknown_id = 0) although 10%% of answers are duplicated")
	}
}
