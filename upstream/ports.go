package upstream

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/tapproxy/tapproxy/listener"
)

// portRange is the range upstream source ports are drawn from: the kernel's
// ephemeral range (net.ipv4.ip_local_port_range, which governs IPv6 too),
// less net.ipv4.ip_local_reserved_ports, which the kernel keeps for services
// that bind them explicitly.
type portRange struct {
	lo, hi   uint16
	reserved [][2]uint16 // inclusive ranges
}

// defaultPortRange is the kernel's default ephemeral range, used when
// /proc cannot be read.
var defaultPortRange = portRange{lo: 32768, hi: 60999}

// maxBindTries bounds the random ports tried for one socket before the
// kernel is left to choose (a nearly full range must not stall a rotation).
const maxBindTries = 8

// readPortRange reads the ephemeral range under root (normally "/"; tests
// pass a fixture tree). A missing or unparsable range gives
// defaultPortRange and an error saying why, for the start-up log.
func readPortRange(root string) (portRange, error) {
	b, err := os.ReadFile(filepath.Join(root, "proc/sys/net/ipv4/ip_local_port_range"))
	if err != nil {
		return defaultPortRange, err
	}
	f := strings.Fields(string(b))
	var lo, hi uint64
	if len(f) == 2 {
		lo, err = strconv.ParseUint(f[0], 10, 16)
		if err == nil {
			hi, err = strconv.ParseUint(f[1], 10, 16)
		}
	}
	if len(f) != 2 || err != nil || lo == 0 || lo > hi {
		return defaultPortRange, fmt.Errorf("ip_local_port_range %q: want two ports, low first", strings.TrimSpace(string(b)))
	}
	r := portRange{lo: uint16(lo), hi: uint16(hi)}
	// Reserved ports are optional: unreadable means none.
	if b, err := os.ReadFile(filepath.Join(root, "proc/sys/net/ipv4/ip_local_reserved_ports")); err == nil {
		for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
			a, z, isRange := strings.Cut(part, "-")
			l, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
			h := l
			var err2 error
			if isRange {
				h, err2 = strconv.ParseUint(strings.TrimSpace(z), 10, 16)
			}
			if err1 == nil && err2 == nil && l <= h {
				r.reserved = append(r.reserved, [2]uint16{uint16(l), uint16(h)})
			}
		}
	}
	return r, nil
}

func (r portRange) String() string { return fmt.Sprintf("%d-%d", r.lo, r.hi) }

func (r portRange) isReserved(p uint16) bool {
	for _, x := range r.reserved {
		if p >= x[0] && p <= x[1] {
			return true
		}
	}
	return false
}

// draw returns a port uniform over the range from crypto/rand (RFC 5452
// §9.2: the port is half of what an off-path forger must guess), by
// rejection: no modulo bias, and a reserved port is drawn again. ok is false
// when maxBindTries draws all hit reserved ports.
func (r portRange) draw() (port uint16, ok bool) {
	n := uint32(r.hi) - uint32(r.lo) + 1
	limit := (1 << 32) / uint64(n) * uint64(n) // largest multiple of n that fits
	var b [4]byte
	for tries := 0; tries < 64*maxBindTries; tries++ {
		_, _ = rand.Read(b[:]) // never fails since Go 1.24
		v := binary.BigEndian.Uint32(b[:])
		if uint64(v) >= limit {
			continue
		}
		p := r.lo + uint16(v%n)
		if r.isReserved(p) {
			continue
		}
		return p, true
	}
	return 0, false
}

// uint64Adder is the one method of atomic.Uint64 dialRandom uses.
type uint64Adder interface{ Add(uint64) uint64 }

// dialRandom opens a UDP socket connected to addr from a port drawn from
// r. A port in use (EADDRINUSE) is retried with a fresh draw up to
// maxBindTries times, each counted in retries; then the kernel chooses the
// port (counted in fallbacks): a socket is never refused for lack of a
// random port. Other errors are returned.
func dialRandom(ctx context.Context, addr netip.AddrPort, o listener.Options, r portRange, retries, fallbacks uint64Adder) (*listener.Conn, error) {
	unspec := netip.IPv4Unspecified()
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		unspec = netip.IPv6Unspecified()
	}
	for try := 0; try < maxBindTries; try++ {
		p, ok := r.draw()
		if !ok {
			break
		}
		o.LocalAddr = netip.AddrPortFrom(unspec, p)
		c, err := listener.DialUDP(ctx, addr, o)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
		retries.Add(1)
	}
	fallbacks.Add(1)
	o.LocalAddr = netip.AddrPort{}
	return listener.DialUDP(ctx, addr, o)
}
