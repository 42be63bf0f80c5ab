package tuning

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// Parsers for the /proc and /sys files tune reads. Each takes the file's
// bytes and returns a value or an error that says what was wrong with the
// content (never the path: the caller names the file). None of them panics
// on any input; each has a fuzz target.

// errEmpty is returned for a zero-length file (a truncated copy, or a
// /proc file read at the wrong moment).
var errEmpty = errors.New("empty file")

// parseUint reads a sysctl file holding one unsigned decimal number.
func parseUint(b []byte) (uint64, error) {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, errEmpty
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not an unsigned number: %q", truncate(s, 32))
	}
	return v, nil
}

// parseSNMP extracts the "Udp:" counters of /proc/net/snmp, which comes as
// pairs of lines: a header naming the fields, then their values, both
// starting with the same "Proto:" tag. "UdpLite:" is a different tag.
func parseSNMP(b []byte) (map[string]uint64, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errEmpty
	}
	var header []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if header == nil {
			header = f[1:]
			continue
		}
		if len(f)-1 != len(header) {
			return nil, fmt.Errorf("%d names but %d values in the Udp: lines", len(header), len(f)-1)
		}
		out := make(map[string]uint64, len(header))
		for i, name := range header {
			v, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("value of Udp: %s is not an unsigned number: %q", truncate(name, 32), truncate(f[i+1], 32))
			}
			out[name] = v
		}
		return out, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if header != nil {
		return nil, errors.New("a Udp: header line without a values line (truncated?)")
	}
	return nil, errors.New("no Udp: lines")
}

// parseSNMP6 extracts the Udp6* counters of /proc/net/snmp6 ("Name value"
// per line), keyed without the "Udp6" prefix so they line up with snmp's.
func parseSNMP6(b []byte) (map[string]uint64, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errEmpty
	}
	out := make(map[string]uint64)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || !strings.HasPrefix(f[0], "Udp6") {
			continue
		}
		if len(f) != 2 {
			return nil, fmt.Errorf("%s: want one value, got %d", truncate(f[0], 32), len(f)-1)
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: not an unsigned number: %q", truncate(f[0], 32), truncate(f[1], 32))
		}
		out[strings.TrimPrefix(f[0], "Udp6")] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no Udp6 counters")
	}
	return out, nil
}

// udpSocket is one row of /proc/net/udp or udp6.
type udpSocket struct {
	port  uint16
	inode uint64
	drops uint64
}

// parseUDPTable reads /proc/net/udp or udp6 (net/ipv4/udp.c
// udp4_format_sock): a header line, then per socket
//
//	sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ref pointer drops
//
// with local_address "HEXADDR:HEXPORT" (the port is printed in host order,
// so it needs no byte swapping; the address is in the kernel's byte order
// and is not decoded). Malformed rows are skipped and counted in bad, so a
// caller can report them; a missing header or an empty file is an error.
func parseUDPTable(b []byte) (socks []udpSocket, bad int, err error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, 0, errEmpty
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	first := true
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if first {
			first = false
			if len(f) == 0 || f[0] != "sl" {
				return nil, 0, fmt.Errorf("no header line (want \"sl local_address ...\", got %q)", truncate(line, 32))
			}
			continue
		}
		if len(f) == 0 {
			continue
		}
		s, ok := parseUDPRow(f)
		if !ok {
			bad++
			continue
		}
		socks = append(socks, s)
	}
	if err := sc.Err(); err != nil {
		return nil, 0, err
	}
	return socks, bad, nil
}

func parseUDPRow(f []string) (udpSocket, bool) {
	const (
		colLocal = 1
		colInode = 9
		colDrops = 12
	)
	if len(f) <= colDrops || !strings.HasSuffix(f[0], ":") {
		return udpSocket{}, false
	}
	addr, port, ok := strings.Cut(f[colLocal], ":")
	if !ok || (len(addr) != 8 && len(addr) != 32) || !isHex(addr) || len(port) != 4 {
		return udpSocket{}, false
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return udpSocket{}, false
	}
	inode, err := strconv.ParseUint(f[colInode], 10, 64)
	if err != nil {
		return udpSocket{}, false
	}
	drops, err := strconv.ParseUint(f[colDrops], 10, 64)
	if err != nil {
		return udpSocket{}, false
	}
	return udpSocket{port: uint16(p), inode: inode, drops: drops}, true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// parseSoftnet sums the second column ("dropped": the per-CPU input queue,
// sized by net.core.netdev_max_backlog, was full) of /proc/net/softnet_stat,
// one hexadecimal row per CPU.
func parseSoftnet(b []byte) (dropped uint64, cpus int, err error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return 0, 0, errEmpty
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 2 {
			return 0, 0, fmt.Errorf("row %d: %d columns, want at least 2", cpus+1, len(f))
		}
		v, err := strconv.ParseUint(f[1], 16, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("row %d: dropped: not a hexadecimal number: %q", cpus+1, truncate(f[1], 32))
		}
		dropped += v
		cpus++
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	return dropped, cpus, nil
}

// maxCPUs bounds parseCPUList so a garbled "0-4294967295" cannot make it
// count for minutes; Linux's NR_CPUS tops out at 8192.
const maxCPUs = 1 << 16

// parseCPUList counts the CPUs in a kernel cpu list such as
// /sys/devices/system/cpu/online: "0-3,6,8-9" (Documentation/admin-guide/
// cputopology.rst).
func parseCPUList(b []byte) (int, error) {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, errEmpty
	}
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.ParseUint(lo, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("not a cpu list: %q", truncate(s, 32))
		}
		z := a
		if isRange {
			if z, err = strconv.ParseUint(hi, 10, 32); err != nil || z < a {
				return 0, fmt.Errorf("not a cpu list: %q", truncate(s, 32))
			}
		}
		if z-a+1 > maxCPUs || n+int(z-a+1) > maxCPUs {
			return 0, fmt.Errorf("implausible cpu list: %q", truncate(s, 32))
		}
		n += int(z - a + 1)
	}
	return n, nil
}

// parseCPUInfo counts "processor" entries in /proc/cpuinfo, the fallback
// when /sys is not mounted.
func parseCPUInfo(b []byte) (int, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return 0, errEmpty
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, _, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "processor" {
			n++
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, errors.New("no \"processor\" lines")
	}
	return n, nil
}

// parseCapEff returns the effective capability mask from a
// /proc/PID/status file ("CapEff:\t0000000000000400").
func parseCapEff(b []byte) (uint64, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return 0, errEmpty
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != "CapEff" {
			continue
		}
		v = strings.TrimSpace(v)
		m, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			return 0, fmt.Errorf("CapEff: not a hexadecimal mask: %q", truncate(v, 32))
		}
		return m, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no CapEff line")
}

// socketInodes returns the inodes of the sockets a process holds open:
// /proc/PID/fd/N are symbolic links reading "socket:[INODE]" (proc(5)).
// Other links (files, pipes, anon inodes) are ignored; a link that cannot
// be read (closed meanwhile) is skipped.
func socketInodes(fsys fs.FS, dir string) (map[uint64]bool, error) {
	ents, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]bool)
	for _, e := range ents {
		target, err := fs.ReadLink(fsys, dir+"/"+e.Name())
		if err != nil {
			continue
		}
		if ino, ok := parseSocketLink(target); ok {
			out[ino] = true
		}
	}
	return out, nil
}

func parseSocketLink(s string) (uint64, bool) {
	rest, ok := strings.CutPrefix(s, "socket:[")
	if !ok {
		return 0, false
	}
	num, ok := strings.CutSuffix(rest, "]")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(num, 10, 64)
	return v, err == nil
}

// truncate keeps quoted garbage in messages short.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
