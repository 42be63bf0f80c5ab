package tuning

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strconv"
	"strings"
)

// DefaultBuffer is the socket buffer size tune checks against when none is
// given: 4 MiB holds about 8000 typical DNS datagrams (the kernel charges
// each with its skb overhead, roughly 500 bytes for a small query), some
// 40 ms at 200k queries per second.
const DefaultBuffer = 4 << 20

// minNetdevBacklog is the kernel default of net.core.netdev_max_backlog;
// anything lower was lowered on purpose and loses bursts.
const minNetdevBacklog = 1000

// Linux capability numbers (include/uapi/linux/capability.h).
const (
	capNetBindService = 10
	capNetAdmin       = 12
)

// Status is how a finding came out. The order matters: a report's exit
// code comes from its worst status.
type Status int

const (
	OK   Status = iota // as it should be
	Skip               // not checked (nothing to look at, or probes off)
	Warn               // works, but loses packets or features, or unverifiable
	Fail               // tapproxy will not start or work as configured
)

var statusNames = [...]string{OK: "OK", Skip: "SKIP", Warn: "WARN", Fail: "FAIL"}

func (s Status) String() string {
	if s < 0 || int(s) >= len(statusNames) {
		return "Status(" + strconv.Itoa(int(s)) + ")"
	}
	return statusNames[s]
}

// MarshalText makes JSON carry "OK"/"SKIP"/"WARN"/"FAIL".
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Finding is one checked item.
type Finding struct {
	Check   string `json:"check"`         // what was checked: a sysctl name, counter or feature
	Status  Status `json:"status"`        // OK, SKIP, WARN, FAIL
	Message string `json:"message"`       // what was found, with the numbers
	Fix     string `json:"fix,omitempty"` // the exact sysctl or flag that fixes it
}

// Options says what to check against.
type Options struct {
	// Root is where /proc and /sys are found ("/" on a live system, a
	// fixture tree in tests, a copy taken from a router). Default "/".
	Root string
	// FS replaces Root when set (tests).
	FS fs.FS
	// RcvBuf and SndBuf are the socket buffers tapproxy will ask for
	// (--rcvbuf/--sndbuf). 0 means DefaultBuffer.
	RcvBuf, SndBuf int
	// Ports are the UDP ports tapproxy listens on. Sockets on them are
	// checked for drops; ports below ip_unprivileged_port_start need
	// CAP_NET_BIND_SERVICE.
	Ports []uint16
	// PID, when not 0, restricts the socket check to that process's
	// sockets, reads network files from /proc/PID/net (its namespace) and
	// capabilities from /proc/PID/status instead of /proc/self/status.
	PID int
	// Workers is tapproxy's --workers; 0 means its default (one per CPU).
	Workers int
	// Prober tries the kernel socket options live; nil skips those checks.
	Prober Prober
}

// Report is the outcome of Run, in check order.
type Report struct {
	Findings []Finding
}

// Worst is the worst status in the report (OK for an empty one).
func (r Report) Worst() Status {
	w := OK
	for _, f := range r.Findings {
		if f.Status > w {
			w = f.Status
		}
	}
	return w
}

// Exit codes of `tapproxy tune`.
const (
	ExitOK      = 0  // every finding OK or SKIP
	ExitWarn    = 1  // at least one WARN, no FAIL
	ExitFail    = 2  // at least one FAIL
	ExitUsage   = 64 // bad flags (EX_USAGE, sysexits.h)
	exitUnknown = 2
)

// ExitCode maps the worst status to the exit code.
func (r Report) ExitCode() int {
	switch r.Worst() {
	case OK, Skip:
		return ExitOK
	case Warn:
		return ExitWarn
	case Fail:
		return ExitFail
	}
	return exitUnknown
}

// Count returns how many findings have status s.
func (r Report) Count(s Status) int {
	n := 0
	for _, f := range r.Findings {
		if f.Status == s {
			n++
		}
	}
	return n
}

// checker carries one Run.
type checker struct {
	o      Options
	fsys   fs.FS
	netDir string // proc/net or proc/PID/net
	rep    Report
	// capEff is the effective capability mask; capErr says why it is
	// unknown.
	capEff uint64
	capErr string
	cpus   int // 0: unknown
}

// Run performs every check and returns the findings. It never fails: what
// cannot be read becomes a finding.
func Run(o Options) Report {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.RcvBuf <= 0 {
		o.RcvBuf = DefaultBuffer
	}
	if o.SndBuf <= 0 {
		o.SndBuf = DefaultBuffer
	}
	c := &checker{o: o, fsys: o.FS, netDir: "proc/net"}
	if c.fsys == nil {
		c.fsys = os.DirFS(o.Root)
	}
	if o.PID > 0 {
		c.netDir = "proc/" + strconv.Itoa(o.PID) + "/net"
	}
	c.loadCaps()
	c.bufferMax("net.core.rmem_max", "--rcvbuf", "SO_RCVBUF", o.RcvBuf)
	c.bufferMax("net.core.wmem_max", "--sndbuf", "SO_SNDBUF", o.SndBuf)
	c.netdevBacklog()
	c.udpCounters()
	c.cpuWorkers()
	c.socketDrops()
	c.features()
	c.capabilities()
	return c.rep
}

func (c *checker) add(check string, s Status, fix, format string, args ...any) {
	c.rep.Findings = append(c.rep.Findings, Finding{Check: check, Status: s, Message: fmt.Sprintf(format, args...), Fix: fix})
}

// read returns a file below the root. Errors are shortened by why() so
// that messages name the file as on the target system ("/proc/...").
func (c *checker) read(rel string) ([]byte, error) {
	return fs.ReadFile(c.fsys, rel)
}

// why turns a read error into a short reason without the root path.
func why(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "missing"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func sysctlFix(name string, v uint64) string {
	return fmt.Sprintf("sysctl -w %s=%d", name, v)
}

func (c *checker) hasCap(bit uint) bool { return c.capErr == "" && c.capEff&(1<<bit) != 0 }

func (c *checker) statusFile() string {
	if c.o.PID > 0 {
		return "proc/" + strconv.Itoa(c.o.PID) + "/status"
	}
	return "proc/self/status"
}

func (c *checker) loadCaps() {
	rel := c.statusFile()
	b, err := c.read(rel)
	if err != nil {
		c.capErr = "/" + rel + ": " + why(err)
		return
	}
	if c.capEff, err = parseCapEff(b); err != nil {
		c.capErr = "/" + rel + ": " + err.Error()
	}
}

// bufferMax checks net.core.rmem_max or wmem_max: without CAP_NET_ADMIN
// the kernel silently caps SO_RCVBUF/SO_SNDBUF there (socket(7)).
func (c *checker) bufferMax(name, flag, opt string, want int) {
	rel := "proc/sys/" + strings.ReplaceAll(name, ".", "/")
	fix := sysctlFix(name, uint64(want))
	b, err := c.read(rel)
	if err != nil {
		c.add(name, Warn, fix, "cannot read /%s: %s; cannot verify %s %d", rel, why(err), flag, want)
		return
	}
	v, err := parseUint(b)
	if err != nil {
		c.add(name, Warn, fix, "/%s: %v; cannot verify %s %d", rel, err, flag, want)
		return
	}
	switch {
	case v >= uint64(want):
		c.add(name, OK, "", "%d >= %s %d", v, flag, want)
	case c.hasCap(capNetAdmin):
		c.add(name, OK, "", "%d < %s %d, but CAP_NET_ADMIN is held: %sFORCE gets the full size", v, flag, want, opt)
	default:
		c.add(name, Warn, fix, "%d < %s %d: without CAP_NET_ADMIN the kernel caps %s at %d", v, flag, want, opt, v)
	}
}

func (c *checker) netdevBacklog() {
	const name = "net.core.netdev_max_backlog"
	rel := "proc/sys/net/core/netdev_max_backlog"
	backlog := uint64(0)
	if b, err := c.read(rel); err != nil {
		c.add(name, Warn, sysctlFix(name, minNetdevBacklog), "cannot read /%s: %s", rel, why(err))
	} else if v, err := parseUint(b); err != nil {
		c.add(name, Warn, sysctlFix(name, minNetdevBacklog), "/%s: %v", rel, err)
	} else if backlog = v; v < minNetdevBacklog {
		c.add(name, Warn, sysctlFix(name, minNetdevBacklog), "%d is below the kernel default %d: bursts are dropped before any socket sees them", v, minNetdevBacklog)
	} else {
		c.add(name, OK, "", "%d", v)
	}

	const sname = "softnet_stat dropped"
	srel := c.netDir + "/softnet_stat"
	raise := max(2*backlog, 2*minNetdevBacklog)
	b, err := c.read(srel)
	if err != nil {
		c.add(sname, Warn, "", "cannot read /%s: %s", srel, why(err))
		return
	}
	dropped, cpus, err := parseSoftnet(b)
	if err != nil {
		c.add(sname, Warn, "", "/%s: %v", srel, err)
		return
	}
	if dropped > 0 {
		c.add(sname, Warn, sysctlFix(name, raise), "%d packets dropped since boot because a CPU's input backlog was full (%d CPUs)", dropped, cpus)
		return
	}
	c.add(sname, OK, "", "no backlog drops since boot (%d CPUs)", cpus)
}

// udpCounters reports the system-wide UDP error counters since boot.
// They cover every UDP socket, not only tapproxy's: the per-socket check
// says whose they are.
func (c *checker) udpCounters() {
	rel4, rel6 := c.netDir+"/snmp", c.netDir+"/snmp6"
	var v4, v6 map[string]uint64
	var bad []string
	if b, err := c.read(rel4); err != nil {
		bad = append(bad, fmt.Sprintf("cannot read /%s: %s", rel4, why(err)))
	} else if v4, err = parseSNMP(b); err != nil {
		bad = append(bad, fmt.Sprintf("/%s: %v", rel4, err))
	}
	// No snmp6 at all is a kernel with IPv6 off (ipv6.disable=1 or no
	// module): nothing to count, not a problem.
	no6, bad6 := false, false
	if b, err := c.read(rel6); errors.Is(err, fs.ErrNotExist) {
		no6 = true
	} else if err != nil {
		bad, bad6 = append(bad, fmt.Sprintf("cannot read /%s: %s", rel6, why(err))), true
	} else if v6, err = parseSNMP6(b); err != nil {
		bad, bad6 = append(bad, fmt.Sprintf("/%s: %v", rel6, err)), true
	}
	if len(bad) > 0 {
		c.add("udp counters", Warn, "", "%s", strings.Join(bad, "; "))
	}
	if v4 == nil && v6 == nil {
		return
	}
	// sum adds a counter over both families and says where it came from.
	sum := func(name string) (uint64, string) {
		var parts []string
		var t uint64
		for _, fam := range []struct {
			label string
			m     map[string]uint64
		}{{"IPv4", v4}, {"IPv6", v6}} {
			if fam.m == nil {
				continue
			}
			v, ok := fam.m[name]
			if !ok {
				parts = append(parts, fam.label+" n/a")
				continue
			}
			t += v
			parts = append(parts, fam.label+" "+strconv.FormatUint(v, 10))
		}
		switch {
		case v4 == nil:
			parts = append([]string{"IPv4 unknown"}, parts...)
		case no6:
			parts = append(parts, "IPv6 off")
		case bad6:
			parts = append(parts, "IPv6 unknown")
		}
		return t, strings.Join(parts, ", ")
	}
	rcv, rcvBy := sum("RcvbufErrors")
	rcvTo := uint64(2 * c.o.RcvBuf)
	if rcv > 0 {
		c.add("udp RcvbufErrors", Warn,
			fmt.Sprintf("%s and tapproxy --rcvbuf %d", sysctlFix("net.core.rmem_max", rcvTo), rcvTo),
			"%d datagrams dropped since boot, receive buffer full (%s)", rcv, rcvBy)
	} else {
		c.add("udp RcvbufErrors", OK, "", "0 since boot (%s)", rcvBy)
	}
	snd, sndBy := sum("SndbufErrors")
	sndTo := uint64(2 * c.o.SndBuf)
	if snd > 0 {
		c.add("udp SndbufErrors", Warn,
			fmt.Sprintf("%s and tapproxy --sndbuf %d", sysctlFix("net.core.wmem_max", sndTo), sndTo),
			"%d datagrams not sent since boot, send buffer full (%s)", snd, sndBy)
	} else {
		c.add("udp SndbufErrors", OK, "", "0 since boot (%s)", sndBy)
	}
	// InErrors includes RcvbufErrors (net/ipv4/udp.c bumps both); what is
	// left is checksum and memory-pressure errors, which have other fixes.
	in, inBy := sum("InErrors")
	other := uint64(0)
	if in > rcv {
		other = in - rcv
	}
	if other == 0 {
		c.add("udp InErrors", OK, "", "%d since boot, all of them RcvbufErrors (%s)", in, inBy)
		return
	}
	csum, _ := sum("InCsumErrors")
	mem, _ := sum("MemErrors")
	fix := "checksum errors come from the link or NIC, not from tuning: check `ethtool -S IFACE`"
	if mem > 0 {
		fix = "raise net.ipv4.udp_mem (all three values, in pages): " + c.udpMemFix()
	}
	c.add("udp InErrors", Warn, fix, "%d since boot, %d beyond RcvbufErrors: InCsumErrors %d, MemErrors %d (%s)", in, other, csum, mem, inBy)
}

// udpMemFix proposes net.ipv4.udp_mem doubled, from its current value.
func (c *checker) udpMemFix() string {
	b, err := c.read("proc/sys/net/ipv4/udp_mem")
	if err == nil {
		f := strings.Fields(string(b))
		if len(f) == 3 {
			var v [3]uint64
			ok := true
			for i := range f {
				if v[i], err = strconv.ParseUint(f[i], 10, 64); err != nil || v[i] > 1<<40 {
					ok = false
				}
			}
			if ok {
				return fmt.Sprintf("sysctl -w net.ipv4.udp_mem=\"%d %d %d\"", 2*v[0], 2*v[1], 2*v[2])
			}
		}
	}
	return "sysctl -w net.ipv4.udp_mem=\"LOW PRESSURE HIGH\" (twice the current values)"
}

func (c *checker) cpuWorkers() {
	const name = "workers"
	var reasons []string
	for _, src := range []struct {
		rel   string
		parse func([]byte) (int, error)
	}{
		{"sys/devices/system/cpu/online", parseCPUList},
		{"proc/cpuinfo", parseCPUInfo},
	} {
		b, err := c.read(src.rel)
		if err != nil {
			reasons = append(reasons, fmt.Sprintf("/%s: %s", src.rel, why(err)))
			continue
		}
		n, err := src.parse(b)
		if err != nil {
			reasons = append(reasons, fmt.Sprintf("/%s: %v", src.rel, err))
			continue
		}
		c.cpus = n
		break
	}
	w := c.o.Workers
	switch {
	case c.cpus == 0:
		c.add(name, Warn, "", "CPU count unknown (%s)", strings.Join(reasons, "; "))
	case w == 0:
		c.add(name, OK, "", "%d CPUs; tapproxy defaults to one worker per CPU", c.cpus)
	case w > c.cpus:
		c.add(name, Warn, fmt.Sprintf("tapproxy --workers %d", c.cpus), "--workers %d > %d CPUs: workers contend for CPUs and queue in their sockets", w, c.cpus)
	default:
		c.add(name, OK, "", "--workers %d on %d CPUs", w, c.cpus)
	}
}

// socketDrops reads the "drops" column of /proc/net/udp and udp6 for the
// sockets on the listen ports: datagrams the kernel threw away because that
// socket's receive buffer was full (sk_drops).
func (c *checker) socketDrops() {
	if len(c.o.Ports) == 0 {
		c.add("socket drops", Skip, "tapproxy tune --listen ADDR:PORT", "no listen port given")
		return
	}
	var inodes map[uint64]bool
	if c.o.PID > 0 {
		dir := "proc/" + strconv.Itoa(c.o.PID) + "/fd"
		var err error
		if inodes, err = socketInodes(c.fsys, dir); err != nil {
			c.add("socket drops", Warn, "run tapproxy tune as root or as tapproxy's user",
				"cannot list /%s: %s; cannot tell which sockets belong to process %d", dir, why(err), c.o.PID)
			return
		}
	}
	var socks []udpSocket
	var bad []string
	for _, t := range []string{"udp", "udp6"} {
		rel := c.netDir + "/" + t
		b, err := c.read(rel)
		if err != nil {
			// udp6 is absent when IPv6 is off.
			if t == "udp6" && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			bad = append(bad, fmt.Sprintf("cannot read /%s: %s", rel, why(err)))
			continue
		}
		s, n, err := parseUDPTable(b)
		if err != nil {
			bad = append(bad, fmt.Sprintf("/%s: %v", rel, err))
			continue
		}
		if n > 0 {
			bad = append(bad, fmt.Sprintf("/%s: %d malformed rows skipped", rel, n))
		}
		socks = append(socks, s...)
	}
	if len(bad) > 0 {
		c.add("socket drops", Warn, "", "%s", strings.Join(bad, "; "))
	}
	whose := "any process"
	if c.o.PID > 0 {
		whose = "process " + strconv.Itoa(c.o.PID)
	}
	ports := append([]uint16(nil), c.o.Ports...)
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	for i, p := range ports {
		if i > 0 && ports[i-1] == p {
			continue
		}
		name := "socket drops :" + strconv.Itoa(int(p))
		n, drops := 0, uint64(0)
		for _, s := range socks {
			if s.port != p || (inodes != nil && !inodes[s.inode]) {
				continue
			}
			n++
			drops += s.drops
		}
		switch {
		case n == 0 && c.o.PID > 0:
			c.add(name, Warn, "tapproxy tune --listen ADDR:PORT with the port tapproxy serves",
				"%s has no UDP socket on port %d", whose, p)
		case n == 0:
			c.add(name, Skip, "start tapproxy, then run tapproxy tune again",
				"no UDP socket on port %d (tapproxy not running?)", p)
		case drops > 0:
			to := 2 * c.o.RcvBuf
			fix := fmt.Sprintf("tapproxy --rcvbuf %d and %s", to, sysctlFix("net.core.rmem_max", uint64(to)))
			if c.cpus > 0 && c.o.Workers > 0 && c.o.Workers < c.cpus {
				fix += fmt.Sprintf(", or tapproxy --workers %d", c.cpus)
			}
			c.add(name, Warn, fix, "%d datagrams dropped by %s of %s (receive buffer full)", drops, sockets(n), whose)
		default:
			c.add(name, OK, "", "0 drops on %s of %s", sockets(n), whose)
		}
	}
}

// SockOpt names a socket option tapproxy relies on.
type SockOpt string

// The options probed, in report order.
const (
	OptReusePort    SockOpt = "SO_REUSEPORT"
	OptTimestampNS  SockOpt = "SO_TIMESTAMPNS"
	OptRxqOverflows SockOpt = "SO_RXQ_OVFL"
)

// Prober sets a socket option on a throwaway UDP socket and reads it back;
// an error means the kernel (or a sandbox such as a seccomp filter or
// gVisor) does not support it. LiveProber is the real one.
type Prober interface {
	Probe(opt SockOpt) error
}

func (c *checker) features() {
	type feat struct {
		opt  SockOpt
		bad  Status
		lost string
		fix  string
	}
	reuseBad, reuseFix := Fail, "tapproxy --workers 1 (SO_REUSEPORT needs Linux >= 3.9)"
	if c.o.Workers == 1 {
		reuseBad, reuseFix = Warn, "none needed with --workers 1; more workers need SO_REUSEPORT (Linux >= 3.9)"
	}
	feats := []feat{
		{OptReusePort, reuseBad, "tapproxy cannot open one socket per worker on the same address", reuseFix},
		{OptTimestampNS, Warn, "no kernel receive timestamps: times are taken after the read, later and noisier", "run on a kernel or sandbox that allows SO_TIMESTAMPNS (Linux >= 2.6.22)"},
		{OptRxqOverflows, Warn, "no per-socket kernel drop counter in tapproxy's own metrics", "run on a kernel or sandbox that allows SO_RXQ_OVFL (Linux >= 2.6.33); meanwhile watch `tapproxy tune --listen`"},
	}
	for _, f := range feats {
		name := "feature " + string(f.opt)
		if c.o.Prober == nil {
			c.add(name, Skip, "", "live probes off")
			continue
		}
		if err := c.o.Prober.Probe(f.opt); err != nil {
			c.add(name, f.bad, f.fix, "%v: %s", err, f.lost)
			continue
		}
		c.add(name, OK, "", "supported")
	}
}

// capabilities checks CapEff for what the listen ports and buffers need.
func (c *checker) capabilities() {
	who := "this process"
	if c.o.PID > 0 {
		who = "process " + strconv.Itoa(c.o.PID)
	}
	// Ports below ip_unprivileged_port_start need CAP_NET_BIND_SERVICE
	// (the sysctl is Linux >= 4.11; before it the limit was 1024).
	unpriv := uint64(1024)
	urel := "proc/sys/net/ipv4/ip_unprivileged_port_start"
	unprivFrom := "no /" + urel + ": the pre-4.11 limit"
	haveSysctl := true
	if b, err := c.read(urel); err == nil {
		if v, err := parseUint(b); err == nil {
			unpriv, unprivFrom = min(v, 65536), "net.ipv4.ip_unprivileged_port_start"
		} else {
			unprivFrom = fmt.Sprintf("/%s: %v; assuming 1024", urel, err)
			c.add("net.ipv4.ip_unprivileged_port_start", Warn, "", "%s", unprivFrom)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		unprivFrom = fmt.Sprintf("cannot read /%s: %s; assuming 1024", urel, why(err))
		c.add("net.ipv4.ip_unprivileged_port_start", Warn, "", "%s", unprivFrom)
	} else {
		haveSysctl = false
	}
	var low []string
	var lowest uint16
	for _, p := range c.o.Ports {
		if uint64(p) < unpriv {
			low = append(low, strconv.Itoa(int(p)))
			if lowest == 0 || p < lowest {
				lowest = p
			}
		}
	}
	const bind = "CAP_NET_BIND_SERVICE"
	bindFix := "AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit (without systemd: setcap cap_net_bind_service=+ep /usr/bin/tapproxy)"
	if haveSysctl {
		bindFix += ", or " + sysctlFix("net.ipv4.ip_unprivileged_port_start", uint64(lowest))
	}
	switch {
	case len(low) == 0:
		c.add(bind, OK, "", "not needed: no listen port below %d (%s)", unpriv, unprivFrom)
	case c.capErr != "":
		c.add(bind, Warn, bindFix, "cannot read capabilities (%s); port %s needs %s (below %d, %s)", c.capErr, strings.Join(low, ","), bind, unpriv, unprivFrom)
	case c.hasCap(capNetBindService):
		c.add(bind, OK, "", "held by %s, for port %s", who, strings.Join(low, ","))
	default:
		c.add(bind, Fail, bindFix, "not held by %s, so tapproxy started like it cannot bind port %s (below %d, %s)", who, strings.Join(low, ","), unpriv, unprivFrom)
	}

	const admin = "CAP_NET_ADMIN"
	adminFix := "raise net.core.rmem_max/wmem_max (see above; preferred), or AmbientCapabilities=CAP_NET_ADMIN in the systemd unit"
	need, known := c.needForce()
	switch {
	case c.capErr != "":
		c.add(admin, Warn, "", "cannot read capabilities (%s)", c.capErr)
	case c.hasCap(capNetAdmin):
		c.add(admin, OK, "", "held by %s: SO_RCVBUFFORCE/SO_SNDBUFFORCE may exceed rmem_max/wmem_max", who)
	case need:
		c.add(admin, Warn, adminFix, "not held by %s, and the requested buffers exceed rmem_max/wmem_max", who)
	case !known:
		c.add(admin, OK, "", "not held by %s; whether it is needed depends on rmem_max/wmem_max (see above)", who)
	default:
		c.add(admin, OK, "", "not held by %s; not needed: rmem_max/wmem_max cover the requested buffers", who)
	}
}

// needForce says whether either buffer exceeds its sysctl maximum, i.e.
// whether only SO_*BUFFORCE (CAP_NET_ADMIN) gets the requested size.
func (c *checker) needForce() (need, known bool) {
	known = true
	for _, b := range []struct {
		rel  string
		want int
	}{{"proc/sys/net/core/rmem_max", c.o.RcvBuf}, {"proc/sys/net/core/wmem_max", c.o.SndBuf}} {
		data, err := c.read(b.rel)
		if err != nil {
			known = false
			continue
		}
		v, err := parseUint(data)
		if err != nil {
			known = false
			continue
		}
		if v < uint64(b.want) {
			need = true
		}
	}
	return need, known
}

// ParsePort accepts what --listen takes, "ADDR:PORT" or "[IPv6]:PORT",
// plus ":PORT" and a bare "PORT": tune only needs the port.
func ParsePort(s string) (uint16, error) {
	p := s
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		if strings.Count(s, ":") > 1 && !strings.HasPrefix(s, "[") {
			return 0, fmt.Errorf("%q: put IPv6 addresses in brackets: [ADDR]:PORT", s)
		}
		p = s[i+1:]
	}
	v, err := strconv.ParseUint(p, 10, 16)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("%q: want ADDR:PORT, :PORT or PORT with a port in 1..65535", s)
	}
	return uint16(v), nil
}

func sockets(n int) string {
	if n == 1 {
		return "1 socket"
	}
	return strconv.Itoa(n) + " sockets"
}
