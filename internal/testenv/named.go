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

// NamedOptions configures StartNamed.
type NamedOptions struct {
	// IPv6 also listens on [::1] (same port).
	IPv6 bool
	// ExtraOptions is appended verbatim inside options { }.
	ExtraOptions string
}

// Named is a running BIND named started by StartNamed.
type Named struct {
	PID   int
	Addr4 netip.AddrPort // 127.0.0.1:port, UDP and TCP
	Addr6 netip.AddrPort // [::1]:port, zero unless IPv6 was asked for
	Conf  string
	Names []Served
	proc  *process
}

// Output returns what named has logged so far.
func (n *Named) Output() string { return n.proc.out.String() }

// StartNamed starts BIND named in the foreground (`named -g -c CONF`) as an
// authoritative server for Zone on loopback at a free high port, over UDP
// and TCP, with recursion off (it never sends a query anywhere), no control
// channel, and zone transfers (AXFR) allowed from loopback. It is stopped by
// PID in t.Cleanup.
func StartNamed(t testing.TB, opts NamedOptions) *Named {
	t.Helper()
	bin := RequireTool(t, "named")
	if opts.IPv6 {
		if err := loopbackV6Available(); err != nil {
			t.Fatalf("testenv: StartNamed with IPv6: %v", err)
		}
	}
	network := "ip4"
	if opts.IPv6 {
		network = "ip"
	}
	var lastErr error
	for attempt := range 3 {
		dir := filepath.Join(t.TempDir(), fmt.Sprintf("named-%d", attempt))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		port := FreePort(t, network)
		zoneFile := filepath.Join(dir, "tapproxy.test.zone")
		zone := "$TTL 300\n" + strings.Join(zoneRecords(), "\n") + "\n"
		if err := os.WriteFile(zoneFile, []byte(zone), 0o644); err != nil {
			t.Fatalf("testenv: writing zone: %v", err)
		}
		conf := filepath.Join(dir, "named.conf")
		if err := os.WriteFile(conf, []byte(namedConfig(dir, zoneFile, port, opts)), 0o644); err != nil {
			t.Fatalf("testenv: writing named config: %v", err)
		}
		args := []string{"-g", "-c", conf, "-n", "1"}
		if !opts.IPv6 {
			args = append(args, "-4")
		}
		p, err := startProcess("named", dir, bin, args...)
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		n := &Named{
			PID:   p.pid(),
			Addr4: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)),
			Conf:  conf,
			Names: ServedNames(),
			proc:  p,
		}
		if opts.IPv6 {
			n.Addr6 = netip.AddrPortFrom(netip.IPv6Loopback(), uint16(port))
		}
		// named -g logs "running" when startup is complete (zones loaded,
		// sockets bound).
		_, lastErr = p.waitLine(func(l string) bool { return strings.HasSuffix(strings.TrimSpace(l), " running") }, 30*time.Second)
		if lastErr == nil {
			addrs := []netip.AddrPort{n.Addr4}
			if opts.IPv6 {
				addrs = append(addrs, n.Addr6)
			}
			for _, a := range addrs {
				if lastErr = probe(a, "www."+Zone, dns.TypeA, dns.RcodeSuccess); lastErr != nil {
					break
				}
			}
		}
		if lastErr == nil {
			killOnCleanup(t, p)
			return n
		}
		_, _ = p.stop(syscall.SIGKILL, 5*time.Second)
		out := p.out.String()
		if isAddrInUse(out) {
			t.Logf("testenv: named port %d was taken; retrying (%v)", port, lastErr)
			continue
		}
		t.Fatalf("testenv: named did not become ready: %v\nconfig %s\noutput:\n%s", lastErr, conf, out)
	}
	t.Fatalf("testenv: named did not start after 3 attempts: %v", lastErr)
	return nil
}

func namedConfig(dir, zoneFile string, port int, opts NamedOptions) string {
	v6 := "none;"
	if opts.IPv6 {
		v6 = "::1;"
	}
	return fmt.Sprintf(`// written by internal/testenv: authoritative only, loopback only
controls { };
options {
	directory %[1]q;
	pid-file %[2]q;
	session-keyfile %[3]q;
	managed-keys-directory %[1]q;
	listen-on port %[4]d { 127.0.0.1; };
	listen-on-v6 port %[4]d { %[5]s };
	recursion no;
	notify no;
	dnssec-validation no;
	automatic-interface-scan no;
	allow-query { 127.0.0.0/8; ::1; };
	allow-transfer { 127.0.0.0/8; ::1; };
	minimal-responses no-auth-recursive;
%[7]s
};
zone %[6]q {
	type primary;
	file %[8]q;
};
`, dir, filepath.Join(dir, "named.pid"), filepath.Join(dir, "session.key"), port, v6,
		strings.TrimSuffix(Zone, "."), opts.ExtraOptions, zoneFile)
}
