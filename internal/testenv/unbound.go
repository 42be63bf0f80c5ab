package testenv

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// UnboundOptions configures StartUnbound.
type UnboundOptions struct {
	// IPv6 also listens on [::1] (same port).
	IPv6 bool
	// Extra is appended verbatim to the server: clause.
	Extra string
}

// Unbound is a running unbound started by StartUnbound.
type Unbound struct {
	PID   int
	Addr4 netip.AddrPort // 127.0.0.1:port
	Addr6 netip.AddrPort // [::1]:port, zero unless IPv6 was asked for
	Conf  string         // path of the config file
	Names []Served       // what it answers (see ServedNames)
	proc  *process
}

// Output returns what unbound has logged so far.
func (u *Unbound) Output() string { return u.proc.out.String() }

// StartUnbound starts a real unbound (`unbound -d -c CONF`) on loopback at a
// free high port. It answers Zone from local-data and REFUSES everything
// else locally (local-zone "." refuse), so it never sends a query anywhere.
// rrset-roundrobin is off, so two askings of the same question get
// byte-identical answers apart from the ID. The server is stopped by PID in
// t.Cleanup.
func StartUnbound(t testing.TB, opts UnboundOptions) *Unbound {
	t.Helper()
	bin := RequireTool(t, "unbound")
	if opts.IPv6 {
		if err := loopbackV6Available(); err != nil {
			t.Fatalf("testenv: StartUnbound with IPv6: %v", err)
		}
	}
	network := "ip4"
	if opts.IPv6 {
		network = "ip"
	}
	var lastErr error
	for attempt := range 3 {
		dir := filepath.Join(t.TempDir(), fmt.Sprintf("unbound-%d", attempt))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		port := FreePort(t, network)
		conf := filepath.Join(dir, "unbound.conf")
		if err := os.WriteFile(conf, []byte(unboundConfig(dir, port, opts)), 0o644); err != nil {
			t.Fatalf("testenv: writing unbound config: %v", err)
		}
		p, err := startProcess("unbound", dir, bin, "-d", "-c", conf)
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		u := &Unbound{
			PID:   p.pid(),
			Addr4: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)),
			Conf:  conf,
			Names: ServedNames(),
			proc:  p,
		}
		if opts.IPv6 {
			u.Addr6 = netip.AddrPortFrom(netip.IPv6Loopback(), uint16(port))
		}
		// unbound logs "start of service" once its sockets are open; an
		// answered query then proves it serves the zone.
		_, lastErr = p.waitLine(func(l string) bool { return strings.Contains(l, "start of service") }, 20*time.Second)
		if lastErr == nil {
			addrs := []netip.AddrPort{u.Addr4}
			if opts.IPv6 {
				addrs = append(addrs, u.Addr6)
			}
			for _, a := range addrs {
				if lastErr = probe(a, "www."+Zone, dns.TypeA, dns.RcodeSuccess); lastErr != nil {
					break
				}
			}
		}
		if lastErr == nil {
			killOnCleanup(t, p)
			return u
		}
		_, _ = p.stop(syscall.SIGKILL, 5*time.Second)
		out := p.out.String()
		if isAddrInUse(out) {
			t.Logf("testenv: unbound port %d was taken; retrying (%v)", port, lastErr)
			continue
		}
		t.Fatalf("testenv: unbound did not become ready: %v\nconfig %s:\n%s\noutput:\n%s", lastErr, conf, unboundConfig(dir, port, opts), out)
	}
	t.Fatalf("testenv: unbound did not start after 3 attempts: %v", lastErr)
	return nil
}

func unboundConfig(dir string, port int, opts UnboundOptions) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# written by internal/testenv: loopback only, answers from local-data, never recurses")
	w("server:")
	w("    verbosity: 1")
	w("    interface: 127.0.0.1")
	if opts.IPv6 {
		w("    interface: ::1")
	}
	w("    port: %d", port)
	w("    do-ip4: yes")
	w("    do-ip6: %s", map[bool]string{true: "yes", false: "no"}[opts.IPv6])
	w("    do-udp: yes")
	w("    do-tcp: yes")
	w("    access-control: 127.0.0.0/8 allow")
	w("    access-control: ::1/128 allow")
	w("    username: \"\"")
	w("    chroot: \"\"")
	w("    directory: %q", dir)
	w("    pidfile: %q", filepath.Join(dir, "unbound.pid"))
	w("    logfile: \"\"")
	w("    use-syslog: no")
	w("    log-time-ascii: yes")
	w("    do-daemonize: no")
	w("    num-threads: 1")
	w("    so-reuseport: no")
	w("    outgoing-range: 16")
	// Only the iterator: no validator, so no trust anchor and no priming.
	w("    module-config: \"iterator\"")
	w("    do-not-query-localhost: yes")
	w("    qname-minimisation: no")
	w("    prefetch: no")
	// Same question, same bytes: no RRset rotation (the transparency tests
	// compare answers byte for byte).
	w("    rrset-roundrobin: no")
	w("    minimal-responses: no")
	w("    ip-ratelimit: 0")
	w("    ratelimit: 0")
	// "test." is one of unbound's default (RFC 6761) local zones; replace it.
	w("    local-zone: \"test.\" nodefault")
	// Anything outside the local zones is refused here, never recursed.
	w("    local-zone: \".\" refuse")
	w("    local-zone: %q static", Zone)
	for _, rr := range zoneRecords() {
		if strings.Contains(rr, `"`) {
			w("    local-data: '%s'", rr)
		} else {
			w("    local-data: \"%s\"", rr)
		}
	}
	if opts.Extra != "" {
		w("%s", opts.Extra)
	}
	w("remote-control:")
	w("    control-enable: no")
	return b.String()
}

// probe sends one query over UDP and checks the rcode, retrying a few times
// within a bound (the first datagram can race the server's socket setup).
func probe(addr netip.AddrPort, name string, qtype uint16, rcode int) error {
	c := &dns.Client{Net: "udp", Timeout: 500 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	var lastErr error
	for range 20 {
		r, _, err := c.Exchange(m, addr.String())
		if err != nil {
			lastErr = err
			continue
		}
		if r.Rcode != rcode {
			return fmt.Errorf("probe %s %s at %s: rcode %s, want %s", name, dns.TypeToString[qtype], addr,
				dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode])
		}
		return nil
	}
	return fmt.Errorf("probe %s %s at %s: %w", name, dns.TypeToString[qtype], addr, lastErr)
}
