package metrics

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tapproxy/tapproxy/upstream"
)

// requireChromium returns the path of a Chromium binary or fails the test
// naming the Debian package (CI installs it; the test never skips).
func requireChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatalf("chromium not found on PATH: the live page test needs headless Chromium; install it: apt-get install chromium")
	return ""
}

// chromium runs headless Chromium with args plus url and returns its
// stdout and stderr. The process group is killed if it outlives its bound.
func chromium(t *testing.T, bin string, args []string, url string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
		"--user-data-dir=" + t.TempDir(), "--enable-logging=stderr", "--v=0", "--window-size=1280,1500"}
	cmd := exec.CommandContext(ctx, bin, append(append(base, args...), url)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Kill the whole group we started (renderer and GPU helpers too).
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // leftover helpers of our own group, if any
	}
	if err != nil {
		t.Fatalf("chromium %v: %v\nstderr:\n%s", args, err, errb.String())
	}
	return out.String(), errb.String()
}

// consoleProblems returns the lines of Chromium's log that report page
// errors: uncaught exceptions and console.error messages.
func consoleProblems(log string) []string {
	var bad []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "Uncaught") || (strings.Contains(l, "CONSOLE") && strings.Contains(l, "ERROR")) {
			bad = append(bad, l)
		}
	}
	return bad
}

// loadLoop sends queries to addr until stop is closed or max queries were
// sent, paced by a ticker; every 40th is a timeout name and every 50th a
// short datagram, so that every graph has something to show.
func loadLoop(t *testing.T, addr netip.AddrPort, stop <-chan struct{}, max int) (wait func() int) {
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	// Built here: the sender goroutine must not call t.Fatal.
	var okq [7][]byte
	for i := range okq {
		okq[i] = query(t, 0, strconv.Itoa(i)+"."+nameOK)
	}
	toq := query(t, 0, nameTimeout)
	var wg sync.WaitGroup
	sent := 0
	wg.Add(2)
	go func() { // drain replies; exits when the socket is closed
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		defer c.Close()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for sent < max {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			sent++
			var b []byte
			switch {
			case sent%50 == 0:
				b = []byte{1, 2, 3}
			case sent%40 == 0:
				b = toq
			default:
				b = okq[sent%7]
			}
			if len(b) >= 12 {
				binary.BigEndian.PutUint16(b, uint16(sent))
			}
			_, _ = c.Write(b)
		}
	}()
	return func() int { wg.Wait(); return sent }
}

var (
	reUpdates  = regexp.MustCompile(`data-updates="(\d+)"`)
	reJSErrors = regexp.MustCompile(`data-js-errors="(\d+)"`)
)

// TestLivePage runs tapproxy with load flowing, points headless Chromium
// at the live page twice a few samples apart, and checks that the page
// rendered data without errors and that the graphs moved.
func TestLivePage(t *testing.T) {
	bin := requireChromium(t)
	p := startProxy(t)
	samples := make(chan int, 1024)
	src := Sources{Version: "test", Counters: p.srv.Counters, Tap: p.logger.Stats, Observer: p.obs,
		Sink: func() SinkState { return SinkState{Kind: "file", Up: true} }}
	if pool := poolOf(p.srv); pool != nil {
		src.Upstreams = pool.Upstreams
	} else {
		// Until server.Server has Pool() (see TestWorkload), draw a
		// hand-made pool with one upstream down so the strip is exercised.
		pool, err := upstream.NewPool([]upstream.Spec{{Addr: p.fake.Addr, Weight: 1}, {Addr: netip.MustParseAddrPort("127.0.0.9:53"), Weight: 1}},
			upstream.FirstAvailable, upstream.HealthConfig{FailThreshold: 1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		pool.Failure(pool.Upstreams()[1], true)
		src.Upstreams = pool.Upstreams
	}
	m, err := New(src, Options{Interval: 250 * time.Millisecond, OnSample: func(n int) {
		select {
		case samples <- n:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- m.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	stop := make(chan struct{})
	wait := loadLoop(t, p.addr, stop, 60000)
	defer func() { close(stop); wait() }()
	awaitSamples := func(n int) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for got := 0; got < n; {
			select {
			case <-samples:
				got++
			case <-deadline:
				t.Fatalf("metrics sampler produced %d of %d samples within 60 s", got, n)
			}
		}
	}
	url := "http://" + ln.Addr().String() + "/"
	dir := os.Getenv("TAPPROXY_SCREENSHOT_DIR") // keep the images to look at
	if dir == "" {
		dir = t.TempDir()
	}
	var shots [2][]byte
	for i := range shots {
		awaitSamples(8) // two seconds of new history
		path := filepath.Join(dir, "live-"+strconv.Itoa(i+1)+".png")
		_, logs := chromium(t, bin, []string{"--screenshot=" + path, "--virtual-time-budget=3000", "--hide-scrollbars"}, url)
		if bad := consoleProblems(logs); len(bad) > 0 {
			t.Errorf("screenshot %d: console errors:\n%s", i+1, strings.Join(bad, "\n"))
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("screenshot %d: %v", i+1, err)
		}
		if len(b) < 8 || string(b[1:4]) != "PNG" {
			t.Fatalf("screenshot %d is not a PNG (%d bytes)", i+1, len(b))
		}
		shots[i] = b
		t.Logf("screenshot %d: %s (%d bytes)", i+1, path, len(b))
	}
	if bytes.Equal(shots[0], shots[1]) {
		t.Errorf("the two screenshots are identical: the graphs did not move")
	}
	dom, logs := chromium(t, bin, []string{"--dump-dom", "--virtual-time-budget=3000"}, url)
	if bad := consoleProblems(logs); len(bad) > 0 {
		t.Errorf("dump-dom: console errors:\n%s", strings.Join(bad, "\n"))
	}
	if m := reJSErrors.FindStringSubmatch(dom); m == nil || m[1] != "0" {
		t.Errorf("page reports JavaScript errors (data-js-errors=%v); DOM:\n%s", m, excerpt(dom))
	}
	if m := reUpdates.FindStringSubmatch(dom); m == nil || m[1] == "0" {
		t.Errorf("page never rendered status.json (data-updates=%v); DOM:\n%s", m, excerpt(dom))
	}
	if !strings.Contains(dom, `id="state" class="ok"`) {
		t.Errorf("page state is not live; DOM:\n%s", excerpt(dom))
	}
	// The numbers on the page come from load: the qps tile is not empty.
	if strings.Contains(dom, `id="t-qps">–<`) {
		t.Errorf("qps tile empty; DOM:\n%s", excerpt(dom))
	}
}

func excerpt(s string) string {
	if len(s) > 3000 {
		return s[:3000] + "…"
	}
	return s
}
