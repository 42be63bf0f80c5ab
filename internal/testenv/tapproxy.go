package testenv

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Deadlines for the tapproxy process. They bound waits; they are not
// assertions about speed.
const (
	readyTimeout = 30 * time.Second
	stopTimeout  = 30 * time.Second
)

// The binary is built once per test process: every test of a package shares
// it, and Main removes it when the tests are done.
var build struct {
	once sync.Once
	dir  string
	path string
	err  error
	log  string
}

// Main runs the tests and then removes the tapproxy binary BuildTapproxy
// built. Use it as a package's TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// BuildTapproxy builds ./cmd/tapproxy once per test process (with -race when
// the tests run with -race) and returns the binary's path. A build failure
// fails every test that asks, with the compiler's output.
func BuildTapproxy(t testing.TB) string {
	t.Helper()
	root := ModuleRoot(t)
	build.once.Do(func() {
		goBin, err := findGo()
		if err != nil {
			build.err = err
			return
		}
		dir, err := os.MkdirTemp("", "tapproxy-testbin-")
		if err != nil {
			build.err = err
			return
		}
		build.dir = dir
		out := filepath.Join(dir, "tapproxy")
		args := []string{"build", "-o", out}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./cmd/tapproxy")
		cmd := exec.Command(goBin, args...)
		cmd.Dir = root
		b, err := cmd.CombinedOutput()
		build.log = string(b)
		if err != nil {
			build.err = fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
			return
		}
		build.path = out
	})
	if build.err != nil {
		t.Fatalf("testenv: building tapproxy failed: %v\n%s", build.err, build.log)
	}
	return build.path
}

func findGo() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p, nil
		}
	}
	if p := "/usr/local/go/bin/go"; fileExists(p) {
		return p, nil
	}
	return "", fmt.Errorf("the go command is not on PATH, in $GOROOT/bin or /usr/local/go/bin")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Tapproxy is a running tapproxy started by StartTapproxy.
type Tapproxy struct {
	PID    int
	Listen []netip.AddrPort // the --listen addresses, in order
	Args   []string

	t        testing.TB
	proc     *process
	mu       sync.Mutex
	stopped  bool
	counters map[string]uint64
}

// StartTapproxy runs the tapproxy binary with args and waits (bounded) for
// its `msg=ready` log line. On failure the test fails with tapproxy's
// output. If the test does not call Stop, t.Cleanup does, so every test's
// final counters are checked against the invariants (CheckCounters).
func StartTapproxy(t testing.TB, args ...string) *Tapproxy {
	t.Helper()
	return startTapproxy(t, BuildTapproxy(t), args...)
}

// startTapproxy runs bin (the built tapproxy, or a stand-in in the harness's
// own tests) as StartTapproxy describes.
func startTapproxy(t testing.TB, bin string, args ...string) *Tapproxy {
	t.Helper()
	listen, err := listenArgs(args)
	if err != nil {
		t.Fatalf("testenv: StartTapproxy: %v", err)
	}
	p, err := startProcess("tapproxy", t.TempDir(), bin, args...)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	tp := &Tapproxy{PID: p.pid(), Listen: listen, Args: args, t: t, proc: p}
	t.Cleanup(func() {
		tp.mu.Lock()
		stopped := tp.stopped
		tp.mu.Unlock()
		if !stopped {
			tp.Stop()
		}
		if t.Failed() {
			t.Logf("testenv: tapproxy %v (pid %d) output:\n%s", args, tp.PID, p.out.String())
		}
	})
	if _, err := p.waitLine(func(l string) bool { return strings.Contains(l, "msg=ready") }, readyTimeout); err != nil {
		_, _ = p.stop(syscall.SIGKILL, 5*time.Second)
		tp.mu.Lock()
		tp.stopped = true
		tp.mu.Unlock()
		t.Fatalf("testenv: tapproxy %v not ready: %v\noutput:\n%s", args, err, p.out.String())
	}
	return tp
}

// listenArgs extracts the --listen values (both "--listen X" and
// "--listen=X", one or two dashes).
func listenArgs(args []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for i := 0; i < len(args); i++ {
		a := strings.TrimLeft(args[i], "-")
		if !strings.HasPrefix(args[i], "-") {
			continue
		}
		var v string
		switch {
		case a == "listen" && i+1 < len(args):
			v = args[i+1]
			i++
		case strings.HasPrefix(a, "listen="):
			v = strings.TrimPrefix(a, "listen=")
		default:
			continue
		}
		ap, err := netip.ParseAddrPort(v)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %w", v, err)
		}
		out = append(out, ap)
	}
	return out, nil
}

// Output returns everything tapproxy has logged so far.
func (tp *Tapproxy) Output() string { return tp.proc.out.String() }

// Stop sends SIGTERM, waits (bounded) for tapproxy to drain and exit, and
// returns its final counters, which must satisfy the invariants of the CLI
// contract (checked here, so every test checks them). A non-zero exit, a
// missing counters line or a broken invariant fails the test. Calling Stop
// again returns the same counters.
func (tp *Tapproxy) Stop() map[string]uint64 {
	t := tp.t
	t.Helper()
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.stopped {
		return tp.counters
	}
	tp.stopped = true
	ok, err := tp.proc.stop(syscall.SIGTERM, stopTimeout)
	out := tp.proc.out.String()
	if !ok {
		t.Fatalf("testenv: tapproxy did not exit within %v of SIGTERM (killed)\noutput:\n%s", stopTimeout, out)
	}
	if err != nil {
		t.Errorf("testenv: tapproxy exited with %v after SIGTERM, want status 0\noutput:\n%s", err, out)
	}
	c, perr := ParseFinalCounters(out)
	if perr != nil {
		t.Fatalf("testenv: %v\noutput:\n%s", perr, out)
	}
	tp.counters = c
	CheckCounters(t, c)
	return c
}

// CounterKeys are the keys of the `msg="final counters"` line (cli.md).
var CounterKeys = []string{
	"received", "dropped_short", "dropped_qr", "refused_acl", "dropped_acl",
	"dropped_inflight_full", "send_failed", "forwarded", "malformed", "answered",
	"timed_out", "reply_failed", "resp_received", "resp_matched", "resp_short",
	"resp_not_response", "resp_wrong_source", "resp_unknown_id", "resp_late",
	"resp_question_mismatch",
}

// ParseFinalCounters finds the last line of out containing
// `msg="final counters"` and returns its numeric key=value pairs. Values
// that are not unsigned integers (e.g. a time= or level= attribute) are left
// out.
func ParseFinalCounters(out string) (map[string]uint64, error) {
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, `msg="final counters"`) {
			line = l
		}
	}
	if line == "" {
		return nil, fmt.Errorf(`no msg="final counters" line in tapproxy's output`)
	}
	m := make(map[string]uint64)
	for _, kv := range splitLogfmt(line) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			continue
		}
		m[k] = n
	}
	return m, nil
}

// splitLogfmt splits a slog text line on spaces outside double quotes.
func splitLogfmt(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, esc := false, false
	for _, r := range s {
		switch {
		case esc:
			esc = false
		case r == '\\' && inQuote:
			esc = true
		case r == '"':
			inQuote = !inQuote
		case r == ' ' && !inQuote:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
			continue
		}
		cur.WriteRune(r)
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// CheckCounters checks that every key of CounterKeys is present and that
// the invariants of the CLI contract hold:
//
//	received = dropped_short + dropped_qr + refused_acl + dropped_acl +
//	           dropped_inflight_full + send_failed + forwarded
//	           (+ servfail_all_down + loop_detected + dropped_panic, when present)
//	forwarded = answered + timed_out + reply_failed
//	resp_received = resp_matched + resp_short + resp_not_response +
//	                resp_wrong_source + resp_unknown_id + resp_late +
//	                resp_question_mismatch (+ resp_panic, when present)
//	malformed <= forwarded
//
// Keys added after CounterKeys was fixed are summed when present (a
// missing key reads 0), so a stand-in binary without them still checks.
func CheckCounters(t testing.TB, c map[string]uint64) {
	t.Helper()
	var missing []string
	for _, k := range CounterKeys {
		if _, ok := c[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		t.Errorf("final counters: missing keys %v in %s", missing, FormatCounters(c))
		return
	}
	sum := func(keys ...string) uint64 {
		var s uint64
		for _, k := range keys {
			s += c[k]
		}
		return s
	}
	checks := []struct {
		lhs  string
		rhs  []string
		want uint64
	}{
		{"received", []string{"dropped_short", "dropped_qr", "refused_acl", "dropped_acl", "dropped_inflight_full", "send_failed", "servfail_all_down", "loop_detected", "dropped_panic", "forwarded"}, 0},
		{"forwarded", []string{"answered", "timed_out", "reply_failed"}, 0},
		{"resp_received", []string{"resp_matched", "resp_short", "resp_not_response", "resp_wrong_source", "resp_unknown_id", "resp_late", "resp_question_mismatch", "resp_panic"}, 0},
	}
	for _, ch := range checks {
		if got := sum(ch.rhs...); c[ch.lhs] != got {
			t.Errorf("final counters: %s = %d, but %s = %d\n%s", ch.lhs, c[ch.lhs], strings.Join(ch.rhs, "+"), got, FormatCounters(c))
		}
	}
	if c["malformed"] > c["forwarded"] {
		t.Errorf("final counters: malformed = %d > forwarded = %d\n%s", c["malformed"], c["forwarded"], FormatCounters(c))
	}
}

// FormatCounters renders counters sorted by key, for failure messages.
func FormatCounters(c map[string]uint64) string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d ", k, c[k])
	}
	return strings.TrimSpace(b.String())
}

// WantCounters fails the test for each key in want whose final value
// differs.
func WantCounters(t testing.TB, got map[string]uint64, want map[string]uint64) {
	t.Helper()
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if g, ok := got[k]; !ok || g != want[k] {
			t.Errorf("final counter %s = %d (present %v), want %d\n%s", k, g, ok, want[k], FormatCounters(got))
		}
	}
}
