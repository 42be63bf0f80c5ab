package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
)

// Port ranges for FreePort. Ports are drawn below the kernel's ephemeral
// range (ip_local_port_range, 32768-60999 by default) so a port we hand to a
// server is never the one the kernel picks for some client socket bound to
// port 0 in the meantime (tapproxy's upstream sockets among them).
const (
	portLow  = 20000
	portHigh = 32000
)

// FreePort returns a loopback port that is free right now for network:
//
//	"udp4", "tcp4"  on 127.0.0.1
//	"udp6", "tcp6"  on ::1
//	"udp", "tcp"    on both 127.0.0.1 and ::1
//	"ip4"           UDP and TCP on 127.0.0.1
//	"ip6"           UDP and TCP on ::1
//	"ip"            UDP and TCP on both (what a DNS server needs)
//
// The port is checked by binding every requested socket and then released,
// so there is a window in which something else may take it; StartUnbound and
// StartNamed retry on a bind failure for that reason.
func FreePort(t testing.TB, network string) int {
	t.Helper()
	binds, err := bindsFor(network)
	if err != nil {
		t.Fatalf("testenv: FreePort: %v", err)
	}
	var lastErr error
	for range 200 {
		port := portLow + rand.IntN(portHigh-portLow)
		if lastErr = tryBind(binds, port); lastErr == nil {
			return port
		}
	}
	t.Fatalf("testenv: FreePort(%q): no free port in [%d,%d) after 200 tries; last error: %v", network, portLow, portHigh, lastErr)
	return 0
}

type bindSpec struct {
	network string // "udp" or "tcp"
	addr    netip.Addr
}

func bindsFor(network string) ([]bindSpec, error) {
	v4, v6 := netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	var protos []string
	var addrs []netip.Addr
	switch network {
	case "udp4", "tcp4", "udp6", "tcp6", "udp", "tcp":
		protos = []string{network[:3]}
	case "ip4", "ip6", "ip":
		protos = []string{"udp", "tcp"}
	default:
		return nil, fmt.Errorf("unknown network %q (want udp4, udp6, udp, tcp4, tcp6, tcp, ip4, ip6 or ip)", network)
	}
	switch {
	case strings.HasSuffix(network, "4"):
		addrs = []netip.Addr{v4}
	case strings.HasSuffix(network, "6"):
		addrs = []netip.Addr{v6}
	default:
		addrs = []netip.Addr{v4, v6}
	}
	var out []bindSpec
	for _, p := range protos {
		for _, a := range addrs {
			out = append(out, bindSpec{p, a})
		}
	}
	return out, nil
}

func tryBind(binds []bindSpec, port int) error {
	var closers []func() error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	for _, b := range binds {
		ap := netip.AddrPortFrom(b.addr, uint16(port))
		switch b.network {
		case "udp":
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
			if err != nil {
				return err
			}
			closers = append(closers, c.Close)
		case "tcp":
			l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
			if err != nil {
				return err
			}
			closers = append(closers, l.Close)
		}
	}
	return nil
}

// isAddrInUse reports whether a server's startup output says its port was
// taken (the window FreePort cannot close).
func isAddrInUse(out string) bool {
	return strings.Contains(out, "Address already in use") ||
		strings.Contains(out, "address in use") ||
		strings.Contains(out, syscall.EADDRINUSE.Error())
}

// loopbackV6Available reports whether ::1 can be bound at all; tests that
// ask for IPv6 fail with this as the reason rather than a confusing bind
// error.
func loopbackV6Available() error {
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		if _, statErr := os.Stat("/proc/sys/net/ipv6"); statErr != nil {
			return fmt.Errorf("IPv6 is disabled on this machine (%v)", err)
		}
		return fmt.Errorf("cannot bind ::1: %w", err)
	}
	return c.Close()
}
