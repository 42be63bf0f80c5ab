package tuning

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// fakeProber fails the options it lists, with the given error.
type fakeProber map[SockOpt]error

func (f fakeProber) Probe(opt SockOpt) error { return f[opt] }

// goldenCases are the fixture runs whose output is pinned. The comments
// say what each fixture exercises. They use a fake prober, so the feature
// lines are pinned too; packaging/test.sh runs the binary on the same trees
// with --probe=false and checks its exit codes.
var goldenCases = []struct {
	name string
	opts Options
}{
	// healthy: tapproxy as pid 4242 with CAP_NET_BIND_SERVICE only, 4
	// workers on :53 (v4 and v6), raised sysctls, no errors anywhere; fd
	// links of every kind; /proc/4242/net is a link to /proc/net.
	{"healthy", Options{Root: "testdata/healthy", Ports: []uint16{53}, PID: 4242, Workers: 4, Prober: fakeProber{}}},
	// unhealthy: stock buffer sysctls, low backlog with softnet drops, UDP
	// errors of every kind, garbled snmp6, no udp6 (IPv6 off), a torn
	// /proc/net/udp row, no /sys (cpuinfo fallback), no
	// ip_unprivileged_port_start, no capabilities, a port with no socket,
	// and two kernel features missing.
	{"unhealthy", Options{Root: "testdata/unhealthy", Ports: []uint16{53, 853, 5353}, Workers: 4, Prober: fakeProber{
		OptTimestampNS:  errors.New("setting SO_TIMESTAMPNS: operation not permitted"),
		OptRxqOverflows: errors.New("setting SO_RXQ_OVFL: protocol not available"),
	}}},
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases {
		rep := Run(tc.opts)
		var txt, js bytes.Buffer
		if err := rep.WriteText(&txt); err != nil {
			t.Fatal(err)
		}
		if err := rep.WriteJSON(&js); err != nil {
			t.Fatal(err)
		}
		for _, out := range []struct {
			file string
			got  []byte
		}{{tc.name + ".golden", txt.Bytes()}, {tc.name + ".json.golden", js.Bytes()}} {
			t.Run(out.file, func(t *testing.T) {
				path := filepath.Join("testdata", out.file)
				if *update {
					if err := os.WriteFile(path, out.got, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test ./tuning -run TestGolden -update to create it)", err)
				}
				if !bytes.Equal(out.got, want) {
					t.Errorf("output differs from %s (rerun with -update if intended):\n--- got\n%s\n--- want\n%s", path, out.got, want)
				}
			})
		}
	}
}

// TestGoldenVerdicts pins the meaning, not only the bytes: the healthy
// tree is all OK, the unhealthy one fails, and the JSON agrees with the
// text.
func TestGoldenVerdicts(t *testing.T) {
	h := Run(goldenCases[0].opts)
	if h.Worst() != OK || h.ExitCode() != ExitOK {
		t.Errorf("healthy: worst %v exit %d, want OK 0:\n%s", h.Worst(), h.ExitCode(), text(h))
	}
	u := Run(goldenCases[1].opts)
	if u.ExitCode() != ExitFail {
		t.Errorf("unhealthy: exit %d, want %d", u.ExitCode(), ExitFail)
	}
	want := map[string]Status{
		"net.core.rmem_max":           Warn,
		"net.core.wmem_max":           Warn,
		"net.core.netdev_max_backlog": Warn,
		"softnet_stat dropped":        Warn,
		"udp counters":                Warn, // garbled snmp6
		"udp RcvbufErrors":            Warn,
		"udp SndbufErrors":            Warn,
		"udp InErrors":                Warn,
		"workers":                     Warn,
		"socket drops":                Warn, // torn row
		"socket drops :53":            Warn,
		"socket drops :853":           Skip,
		"socket drops :5353":          Warn,
		"feature SO_REUSEPORT":        OK,
		"feature SO_TIMESTAMPNS":      Warn,
		"feature SO_RXQ_OVFL":         Warn,
		"CAP_NET_BIND_SERVICE":        Fail,
		"CAP_NET_ADMIN":               Warn,
	}
	got := map[string]Status{}
	for _, f := range u.Findings {
		if _, dup := got[f.Check]; dup {
			t.Errorf("check %q reported twice", f.Check)
		}
		got[f.Check] = f.Status
		if f.Status >= Warn && f.Fix == "" && f.Check != "udp counters" && f.Check != "socket drops" && f.Check != "CAP_NET_ADMIN" {
			t.Errorf("%s: %v without a fix", f.Check, f.Status)
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("unhealthy %s: %v, want %v", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("unhealthy: %d checks, want %d:\n%s", len(got), len(want), text(u))
	}
	var js struct {
		Findings []struct{ Check, Status, Message, Fix string }
		Fail     int
		ExitCode int `json:"exit_code"`
	}
	var b bytes.Buffer
	if err := u.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b.Bytes(), &js); err != nil {
		t.Fatal(err)
	}
	if js.ExitCode != ExitFail || js.Fail != 1 || len(js.Findings) != len(u.Findings) || js.Findings[0].Status != "WARN" {
		t.Errorf("JSON disagrees with the report: %+v", js)
	}
}

func text(r Report) string {
	var b strings.Builder
	_ = r.WriteText(&b)
	return b.String()
}

func find(r Report, check string) (Finding, bool) {
	for _, f := range r.Findings {
		if f.Check == check {
			return f, true
		}
	}
	return Finding{}, false
}

// copyTree copies a fixture tree, symbolic links included, so a test can
// break one file.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, out)
		case d.IsDir():
			return os.MkdirAll(out, 0o755)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(out, b, 0o644)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestBrokenFiles breaks each file of the healthy tree in turn (missing,
// empty, garbage, cut in half) and checks that Run neither panics nor
// stays silent: a missing or garbled file is named in a WARN, except where
// absence is documented as normal.
func TestBrokenFiles(t *testing.T) {
	files := []struct {
		rel string
		// quietMissing: absence is normal (IPv6 off, pre-4.11 kernel,
		// only read when MemErrors > 0).
		quietMissing bool
		quietGarbage bool
	}{
		{rel: "proc/sys/net/core/rmem_max"},
		{rel: "proc/sys/net/core/wmem_max"},
		{rel: "proc/sys/net/core/netdev_max_backlog"},
		{rel: "proc/sys/net/ipv4/ip_unprivileged_port_start", quietMissing: true},
		{rel: "proc/sys/net/ipv4/udp_mem", quietMissing: true, quietGarbage: true},
		{rel: "proc/net/snmp"},
		{rel: "proc/net/snmp6", quietMissing: true},
		{rel: "proc/net/udp"},
		{rel: "proc/net/udp6", quietMissing: true},
		{rel: "proc/net/softnet_stat"},
		{rel: "sys/devices/system/cpu/online"}, // no cpuinfo fallback in this tree
		{rel: "proc/4242/status"},
	}
	breaks := []struct {
		name  string
		apply func(path string) error
	}{
		{"missing", os.Remove},
		{"empty", func(p string) error { return os.WriteFile(p, nil, 0o644) }},
		{"garbage", func(p string) error { return os.WriteFile(p, []byte("\x00\xffgarbage: -1 ::\n\tUdp: x\n"), 0o644) }},
		{"truncated", func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(p, b[:len(b)/2], 0o644)
		}},
	}
	for _, f := range files {
		for _, br := range breaks {
			t.Run(f.rel+"/"+br.name, func(t *testing.T) {
				root := copyTree(t, "testdata/healthy")
				if err := br.apply(filepath.Join(root, f.rel)); err != nil {
					t.Fatal(err)
				}
				o := goldenCases[0].opts
				o.Root = root
				rep := Run(o)
				for _, fd := range rep.Findings {
					if fd.Status < OK || fd.Status > Fail || fd.Message == "" || fd.Check == "" {
						t.Errorf("malformed finding %+v", fd)
					}
				}
				if br.name == "truncated" {
					return // may still parse: a shorter number is a number
				}
				quiet := (br.name == "missing" && f.quietMissing) || (br.name != "missing" && f.quietGarbage)
				named := false
				// With a PID the network files are read through
				// /proc/4242/net, a link to /proc/net in this tree.
				alias := "/" + strings.Replace(f.rel, "proc/net/", "proc/4242/net/", 1)
				for _, fd := range rep.Findings {
					if (strings.Contains(fd.Message, "/"+f.rel) || strings.Contains(fd.Message, alias)) && fd.Status >= Warn {
						named = true
					}
				}
				if !quiet && !named {
					t.Errorf("no WARN names /%s:\n%s", f.rel, text(rep))
				}
				if quiet && rep.Worst() != OK {
					t.Errorf("absence of /%s should be quiet:\n%s", f.rel, text(rep))
				}
			})
		}
	}
}

func TestBufferMax(t *testing.T) {
	cases := []struct {
		name    string
		rmem    string
		capEff  string
		rcvbuf  int
		want    Status
		wantFix string
	}{
		{"enough", "4194304", "0", 0, OK, ""},
		{"too low", "212992", "0", 0, Warn, "sysctl -w net.core.rmem_max=4194304"},
		{"too low but CAP_NET_ADMIN", "212992", "1000", 0, OK, ""},
		{"custom request", "8388608", "0", 16 << 20, Warn, "sysctl -w net.core.rmem_max=16777216"},
		{"garbage", "lots", "0", 0, Warn, "sysctl -w net.core.rmem_max=4194304"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			write(t, root, "proc/sys/net/core/rmem_max", tc.rmem+"\n")
			write(t, root, "proc/self/status", "CapEff:\t"+tc.capEff+"\n")
			rep := Run(Options{Root: root, RcvBuf: tc.rcvbuf})
			f, ok := find(rep, "net.core.rmem_max")
			if !ok {
				t.Fatal("no rmem_max finding")
			}
			if f.Status != tc.want || f.Fix != tc.wantFix {
				t.Errorf("got %v %q fix %q, want %v fix %q", f.Status, f.Message, f.Fix, tc.want, tc.wantFix)
			}
		})
	}
}

func TestCapabilities(t *testing.T) {
	cases := []struct {
		name    string
		capEff  string
		unpriv  string // "" = file missing
		ports   []uint16
		want    Status
		message string
	}{
		{"port 53 without cap", "0000000000000000", "1024", []uint16{53}, Fail, "cannot bind port 53"},
		{"port 53 with cap", "0000000000000400", "1024", []uint16{53}, OK, "held"},
		{"port 53 with root caps", "000001ffffffffff", "", []uint16{53}, OK, "held"},
		{"unprivileged port", "0", "1024", []uint16{5300}, OK, "not needed"},
		{"sysctl lowered", "0", "53", []uint16{53}, OK, "not needed"},
		{"sysctl garbage", "0", "x", []uint16{53}, Fail, "assuming 1024"},
		{"no CapEff line", "", "1024", []uint16{53}, Warn, "no CapEff line"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			status := "Name:\ttapproxy\n"
			if tc.capEff != "" {
				status += "CapEff:\t" + tc.capEff + "\n"
			}
			write(t, root, "proc/self/status", status)
			if tc.unpriv != "" {
				write(t, root, "proc/sys/net/ipv4/ip_unprivileged_port_start", tc.unpriv+"\n")
			}
			rep := Run(Options{Root: root, Ports: tc.ports})
			f, _ := find(rep, "CAP_NET_BIND_SERVICE")
			if f.Status != tc.want || !strings.Contains(f.Message, tc.message) {
				t.Errorf("got %v %q, want %v containing %q", f.Status, f.Message, tc.want, tc.message)
			}
			if f.Status == Fail && !strings.Contains(f.Fix, "AmbientCapabilities=CAP_NET_BIND_SERVICE") {
				t.Errorf("fix %q does not name the capability", f.Fix)
			}
		})
	}
}

func TestSocketDropsPID(t *testing.T) {
	root := copyTree(t, "testdata/healthy")
	// A foreign socket on :53 with drops, not held by 4242: counted
	// without --pid, ignored with it.
	udp, err := os.ReadFile(filepath.Join(root, "proc/net/udp"))
	if err != nil {
		t.Fatal(err)
	}
	udp = append(udp, "   53: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 99999 2 00000000c77bb2b3 12\n"...)
	write(t, root, "proc/net/udp", string(udp))

	o := goldenCases[0].opts
	o.Root = root
	f, _ := find(Run(o), "socket drops :53")
	if f.Status != OK || !strings.Contains(f.Message, "8 sockets of process 4242") {
		t.Errorf("with --pid: %v %q, want OK on 8 sockets", f.Status, f.Message)
	}
	o.PID = 0
	write(t, root, "proc/self/status", "CapEff:\t0000000000000400\n")
	f, _ = find(Run(o), "socket drops :53")
	if f.Status != Warn || !strings.Contains(f.Message, "12 datagrams dropped by 9 sockets of any process") {
		t.Errorf("without --pid: %v %q", f.Status, f.Message)
	}

	o.PID = 777 // no such process
	f, _ = find(Run(o), "socket drops")
	if f.Status != Warn || !strings.Contains(f.Message, "/proc/777/fd: missing") {
		t.Errorf("unknown pid: %v %q", f.Status, f.Message)
	}
}

func TestWorkers(t *testing.T) {
	cases := []struct {
		online, cpuinfo string
		workers         int
		want            Status
		msg             string
	}{
		{"0-3\n", "", 0, OK, "4 CPUs"},
		{"0-3\n", "", 8, Warn, "--workers 8 > 4 CPUs"},
		{"0,2-3\n", "", 3, OK, "--workers 3 on 3 CPUs"},
		{"", "processor\t: 0\nprocessor\t: 1\n", 2, OK, "on 2 CPUs"},
		{"0-", "processor\t: 0\n", 1, OK, "on 1 CPUs"},
		{"", "", 1, Warn, "CPU count unknown (/sys/devices/system/cpu/online: missing; /proc/cpuinfo: missing)"},
	}
	for _, tc := range cases {
		root := t.TempDir()
		if tc.online != "" {
			write(t, root, "sys/devices/system/cpu/online", tc.online)
		}
		if tc.cpuinfo != "" {
			write(t, root, "proc/cpuinfo", tc.cpuinfo)
		}
		f, _ := find(Run(Options{Root: root, Workers: tc.workers}), "workers")
		if f.Status != tc.want || !strings.Contains(f.Message, tc.msg) {
			t.Errorf("online %q cpuinfo %q workers %d: %v %q, want %v %q", tc.online, tc.cpuinfo, tc.workers, f.Status, f.Message, tc.want, tc.msg)
		}
	}
}

func TestFeatures(t *testing.T) {
	bad := errors.New("setting SO_REUSEPORT: protocol not available")
	for _, tc := range []struct {
		workers int
		want    Status
	}{{0, Fail}, {4, Fail}, {1, Warn}} {
		rep := Run(Options{Root: t.TempDir(), Workers: tc.workers, Prober: fakeProber{OptReusePort: bad}})
		f, _ := find(rep, "feature SO_REUSEPORT")
		if f.Status != tc.want || !strings.Contains(f.Message, bad.Error()) {
			t.Errorf("workers %d: %v %q, want %v", tc.workers, f.Status, f.Message, tc.want)
		}
	}
	rep := Run(Options{Root: t.TempDir()})
	for _, opt := range []SockOpt{OptReusePort, OptTimestampNS, OptRxqOverflows} {
		if f, _ := find(rep, "feature "+string(opt)); f.Status != Skip {
			t.Errorf("no prober: %s %v, want SKIP", opt, f.Status)
		}
	}
}

// TestLiveProber runs the real probes: tapproxy's CI kernel supports all
// three options (Linux >= 3.9), so any error here is a bug in the probe.
func TestLiveProber(t *testing.T) {
	for _, opt := range []SockOpt{OptReusePort, OptTimestampNS, OptRxqOverflows} {
		if err := (LiveProber{}).Probe(opt); err != nil {
			t.Errorf("%s: %v", opt, err)
		}
	}
	if err := (LiveProber{}).Probe("SO_NONSENSE"); err == nil {
		t.Error("unknown option probed fine")
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		st   []Status
		want int
	}{
		{nil, ExitOK}, {[]Status{OK, Skip}, ExitOK}, {[]Status{OK, Warn, Skip}, ExitWarn}, {[]Status{Fail, Warn}, ExitFail},
	} {
		var r Report
		for _, s := range tc.st {
			r.Findings = append(r.Findings, Finding{Check: "x", Status: s, Message: "m"})
		}
		if got := r.ExitCode(); got != tc.want {
			t.Errorf("%v: exit %d, want %d", tc.st, got, tc.want)
		}
	}
	if Status(9).String() != "Status(9)" {
		t.Errorf("out-of-range status prints %q", Status(9).String())
	}
}

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint16
		ok   bool
	}{
		{"127.0.0.1:53", 53, true}, {"[::1]:5300", 5300, true}, {":53", 53, true}, {"53", 53, true},
		{"0.0.0.0:0", 0, false}, {"::1:53", 0, false}, {"host:port", 0, false}, {"", 0, false}, {"70000", 0, false},
	} {
		got, err := ParsePort(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParsePort(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func write(t *testing.T, root, rel, content string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
