package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	dnstap "github.com/dnstap/golang-dnstap"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// dnstapQueries is how many queries the end-to-end dnstap runs send.
const dnstapQueries = 300

// TestDnstapFileUnbound sends varied queries through tapproxy to a real
// Unbound (through a recording relay, which sees the upstream leg as it is
// on the wire) with --dnstap-file, stops tapproxy, and checks the file: the
// exact record counts, every record matched to what the clients sent and
// received byte for byte, pairing by seq and by addresses+ID+question,
// times in order, and (with --dnstap-types all) the FORWARDER_* records
// carrying the on-wire upstream ID and tapproxy's upstream source port.
// The corpus validator and the dnstap CLI must agree.
func TestDnstapFileUnbound(t *testing.T) {
	t.Parallel()
	u := testenv.StartUnbound(t, testenv.UnboundOptions{})
	for i, types := range []string{"client", "all"} {
		t.Run(types, func(t *testing.T) {
			relay := dtStartRelay(t, u.Addr4)
			path := filepath.Join(t.TempDir(), "dns.fstrm")
			tp, listen := dtStartProxy(t, relay.Addr, "--dnstap-file", path, "--dnstap-types", types)

			seed := uint64(0xd57a + i)
			t.Logf("query seed %#x", seed)
			n := dnstapQueries
			ex := dtRun(t, listen, dtVariedQueries(t, rand.New(rand.NewPCG(seed, seed)), n), 4, 0, nil)
			dtWantAllAnswered(t, "through tapproxy", ex)

			c := tp.Stop()
			perTxn := 2
			if types == "all" {
				perTxn = 4
			}
			testenv.WantCounters(t, c, dtCounters(
				"received", n, "forwarded", n, "answered", n, "resp_matched", n, "timed_out", 0,
				"dnstap_submitted", n, "dnstap_sampled_out", 0, "dnstap_produced", perTxn*n, "dnstap_written", perTxn*n,
				"dnstap_file_rotations", 0, "dnstap_file_write_errors", 0,
			))
			dtWantZeroDrops(t, c)
			dtCheckInvariant(t, c)

			if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o640 {
				t.Errorf("dnstap file %s: %v, mode %v: want mode 0640 (tap/fstrm/doc.go)", path, err, st.Mode())
			}
			recs := dtReadFile(t, path, true)
			dtCheckDelivered(t, c, len(recs))
			want := map[string]int{"CLIENT_QUERY": n, "CLIENT_RESPONSE": n}
			if types == "all" {
				want["FORWARDER_QUERY"], want["FORWARDER_RESPONSE"] = n, n
			}
			dtWantTypes(t, "file (Go decoder)", dtCountTypes(recs), want)
			dtCheckCommon(t, recs)
			txns := dtCheckClientRecords(t, recs, ex)
			if len(txns) != n {
				t.Errorf("%d distinct seq values, want %d", len(txns), n)
			}
			for _, r := range recs {
				if dtAddr(r.M, true) != listen && (r.M.GetType() == dnstap.Message_CLIENT_QUERY || r.M.GetType() == dnstap.Message_CLIENT_RESPONSE) {
					t.Fatalf("%v: response address %v, want the listen address %v", r, dtAddr(r.M, true), listen)
				}
			}
			if types == "all" {
				dtCheckForwarderRecords(t, txns, relay)
			}

			var exp []string
			for k, v := range want {
				exp = append(exp, k+"="+strconv.Itoa(v))
			}
			sum := dtValidate(t, path, strings.Join(exp, ","))
			t.Logf("validator: %s", sum)
			dtWantTypes(t, "dnstap -r -y", dtCLICounts(t, path), want)
		})
	}
}

// dtCheckForwarderRecords checks the upstream leg of every transaction
// against what the relay saw: FORWARDER_QUERY is the datagram tapproxy sent
// (on-wire ID, from its upstream socket's address and port, to the
// upstream), FORWARDER_RESPONSE the datagram it got back; both differ from
// the client leg only in the ID; the times are in causal order.
func dtCheckForwarderRecords(t *testing.T, txns map[uint64]*dtTxn, relay *dtRelay) {
	t.Helper()
	in, out := relay.seen()
	if len(in) != len(txns) || len(out) != len(txns) {
		t.Errorf("the relay saw %d queries and %d answers, want %d each (one per transaction)", len(in), len(out), len(txns))
	}
	sent := make(map[string]int)
	for _, d := range in {
		sent[d.Peer.String()+"|"+string(d.Data)]++
	}
	got := make(map[string]int)
	for _, d := range out {
		got[d.Peer.String()+"|"+string(d.Data)]++
	}
	ports := make(map[uint16]bool)
	errs := 0
	fail := func(format string, a ...any) {
		if errs < 10 {
			t.Errorf(format, a...)
		}
		errs++
	}
	for seq, x := range txns {
		if x.FQ == nil || x.FR == nil {
			fail("seq %d: FORWARDER_QUERY %v, FORWARDER_RESPONSE %v: want both", seq, x.FQ, x.FR)
			continue
		}
		fq, fr := x.FQ.M, x.FR.M
		src, dst := dtAddr(fq, false), dtAddr(fq, true)
		if dst != relay.Addr {
			fail("%v: upstream address %v, want %v", x.FQ, dst, relay.Addr)
		}
		if dtAddr(fr, false) != src || dtAddr(fr, true) != dst {
			fail("%v: addresses %v -> %v differ from its FORWARDER_QUERY's %v -> %v", x.FR, dtAddr(fr, false), dtAddr(fr, true), src, dst)
		}
		ports[src.Port()] = true
		k := src.String() + "|" + string(fq.GetQueryMessage())
		if sent[k] == 0 {
			fail("%v: no datagram %x from %v reached the upstream (the on-wire query with its ID and source port)", x.FQ, fq.GetQueryMessage(), src)
		} else {
			sent[k]--
		}
		k = src.String() + "|" + string(fr.GetResponseMessage())
		if got[k] == 0 {
			fail("%v: the upstream sent no datagram %x to %v", x.FR, fr.GetResponseMessage(), src)
		} else {
			got[k]--
		}
		cq, cr := x.CQ.M.GetQueryMessage(), x.CR.M.GetResponseMessage()
		uq, ur := fq.GetQueryMessage(), fr.GetResponseMessage()
		if len(uq) < 12 || len(ur) < 12 || !bytes.Equal(uq[2:], cq[2:]) || !bytes.Equal(ur[2:], cr[2:]) {
			fail("seq %d: upstream leg differs from the client leg beyond the ID:\nclient   %x / %x\nupstream %x / %x", seq, cq, cr, uq, ur)
			continue
		}
		if dtIDOf(uq) != dtIDOf(ur) {
			fail("seq %d: upstream query ID %#04x, answer ID %#04x", seq, dtIDOf(uq), dtIDOf(ur))
		}
		if len(fq.GetResponseMessage()) != 0 || len(fr.GetQueryMessage()) != 0 {
			fail("seq %d: FORWARDER_QUERY carries a response or FORWARDER_RESPONSE a query", seq)
		}
		cqt, fqt := dtQueryTime(x.CQ.M), dtQueryTime(fq)
		frq, frt, crt := dtQueryTime(fr), dtResponseTime(fr), dtResponseTime(x.CR.M)
		switch {
		case fqt.IsZero() || frt.IsZero():
			fail("seq %d: forwarder times missing (send %v, receive %v)", seq, fqt, frt)
		case !frq.Equal(fqt):
			fail("%v: query_time %v, want the send time %v of its FORWARDER_QUERY", x.FR, frq, fqt)
		case fqt.Before(cqt) || frt.Before(fqt) || crt.Before(frt):
			fail("seq %d: times out of causal order: client query %v, upstream send %v, upstream answer %v, client reply %v", seq, cqt, fqt, frt, crt)
		}
		if x.FQ.Extra != x.CQ.Extra || x.FR.Extra != x.CQ.Extra {
			fail("seq %d: the records' extra fields differ: %q %q %q", seq, x.CQ.Extra, x.FQ.Extra, x.FR.Extra)
		}
		if !strings.Contains(x.CQ.Extra, " up="+relay.Addr.String()) {
			fail("seq %d: annotation %q lacks up=%v", seq, x.CQ.Extra, relay.Addr)
		}
	}
	if errs > 10 {
		t.Errorf("... %d forwarder-record errors in all", errs)
	}
	t.Logf("upstream leg: %d transactions over %d tapproxy source ports", len(txns), len(ports))
}

// TestDnstapFstrmCapture sends dnstap to fstrm_capture (libfstrm's
// collector), over a unix socket and over TCP: tapproxy is stopped first
// (STOP answered by FINISH), then fstrm_capture, and the capture file must
// hold exactly the records tapproxy wrote, readable by the dnstap CLI, the
// validator and our Go decoder, matched byte for byte to the client's
// exchanges.
func TestDnstapFstrmCapture(t *testing.T) {
	t.Parallel()
	u := testenv.StartUnbound(t, testenv.UnboundOptions{})
	for i, mode := range []string{"unix", "tcp"} {
		t.Run(mode, func(t *testing.T) {
			dir := dtShortDir(t)
			out := filepath.Join(dir, "capture.fstrm")
			var capArgs, tpArgs []string
			if mode == "unix" {
				sock := filepath.Join(dir, "dnstap.sock")
				capArgs = []string{"-u", sock}
				tpArgs = []string{"--dnstap-unix", sock}
			} else {
				port := testenv.FreePort(t, "tcp4")
				capArgs = []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port)}
				tpArgs = []string{"--dnstap-tcp", fmt.Sprintf("127.0.0.1:%d", port)}
			}
			capture := dtStartCapture(t, out, capArgs...)
			tp, listen := dtStartProxy(t, u.Addr4, tpArgs...)
			capture.waitConnected(t, 1)

			seed := uint64(0xfc + i)
			n := dnstapQueries
			ex := dtRun(t, listen, dtVariedQueries(t, rand.New(rand.NewPCG(seed, seed)), n), 4, 0, nil)
			dtWantAllAnswered(t, "through tapproxy", ex)

			c := tp.Stop()
			testenv.WantCounters(t, c, dtCounters(
				"received", n, "answered", n,
				"dnstap_produced", 2*n, "dnstap_written", 2*n, "dnstap_connects", 1, "dnstap_connected", 0,
			))
			dtWantZeroDrops(t, c)
			dtCheckInvariant(t, c)
			if strings.Contains(tp.Output(), `msg="dnstap shutdown"`) {
				t.Errorf("tapproxy's dnstap shutdown was not clean (STOP/FINISH):\n%s", tp.Output())
			}
			capture.stop(t, syscall.SIGTERM)

			recs := dtReadFile(t, out, true)
			dtCheckDelivered(t, c, len(recs))
			want := map[string]int{"CLIENT_QUERY": n, "CLIENT_RESPONSE": n}
			dtWantTypes(t, "capture (Go decoder)", dtCountTypes(recs), want)
			dtWantTypes(t, "capture (dnstap -r -y)", dtCLICounts(t, out), want)
			dtCheckCommon(t, recs)
			dtCheckClientRecords(t, recs, ex)
			t.Logf("validator: %s", dtValidate(t, out, fmt.Sprintf("CLIENT_QUERY=%d,CLIENT_RESPONSE=%d", n, n)))
		})
	}
}
