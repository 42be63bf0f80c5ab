//go:build linux

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// Bounds of the pool tests' waits (never assertions about speed).
const (
	lineWait    = 20 * time.Second // a log line tapproxy or unbound must write
	restartWait = 20 * time.Second // unbound restarted on its old port
)

// whoName is answered by each Unbound of the pool tests with a TXT record
// naming that server, so a client can tell which upstream answered.
const whoName = "who." + testenv.Zone

// whoData is the unbound config lines (for UnboundOptions.Extra) that make
// a server answer whoName with TXT "name".
func whoData(name string) string {
	return fmt.Sprintf("    local-data: '%s 300 IN TXT \"%s\"'", whoName, name)
}

// who returns the TXT string of a whoName answer, or "".
func who(m *dns.Msg) string {
	for _, rr := range m.Answer {
		if txt, ok := rr.(*dns.TXT); ok && len(txt.Txt) > 0 {
			return txt.Txt[0]
		}
	}
	return ""
}

// notifyBuf is a child's output; every write closes the current changed
// channel, so a test waits for a line without polling.
type notifyBuf struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func (b *notifyBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return len(p), nil
}

func (b *notifyBuf) snapshot() (string, chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String(), b.changed
}

// restartUnbound starts unbound again with the config of u, which was
// killed: same port, same data. testenv.StartUnbound always picks a new
// port; a restarted server must come back where tapproxy expects it. It
// waits (bounded) for "start of service" and stops the server by PID in
// t.Cleanup.
func restartUnbound(t *testing.T, u *testenv.Unbound) {
	t.Helper()
	bin := testenv.RequireTool(t, "unbound")
	cmd := exec.Command(bin, "-d", "-c", u.Conf)
	cmd.Dir = filepath.Dir(u.Conf)
	out := &notifyBuf{changed: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test binary
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("restarting unbound: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			s, _ := out.snapshot()
			t.Logf("restarted unbound (pid %d) output:\n%s", cmd.Process.Pid, s)
		}
	})
	deadline := time.NewTimer(restartWait)
	defer deadline.Stop()
	for {
		s, changed := out.snapshot()
		if strings.Contains(s, "start of service") {
			return
		}
		select {
		case <-changed:
		case <-done:
			t.Fatalf("restarted unbound exited before serving:\n%s", s)
		case <-deadline.C:
			t.Fatalf("restarted unbound not serving within %v:\n%s", restartWait, s)
		}
	}
}

// killUnbound kills u with SIGKILL (no goodbye: its sockets just close)
// and waits until its UDP port answers ICMP port unreachable.
func killUnbound(t *testing.T, u *testenv.Unbound) {
	t.Helper()
	if err := syscall.Kill(u.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("killing unbound %d: %v", u.PID, err)
	}
	// The kernel closes the sockets when the process is gone; a connected
	// UDP socket then reads ECONNREFUSED. Bounded wait for that.
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(u.Addr4))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := query(t, "www."+testenv.Zone, 1)
	buf := make([]byte, 512)
	for deadline := time.Now().Add(lineWait); time.Now().Before(deadline); {
		_, _ = c.Write(q)
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.Read(buf); errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
	}
	t.Fatalf("unbound %d still answering %v after SIGKILL", u.PID, u.Addr4)
}

// awaitOutput waits (bounded) until tapproxy's output satisfies cond. The
// harness has no "line written" signal for tapproxy, so this polls the
// output every 10 ms: a poll of a condition, not a sleep standing in for
// one.
func awaitOutput(t *testing.T, tp *testenv.Tapproxy, what string, cond func(out string) bool) {
	t.Helper()
	deadline := time.Now().Add(lineWait)
	for !cond(tp.Output()) {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not seen within %v\noutput:\n%s", what, lineWait, tp.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stateChange is one `msg="upstream state changed"` line.
type stateChange struct {
	state string
	at    time.Time
}

// stateChanges returns the state changes tapproxy logged for upstream, in
// order.
func stateChanges(out string, upstream netip.AddrPort) []stateChange {
	var res []stateChange
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, `msg="upstream state changed"`) || !strings.Contains(l, " upstream="+upstream.String()+" ") {
			continue
		}
		var sc stateChange
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "state="); ok {
				sc.state = v
			}
			if v, ok := strings.CutPrefix(f, "time="); ok {
				sc.at, _ = time.Parse(time.RFC3339Nano, v)
			}
		}
		res = append(res, sc)
	}
	return res
}

func states(scs []stateChange) []string {
	var s []string
	for _, sc := range scs {
		s = append(s, sc.state)
	}
	return s
}

// result is what one query got: rcode, and which server answered (TXT of
// whoName); ok is false when nothing came back within the bound.
type result struct {
	ok    bool
	rcode int
	who   string
}

// loadClient sends UDP queries at a fixed pace from one socket; a reader
// goroutine collects the answers by ID.
type loadClient struct {
	conn *net.UDPConn
	to   netip.AddrPort
	mu   sync.Mutex
	got  map[uint16]result
	sig  chan struct{} // an answer arrived (cap 1)
	done chan struct{} // the reader exited
}

func newLoadClient(t *testing.T, to netip.AddrPort) *loadClient {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	lc := &loadClient{conn: conn, to: to, got: map[uint16]result{}, sig: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(lc.done)
		buf := make([]byte, 65536)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			var m dns.Msg
			if m.Unpack(buf[:n]) != nil {
				continue
			}
			lc.mu.Lock()
			if _, dup := lc.got[m.Id]; !dup {
				lc.got[m.Id] = result{ok: true, rcode: m.Rcode, who: who(&m)}
			}
			lc.mu.Unlock()
			select {
			case lc.sig <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(lc.close)
	return lc
}

func (lc *loadClient) close() {
	_ = lc.conn.Close()
	<-lc.done
}

func (lc *loadClient) send(t *testing.T, id uint16) {
	t.Helper()
	q := ask{name: whoName, qtype: dns.TypeTXT, id: id, rd: true}.wire(t)
	if _, err := lc.conn.WriteToUDPAddrPort(q, lc.to); err != nil {
		t.Fatalf("load client send: %v", err)
	}
}

// wait waits until every id in ids is answered or answerWait has passed
// since the call, and returns each id's result.
func (lc *loadClient) wait(ids []uint16) map[uint16]result {
	deadline := time.NewTimer(answerWait)
	defer deadline.Stop()
	for {
		lc.mu.Lock()
		all := true
		for _, id := range ids {
			if _, ok := lc.got[id]; !ok {
				all = false
				break
			}
		}
		lc.mu.Unlock()
		if all {
			break
		}
		select {
		case <-lc.sig:
			continue
		case <-deadline.C:
		}
		break
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	out := make(map[uint16]result, len(ids))
	for _, id := range ids {
		out[id] = lc.got[id]
	}
	return out
}

// tcpAsker sends queries one at a time over one DNS-over-TCP connection
// from src (any loopback address when empty). A query whose connection
// fails gets no answer (result.ok false) and the next one dials afresh.
type tcpAsker struct {
	to   netip.AddrPort
	src  string
	conn *dns.Conn
}

func (a *tcpAsker) ask(t *testing.T, name string, qtype uint16, id uint16) result {
	t.Helper()
	if a.conn == nil {
		d := net.Dialer{Timeout: answerWait}
		if a.src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(a.src)}
		}
		nc, err := d.Dial("tcp4", a.to.String())
		if err != nil {
			t.Fatalf("dialling tapproxy over TCP: %v", err)
		}
		a.conn = &dns.Conn{Conn: nc}
		t.Cleanup(func() { _ = nc.Close() })
	}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	_ = a.conn.SetDeadline(time.Now().Add(answerWait))
	err := a.conn.WriteMsg(m)
	var r *dns.Msg
	if err == nil {
		r, err = a.conn.ReadMsg()
	}
	if err != nil {
		t.Logf("TCP query %#04x: %v", id, err)
		_ = a.conn.Close()
		a.conn = nil
		return result{}
	}
	if r.Id != id {
		return result{}
	}
	return result{ok: true, rcode: r.Rcode, who: who(r)}
}

func (a *tcpAsker) close() {
	if a.conn != nil {
		_ = a.conn.Close()
		a.conn = nil
	}
}

// runTapproxyExit runs the tapproxy binary with args, expecting it to exit
// on its own (bounded), and returns its exit code and output.
func runTapproxyExit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.BuildTapproxy(t), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("tapproxy %v did not exit within 30s (killed); output:\n%s", args, out)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("running tapproxy %v: %v", args, err)
	return 0, ""
}

// loopback returns 127.0.0.1:port.
func loopback(port int) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
}
