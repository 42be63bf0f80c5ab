package testenv

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestModuleRootAndCorpus(t *testing.T) {
	root := ModuleRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.Contains(b, []byte("module github.com/tapproxy/tapproxy")) {
		t.Fatalf("ModuleRoot = %s: go.mod is not tapproxy's (%v)", root, err)
	}
	dir := DnstapCorpus(t)
	if _, err := os.Stat(filepath.Join(dir, "README.md")); err != nil {
		t.Fatalf("corpus %s has no README.md: %v", dir, err)
	}
}

func TestRequireToolFindsSbin(t *testing.T) {
	// named lives in /usr/sbin; it must be found even with a PATH without
	// sbin directories.
	t.Setenv("PATH", "/usr/bin:/bin")
	p := RequireTool(t, "named")
	if !strings.HasSuffix(p, "/named") {
		t.Fatalf("RequireTool(named) = %q", p)
	}
}

func TestFreePort(t *testing.T) {
	for _, network := range []string{"udp4", "tcp4", "udp6", "tcp6", "udp", "tcp", "ip4", "ip6", "ip"} {
		t.Run(network, func(t *testing.T) {
			port := FreePort(t, network)
			if port < portLow || port >= portHigh {
				t.Fatalf("port %d outside [%d,%d)", port, portLow, portHigh)
			}
			binds, err := bindsFor(network)
			if err != nil {
				t.Fatal(err)
			}
			if err := tryBind(binds, port); err != nil {
				t.Fatalf("port %d from FreePort(%q) is not bindable: %v", port, network, err)
			}
		})
	}
}

// ask sends m over UDP or TCP to addr and returns the answer.
func ask(t *testing.T, network string, addr netip.AddrPort, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr.String())
	if err != nil {
		t.Fatalf("%s query %v to %s: %v", network, m.Question, addr, err)
	}
	return r
}

func checkServer(t *testing.T, addrs []netip.AddrPort, names []Served) {
	for _, addr := range addrs {
		for _, s := range names {
			m := new(dns.Msg)
			m.SetQuestion(s.Name, s.Type)
			r := ask(t, "udp", addr, m)
			if r.Rcode != s.Rcode {
				t.Errorf("%s %s %s: rcode %s, want %s", addr, s.Name, dns.TypeToString[s.Type], dns.RcodeToString[r.Rcode], dns.RcodeToString[s.Rcode])
			}
			if r.Truncated != s.Truncates512 {
				t.Errorf("%s %s %s without EDNS: TC=%v, want %v", addr, s.Name, dns.TypeToString[s.Type], r.Truncated, s.Truncates512)
			}
		}
		// medium fits with EDNS; big needs TCP.
		m := new(dns.Msg)
		m.SetQuestion(MediumTXT, dns.TypeTXT)
		m.SetEdns0(1232, false)
		if r := ask(t, "udp", addr, m); r.Truncated || len(r.Answer) != 6 {
			t.Errorf("%s medium with EDNS: TC=%v, %d answers, want 6 untruncated", addr, r.Truncated, len(r.Answer))
		}
		m = new(dns.Msg)
		m.SetQuestion(BigTXT, dns.TypeTXT)
		if r := ask(t, "tcp", addr, m); r.Truncated || len(r.Answer) != 40 {
			t.Errorf("%s big over TCP: TC=%v, %d answers, want 40", addr, r.Truncated, len(r.Answer))
		} else if b, _ := r.Pack(); len(b) < 4000 {
			t.Errorf("%s big over TCP: %d bytes, want > 4000", addr, len(b))
		}
		// Names outside the zone are answered locally, never recursed.
		m = new(dns.Msg)
		m.SetQuestion("example.com.", dns.TypeA)
		if r := ask(t, "udp", addr, m); r.Rcode != dns.RcodeRefused {
			t.Errorf("%s example.com: rcode %s, want REFUSED", addr, dns.RcodeToString[r.Rcode])
		}
	}
}

func TestUnboundAnswers(t *testing.T) {
	u := StartUnbound(t, UnboundOptions{IPv6: true})
	checkServer(t, []netip.AddrPort{u.Addr4, u.Addr6}, u.Names)

	// Same question twice: identical bytes apart from the ID (no RRset
	// rotation), which the e2e transparency tests rely on.
	m := new(dns.Msg)
	m.SetQuestion(MultiA, dns.TypeA)
	q, _ := m.Pack()
	first := rawExchange(t, u.Addr4, q)
	for i := range 5 {
		binaryPutID(q, uint16(1000+i))
		again := rawExchange(t, u.Addr4, q)
		if !bytes.Equal(first[2:], again[2:]) {
			t.Fatalf("unbound answers differ between askings:\n%x\n%x", first, again)
		}
	}
}

func TestNamedAnswersAndTransfers(t *testing.T) {
	n := StartNamed(t, NamedOptions{IPv6: true})
	checkServer(t, []netip.AddrPort{n.Addr4, n.Addr6}, n.Names)

	tr := &dns.Transfer{}
	m := new(dns.Msg)
	m.SetAxfr(Zone)
	env, err := tr.In(m, n.Addr4.String())
	if err != nil {
		t.Fatalf("AXFR: %v", err)
	}
	var rrs int
	for e := range env {
		if e.Error != nil {
			t.Fatalf("AXFR: %v", e.Error)
		}
		rrs += len(e.RR)
	}
	// The SOA opens and closes the transfer (RFC 5936 §2.2).
	if want := len(zoneRecords()) + 1; rrs != want {
		t.Fatalf("AXFR: %d records, want %d", rrs, want)
	}
}

func binaryPutID(b []byte, id uint16) { b[0], b[1] = byte(id>>8), byte(id) }

func rawExchange(t *testing.T, to netip.AddrPort, q []byte) []byte {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no answer from %s: %v", to, err)
	}
	return buf[:n]
}

func TestFakeUpstream(t *testing.T) {
	f := FakeUpstream(t, "udp4", "127.0.0.1:0", func(q []byte, from netip.AddrPort, reply func([]byte), replyFrom func(int, []byte)) {
		wrong := Reply(q, dns.RcodeSuccess)
		wrong[0] ^= 0xFF
		reply(wrong)
		replyFrom(0, Reply(q, dns.RcodeRefused))
		reply(Reply(q, dns.RcodeSuccess))
	})
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion("www."+Zone, dns.TypeA)
	m.Id = 0x1234
	q, _ := m.Pack()
	q = append(q, 0xde, 0xad) // trailing junk is recorded too
	if _, err := c.WriteToUDPAddrPort(q, f.Addr); err != nil {
		t.Fatal(err)
	}
	got := f.WaitReceived(t, 1, 5*time.Second)
	if len(got) != 1 || !bytes.Equal(got[0].Data, q) {
		t.Fatalf("fake recorded %v, want exactly %x", got, q)
	}
	if got[0].From != c.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Errorf("recorded source %s, want %s", got[0].From, c.LocalAddr())
	}
	// All three replies were sent before WaitReceived returned, so they
	// are already queued on the loopback socket.
	type rx struct {
		b    []byte
		from netip.AddrPort
	}
	var rxs []rx
	buf := make([]byte, 1500)
	for len(rxs) < 3 {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("after %d replies: %v", len(rxs), err)
		}
		rxs = append(rxs, rx{append([]byte(nil), buf[:n]...), netip.AddrPortFrom(from.Addr().Unmap(), from.Port())})
	}
	if binaryID(rxs[0].b) != 0x1234^0xFF00 || rxs[0].from != f.Addr {
		t.Errorf("first reply: id %#x from %s, want wrong id %#x from %s", binaryID(rxs[0].b), rxs[0].from, 0x1234^0xFF00, f.Addr)
	}
	if rxs[1].from.Port() == f.Addr.Port() || rxs[1].b[3]&0xF != dns.RcodeRefused {
		t.Errorf("second reply from %s rcode %d, want another port and REFUSED", rxs[1].from, rxs[1].b[3]&0xF)
	}
	if binaryID(rxs[2].b) != 0x1234 || rxs[2].b[2]&0x80 == 0 || rxs[2].from != f.Addr {
		t.Errorf("third reply %x from %s, want the right answer from %s", rxs[2].b, rxs[2].from, f.Addr)
	}
}

func binaryID(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

func TestHeaderOnlyReply(t *testing.T) {
	q := []byte{0xAB, 0xCD, 0x01 | 0x04<<3 | 0x04, 0x20, 0, 1, 0, 0, 0, 0, 0, 1, 0xFF}
	got := HeaderOnlyReply(q, dns.RcodeFormatError)
	want := []byte{0xAB, 0xCD, 0x80 | 0x04<<3 | 0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0}
	if !bytes.Equal(got, want) {
		t.Fatalf("HeaderOnlyReply = %x, want %x", got, want)
	}
}

func TestParseFinalCounters(t *testing.T) {
	line := `time=2026-01-02T03:04:05.000Z level=INFO msg="final counters" received=10 dropped_short=1 note="a b=3" forwarded=9 bad=-1`
	tests := []struct {
		name    string
		out     string
		want    map[string]uint64
		wantErr bool
	}{
		{"one line", line + "\n", map[string]uint64{"received": 10, "dropped_short": 1, "forwarded": 9}, false},
		{"last wins", strings.Replace(line, "received=10", "received=1", 1) + "\nother\n" + line, map[string]uint64{"received": 10, "dropped_short": 1, "forwarded": 9}, false},
		{"missing", "time=x level=INFO msg=ready\n", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFinalCounters(tc.out)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) && !tc.wantErr {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// recordingTB captures Errorf so CheckCounters' own failures can be tested.
type recordingTB struct {
	testing.TB
	errs []string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Errorf(format string, a ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, a...))
}

func TestCheckCounters(t *testing.T) {
	good := map[string]uint64{}
	for _, k := range CounterKeys {
		good[k] = 0
	}
	good["received"], good["dropped_short"], good["refused_acl"], good["forwarded"] = 10, 1, 2, 7
	good["answered"], good["timed_out"] = 6, 1
	good["resp_received"], good["resp_matched"], good["resp_unknown_id"] = 8, 6, 2
	good["malformed"] = 3
	tests := []struct {
		name   string
		mutate func(map[string]uint64)
		want   string // substring of the first error; "" for none
	}{
		{"consistent", func(map[string]uint64) {}, ""},
		{"received", func(c map[string]uint64) { c["received"]++ }, "received = 11"},
		{"forwarded", func(c map[string]uint64) { c["answered"]-- }, "forwarded = 7"},
		{"responses", func(c map[string]uint64) { c["resp_late"]++ }, "resp_received = 8"},
		{"malformed", func(c map[string]uint64) { c["malformed"] = 8 }, "malformed = 8"},
		{"missing key", func(c map[string]uint64) { delete(c, "resp_late") }, "missing keys [resp_late]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := make(map[string]uint64)
			for k, v := range good {
				c[k] = v
			}
			tc.mutate(c)
			r := &recordingTB{TB: t}
			CheckCounters(r, c)
			switch {
			case tc.want == "" && len(r.errs) > 0:
				t.Fatalf("unexpected errors: %v", r.errs)
			case tc.want != "" && (len(r.errs) == 0 || !strings.Contains(r.errs[0], tc.want)):
				t.Fatalf("errors %v, want one containing %q", r.errs, tc.want)
			}
		})
	}
}

func TestListenArgs(t *testing.T) {
	got, err := listenArgs([]string{"--listen", "127.0.0.1:53", "-upstream", "127.0.0.1:1", "--listen=[::1]:5300", "-listen", "127.0.0.2:9"})
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53"), netip.MustParseAddrPort("[::1]:5300"), netip.MustParseAddrPort("127.0.0.2:9")}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("listenArgs = %v, want %v", got, want)
	}
	if _, err := listenArgs([]string{"--listen", "localhost:53"}); err == nil {
		t.Fatal("listenArgs accepted a host name")
	}
}

// standIn writes a python3 script that behaves like tapproxy's lifecycle:
// it logs msg=ready, and on SIGTERM logs the given final counters line and
// exits 0. (A shell script with a background sleep would race: a TERM sent
// to the sleep between fork and exec is caught by the shell's trap handler
// and lost.)
func standIn(t *testing.T, counters string) string {
	python := RequireTool(t, "python3")
	p := filepath.Join(t.TempDir(), "tapproxy-standin")
	script := "#!" + python + `
import signal, sys
def term(*_):
    sys.stderr.write('time=2026-01-01T00:00:00Z level=INFO msg="final counters" ` + counters + `\n')
    sys.stderr.flush()
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
sys.stderr.write("time=2026-01-01T00:00:00Z level=INFO msg=ready listen=127.0.0.1:1\n")
sys.stderr.flush()
while True:
    signal.pause()
`
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func allCounters(set map[string]uint64) string {
	var b strings.Builder
	for _, k := range CounterKeys {
		fmt.Fprintf(&b, "%s=%d ", k, set[k])
	}
	return strings.TrimSpace(b.String())
}

func TestTapproxyLifecycle(t *testing.T) {
	good := map[string]uint64{"received": 3, "dropped_short": 1, "forwarded": 2, "answered": 1, "timed_out": 1,
		"resp_received": 2, "resp_matched": 1, "resp_short": 1}
	bad := map[string]uint64{"received": 3, "forwarded": 2, "answered": 2}
	tests := []struct {
		name     string
		counters map[string]uint64
		wantErr  string
	}{
		{"consistent", good, ""},
		{"inconsistent", bad, "received = 3, but"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &recordingTB{TB: t}
			tp := startTapproxy(r, standIn(t, allCounters(tc.counters)), "--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2")
			if len(tp.Listen) != 1 || tp.Listen[0].String() != "127.0.0.1:1" {
				t.Errorf("Listen = %v", tp.Listen)
			}
			got := tp.Stop()
			for k, v := range tc.counters {
				if got[k] != v {
					t.Errorf("counter %s = %d, want %d", k, got[k], v)
				}
			}
			if again := tp.Stop(); fmt.Sprint(again) != fmt.Sprint(got) {
				t.Errorf("second Stop returned %v, want %v", again, got)
			}
			switch {
			case tc.wantErr == "" && len(r.errs) > 0:
				t.Errorf("unexpected errors: %v", r.errs)
			case tc.wantErr != "" && (len(r.errs) == 0 || !strings.Contains(r.errs[0], tc.wantErr)):
				t.Errorf("errors %v, want one containing %q", r.errs, tc.wantErr)
			}
		})
	}
}

func TestWaitLineSeesExit(t *testing.T) {
	p, err := startProcess("sh", t.TempDir(), "/bin/sh", "-c", "echo starting; echo oops >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.waitLine(func(l string) bool { return strings.Contains(l, "msg=ready") }, time.Minute)
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("waitLine = %v, want an exit error", err)
	}
	if out := p.out.String(); !strings.Contains(out, "oops") {
		t.Fatalf("output %q misses stderr", out)
	}
}

// TestToolPackagesInstalledByCI: every Debian package this harness names
// for a missing tool, and every package .ci/run checks a tool of, is in the
// Makefile's DEBIAN_PACKAGES (what `make deps` and so CI install), so a
// test cannot depend on a tool CI never installs.
func TestToolPackagesInstalledByCI(t *testing.T) {
	root := ModuleRoot(t)
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(mk), "\\\n", " ")
	installed := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, "DEBIAN_PACKAGES :="); ok {
			for _, p := range strings.Fields(v) {
				installed[p] = true
			}
		}
	}
	if len(installed) == 0 {
		t.Fatal("no DEBIAN_PACKAGES := line in the Makefile")
	}
	for tool, pkg := range toolPackages {
		if !installed[pkg] {
			t.Errorf("tool %s: package %s is not in the Makefile's DEBIAN_PACKAGES", tool, pkg)
		}
	}
	ci, err := os.ReadFile(filepath.Join(root, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(ci)
	i, j := strings.Index(s, "tools=("), -1
	if i >= 0 {
		j = strings.Index(s[i:], ")")
	}
	if i < 0 || j < 0 {
		t.Fatal(".ci/run has no tools=( ... ) list")
	}
	for _, pair := range strings.Fields(s[i+len("tools=(") : i+j]) {
		tool, pkg, ok := strings.Cut(pair, ":")
		if !ok || !installed[pkg] {
			t.Errorf(".ci/run checks %q, whose package is not in DEBIAN_PACKAGES", pair)
		}
		if want, known := toolPackages[tool]; known && want != pkg {
			t.Errorf(".ci/run says %s comes from %s, testenv says %s", tool, pkg, want)
		}
	}
}
