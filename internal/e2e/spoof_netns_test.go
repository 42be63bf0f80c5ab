package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// forgerScript runs in the upstream's namespace: a DNS server on ADDR:53
// that answers every query with the query itself, QR set, and before each
// genuine answer sends FORGE forged answers through the same socket (so from
// the upstream's own address and port) with random IDs: half to the port
// the query came from (an attacker who learnt it), half to random ports.
// The forged answers carry the name forged.example.test. On SIGTERM it
// prints its counts and exits.
const forgerScript = `
import random, signal, socket, struct, sys
addr, k = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
qname = b"\x06forged\x07example\x04test\x00"
forged = struct.pack(">HHHHHH", 0, 0x8180, 1, 1, 0, 0) + qname + b"\x00\x01\x00\x01" + \
    b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\xc6\x33\x64\x42"
counts = {"genuine": 0, "to_source": 0, "to_random": 0}
def done(*_):
    print("counts %d %d %d" % (counts["genuine"], counts["to_source"], counts["to_random"]), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
while True:
    q, src = s.recvfrom(65535)
    if len(q) < 12:
        continue
    for i in range(k):
        port = src[1] if i % 2 == 0 else r.randrange(1024, 65536)
        s.sendto(struct.pack(">H", r.randrange(65536)) + forged[2:], (src[0], port))
        counts["to_source" if port == src[1] else "to_random"] += 1
    s.sendto(q[:2] + bytes([q[2] | 0x80]) + q[3:], src)
    counts["genuine"] += 1
`

func runIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// lineProc is a process started under `ip netns exec` whose output is
// scanned line by line.
type lineProc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	out   bytes.Buffer
	lines chan string
	done  chan struct{}
}

func startInNetns(t *testing.T, ns string, args ...string) *lineProc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	p := &lineProc{cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %v in %s: %v", args, ns, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		close(p.done)
	}()
	go func() { _ = cmd.Wait(); pw.Close() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-p.done })
	return p
}

// await returns the first line containing s, failing after a bound.
func (p *lineProc) await(t *testing.T, s string) string {
	t.Helper()
	timeout := time.NewTimer(20 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case l := <-p.lines:
			if strings.Contains(l, s) {
				return l
			}
		case <-p.done:
			t.Fatalf("process exited before printing %q:\n%s", s, p.output())
		case <-timeout.C:
			t.Fatalf("no %q within 20s:\n%s", s, p.output())
		}
	}
}

func (p *lineProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// stop sends SIGTERM and waits for the output to end.
func (p *lineProc) stop(t *testing.T) string {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit 30s after SIGTERM:\n%s", p.output())
	}
	return p.output()
}

// udpInNetns opens a UDP socket inside network namespace ns: a locked
// thread enters it just to create the socket (sockets keep their
// namespace); the thread is then discarded, never reused.
func udpInNetns(t *testing.T, ns string) *net.UDPConn {
	t.Helper()
	type res struct {
		c   *net.UDPConn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			ch <- res{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- res{nil, fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		ch <- res{c, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	return r.c
}

// TestForgedAnswersNetns: tapproxy runs in one network namespace and its
// upstream in another, joined by a veth pair with TEST-NET-1 addresses
// (RFC 5737) that exist only inside these namespaces. A forger in the
// upstream's namespace, sending with the upstream's own address and port,
// fires forged answers with random IDs at the port each query came from and
// at random ports, before every genuine answer. No forged answer may reach
// the client, every real query must be answered, and the forged datagrams
// that reached tapproxy's sockets must all be counted as resp_unknown_id,
// resp_question_mismatch or resp_late. Needs root (ip netns); CI runs as
// root.
func TestForgedAnswersNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestForgedAnswersNetns needs root for ip netns (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("ip (iproute2) is required: apt-get install iproute2")
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is required: apt-get install python3")
	}
	nsUp, nsPx, _, _ := netnsPair(t, "tpx")

	const perQuery = 10
	forger := startInNetns(t, nsUp, "python3", "-c", forgerScript, "192.0.2.1", fmt.Sprint(perQuery))
	forger.await(t, "ready")
	tp := startInNetns(t, nsPx, testenv.BuildTapproxy(t), "--listen", "127.0.0.1:5300",
		"--upstream", "192.0.2.1:53", "--workers", "1", "--timeout", "3s")
	tp.await(t, "msg=ready")

	c := udpInNetns(t, nsPx)
	to := netip.MustParseAddrPort("127.0.0.1:5300")
	const n = 2000
	buf := make([]byte, 65536)
	var forgedSeen int
	for i := 0; i < n; i++ {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("q%d.example.test.", i), dns.TypeA)
		m.Id = uint16(i)
		q, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WriteToUDPAddrPort(q, to); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second)) // against a hang only
		k, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("query %d: no answer: %v\n%s", i, err, tp.output())
		}
		want := append([]byte(nil), q...)
		want[2] |= 0x80
		if !bytes.Equal(buf[:k], want) {
			forgedSeen++
		}
		if bytes.Contains(buf[:k], []byte("\x06forged")) {
			t.Errorf("query %d: a forged answer reached the client", i)
		}
	}
	cnt, err := testenv.ParseFinalCounters(tp.stop(t))
	if err != nil {
		t.Fatal(err)
	}
	testenv.CheckCounters(t, cnt)
	var genuine, toSource, toRandom int
	fout := forger.stop(t)
	i := strings.Index(fout, "counts ")
	if i < 0 {
		t.Fatalf("forger printed no counts:\n%s", fout)
	}
	if _, err := fmt.Sscanf(fout[i:], "counts %d %d %d", &genuine, &toSource, &toRandom); err != nil {
		t.Fatal(err)
	}
	rejected := cnt["resp_unknown_id"] + cnt["resp_question_mismatch"] + cnt["resp_late"]
	t.Logf("netns: %d queries; forged %d to the source port, %d to random ports; tapproxy rejected %d (unknown_id %d, question_mismatch %d, late %d); kernel_drops %d",
		n, toSource, toRandom, rejected, cnt["resp_unknown_id"], cnt["resp_question_mismatch"], cnt["resp_late"], cnt["kernel_drops"])
	if forgedSeen != 0 {
		t.Errorf("%d answers differed from the genuine ones", forgedSeen)
	}
	if cnt["answered"] != n || cnt["resp_matched"] != n || genuine != n {
		t.Errorf("answered %d, resp_matched %d, upstream answered %d; want %d", cnt["answered"], cnt["resp_matched"], genuine, n)
	}
	// Every forged datagram sent to a query's source port reached an open
	// socket; a random port reaches one only by chance.
	if rejected < uint64(toSource)-cnt["kernel_drops"] || rejected > uint64(toSource+toRandom) {
		t.Errorf("rejected %d, want between %d (to the source port) and %d (all forged)", rejected, toSource, toSource+toRandom)
	}
	if cnt["resp_received"] != cnt["resp_matched"]+rejected+cnt["resp_wrong_source"]+cnt["resp_short"]+cnt["resp_not_response"]+cnt["resp_panic"] {
		t.Errorf("response fates do not add up: %s", testenv.FormatCounters(cnt))
	}
}

// netnsPair creates two network namespaces, "upstream" and "proxy", joined
// by a veth pair (192.0.2.1/24 on the upstream side, 192.0.2.2/24 on the
// proxy side: TEST-NET-1, reachable only between the two), loopback up in
// both; everything is deleted when the test ends. Names carry prefix and
// the test process's PID, so parallel packages do not collide.
func netnsPair(t *testing.T, prefix string) (nsUp, nsPx, vethUp, vethPx string) {
	t.Helper()
	id := os.Getpid() % 100000
	nsUp, nsPx = fmt.Sprintf("%s-up-%d", prefix, id), fmt.Sprintf("%s-px-%d", prefix, id)
	vUp, vPx := fmt.Sprintf("%su%d", prefix, id), fmt.Sprintf("%sp%d", prefix, id)
	runIP(t, "netns", "add", nsUp)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", nsUp).Run() })
	runIP(t, "netns", "add", nsPx)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", nsPx).Run() })
	runIP(t, "-n", nsUp, "link", "add", vUp, "type", "veth", "peer", "name", vPx, "netns", nsPx)
	runIP(t, "-n", nsUp, "addr", "add", "192.0.2.1/24", "dev", vUp)
	runIP(t, "-n", nsPx, "addr", "add", "192.0.2.2/24", "dev", vPx)
	for _, ns := range []string{nsUp, nsPx} {
		runIP(t, "-n", ns, "link", "set", "lo", "up")
	}
	runIP(t, "-n", nsUp, "link", "set", vUp, "up")
	runIP(t, "-n", nsPx, "link", "set", vPx, "up")
	return nsUp, nsPx, vUp, vPx
}
