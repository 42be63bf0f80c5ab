package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/testenv"
)

// procStatus returns the named lines of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func askA(t *testing.T, addr, name string) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	c := &dns.Client{Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("query %s via %s: %v %v", name, addr, err, r)
	}
}

// TestPrivilegeDrop: started as root with --user nobody, tapproxy binds,
// opens its dnstap file, then runs with non-zero UIDs/GIDs, no
// supplementary groups and no capabilities; SIGHUP rotation creates the new
// file as nobody, and a dnstap TCP collector that restarts is reconnected
// to after the drop.
func TestPrivilegeDrop(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (CI runs as root): it checks the drop from root")
	}
	capture := testenv.RequireTool(t, "fstrm_capture")
	ub := testenv.StartUnbound(t, testenv.UnboundOptions{})
	dir := t.TempDir()
	// nobody must be able to create files here after the drop.
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "dns.fstrm")
	tp := testenv.StartTapproxy(t, "--listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "udp")), "--upstream", ub.Addr4.String(), "--workers", "1",
		"--user", "nobody", "--dnstap-file", file)
	st := procStatus(t, tp.PID)
	for _, k := range []string{"Uid", "Gid"} {
		for _, id := range strings.Fields(st[k]) {
			if id == "0" {
				t.Errorf("%s still has 0: %q", k, st[k])
			}
		}
	}
	if st["Groups"] != "" {
		t.Errorf("supplementary groups kept: %q", st["Groups"])
	}
	for _, k := range []string{"CapEff", "CapPrm", "CapAmb"} {
		if st[k] != "0000000000000000" {
			t.Errorf("%s = %s, want no capabilities", k, st[k])
		}
	}
	addr := tp.Listen[0].String()
	askA(t, addr, "www.tapproxy.test.")
	if err := syscall.Kill(tp.PID, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// The reopen happens on the writer goroutine at its next flush; a
	// query and a bounded poll make it observable.
	deadline := time.Now().Add(10 * time.Second)
	var rotated []string
	for time.Now().Before(deadline) {
		askA(t, addr, "www.tapproxy.test.")
		rotated, _ = filepath.Glob(file + ".2*")
		if _, err := os.Stat(file); err == nil && len(rotated) > 0 {
			break // rotated, and the new file is open
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(rotated) == 0 {
		t.Fatalf("no rotated file after SIGHUP\n%s", tp.Output())
	}
	var fst syscall.Stat_t
	if err := syscall.Stat(file, &fst); err != nil {
		t.Fatal(err)
	}
	if fst.Uid != 65534 {
		t.Errorf("file created after the drop is owned by uid %d, want nobody", fst.Uid)
	}
	c := tp.Stop()
	if c["dnstap_dropped_write_error"] != 0 || c["dnstap_written"] == 0 {
		t.Errorf("dnstap after the drop: %v", testenv.FormatCounters(c))
	}

	// Collector reconnect after the drop (TCP: no file permissions involved).
	port := testenv.FreePort(t, "tcp")
	start := func(out string) *exec.Cmd {
		cmd := exec.Command(capture, "-t", "protobuf:dnstap.Dnstap", "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-w", out)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
		return cmd
	}
	cap1 := start(filepath.Join(dir, "c1.fstrm"))
	tp2 := testenv.StartTapproxy(t, "--listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "udp")), "--upstream", ub.Addr4.String(), "--workers", "1",
		"--user", "nobody", "--dnstap-tcp", fmt.Sprintf("127.0.0.1:%d", port))
	askA(t, tp2.Listen[0].String(), "www.tapproxy.test.")
	_ = cap1.Process.Kill()
	_, _ = cap1.Process.Wait()
	cap2 := start(filepath.Join(dir, "c2.fstrm"))
	// Queries until the writer has reconnected and the new collector has
	// frames (bounded).
	deadline = time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		askA(t, tp2.Listen[0].String(), "www.tapproxy.test.")
		if fi, err := os.Stat(filepath.Join(dir, "c2.fstrm")); err == nil && fi.Size() > 200 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	c2 := tp2.Stop()
	_ = cap2.Process.Signal(syscall.SIGTERM)
	_, _ = cap2.Process.Wait()
	if c2["dnstap_connects"] < 2 {
		t.Errorf("collector not reconnected after the drop: %s\n%s", testenv.FormatCounters(c2), tp2.Output())
	}
}
