package fstrm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	framestream "github.com/farsightsec/golang-framestream"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/proto"
)

// ---------------------------------------------------------------- tools

// requireTool fails (never skips) when an external reader is missing.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed (apt-get install fstrm-bin golang-github-dnstap-golang-dnstap-cli dnstap-ldns python3): %v", name, err)
	}
	return p
}

// validator returns the path of the corpus's validate-dnstap-file.sh, found
// as ../shared/testdata/dnstap relative to the module root.
func validator(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("module root (go.mod) not found above the test directory")
		}
		dir = parent
	}
	p := filepath.Join(dir, "..", "shared", "testdata", "dnstap", "tools", "validate-dnstap-file.sh")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("dnstap corpus validator missing (expected ../shared/testdata/dnstap beside the module root): %v", err)
	}
	for _, tool := range []string{"fstrm_dump", "dnstap", "dnstap-ldns", "python3", "bash"} {
		requireTool(t, tool)
	}
	return p
}

var summaryTotal = regexp.MustCompile(`\btotal=(\d+)\b`)

// validateFile runs validate-dnstap-file.sh and requires PASS; it returns
// the message total the readers agreed on.
func validateFile(t testing.TB, path string, allowNoStop bool) int {
	t.Helper()
	args := []string{validator(t)}
	if allowNoStop {
		args = append(args, "--allow-no-stop")
	}
	args = append(args, path)
	out, err := exec.Command("bash", args...).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := lines[len(lines)-1]
	if err != nil || !strings.Contains(last, "status=PASS") {
		t.Fatalf("validate-dnstap-file.sh %s: %v\n%s", path, err, out)
	}
	m := summaryTotal.FindStringSubmatch(last)
	if m == nil {
		t.Fatalf("no total in summary line %q", last)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// validateAll runs validateFile's checks on several files at once (the
// script is slow: four readers, three python start-ups) and returns the
// totals by path. The goroutines only run commands; the test fails from
// this goroutine.
func validateAll(t testing.TB, paths []string, allowNoStop bool) map[string]int {
	t.Helper()
	script := validator(t)
	type res struct {
		out []byte
		err error
	}
	results := make([]res, len(paths))
	var wg sync.WaitGroup
	for i, p := range paths {
		wg.Go(func() {
			args := []string{script}
			if allowNoStop {
				args = append(args, "--allow-no-stop")
			}
			out, err := exec.Command("bash", append(args, p)...).CombinedOutput()
			results[i] = res{out, err}
		})
	}
	wg.Wait()
	totals := make(map[string]int, len(paths))
	for i, p := range paths {
		r := results[i]
		lines := strings.Split(strings.TrimSpace(string(r.out)), "\n")
		last := lines[len(lines)-1]
		m := summaryTotal.FindStringSubmatch(last)
		if r.err != nil || !strings.Contains(last, "status=PASS") || m == nil {
			t.Fatalf("validate-dnstap-file.sh %s: %v\n%s", p, r.err, r.out)
		}
		totals[p], _ = strconv.Atoi(m[1])
	}
	return totals
}

// dnstapCLICount runs `dnstap -r FILE -y` and counts the messages. The CLI
// exits 0 on undecodable or truncated input, so stderr must be clean too.
func dnstapCLICount(t testing.TB, path string) int {
	t.Helper()
	requireTool(t, "dnstap")
	cmd := exec.Command("dnstap", "-r", path, "-y")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("dnstap -r %s -y: %v: %s", path, err, stderr.String())
	}
	for _, l := range strings.Split(stderr.String(), "\n") {
		if l != "" && !strings.HasPrefix(l, "dnstap: opened input file") {
			t.Fatalf("dnstap -r %s -y complained: %s", path, stderr.String())
		}
	}
	n := 0
	for _, l := range strings.Split(stdout.String(), "\n") {
		if strings.HasPrefix(l, "  type: ") {
			n++
		}
	}
	return n
}

// fstrmDumpCount runs fstrm_dump and returns the data frames it saw and the
// content type of the START frame.
func fstrmDumpCount(t testing.TB, path string) (int, string) {
	t.Helper()
	requireTool(t, "fstrm_dump")
	cmd := exec.Command("fstrm_dump", path)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("fstrm_dump %s: %v: %s", path, err, stderr.String())
	}
	n, ct := 0, ""
	lines := strings.Split(stderr.String(), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "Data frame (") {
			n++
		}
		if strings.HasPrefix(l, "FSTRM_CONTROL_FIELD_CONTENT_TYPE") && i+1 < len(lines) {
			ct = strings.Trim(strings.TrimSpace(lines[i+1]), `"`)
		}
	}
	return n, ct
}

// ---------------------------------------------------------------- payloads

// dnstapFrame builds a real dnstap message for sequence number seq: even
// numbers are CLIENT_QUERY, odd ones the matching CLIENT_RESPONSE. The
// sequence number is carried in the Extra field so that tests can check
// order and completeness.
func dnstapFrame(t testing.TB, seq int) []byte {
	t.Helper()
	pair := seq / 2
	q := new(dns.Msg)
	q.SetQuestion(fmt.Sprintf("q%d.tapproxy.test.", pair), dns.TypeA)
	q.Id = uint16(pair)
	qt := time.Unix(1764246896, 0).Add(time.Duration(pair) * time.Millisecond)
	sec, nsec := uint64(qt.Unix()), uint32(qt.Nanosecond())
	port := uint32(40000 + pair%20000)
	m := &dnstap.Message{
		SocketFamily:    dnstap.SocketFamily_INET.Enum(),
		SocketProtocol:  dnstap.SocketProtocol_UDP.Enum(),
		QueryAddress:    net.IPv4(127, 0, 0, 1).To4(),
		ResponseAddress: net.IPv4(127, 0, 0, 53).To4(),
		QueryPort:       &port,
		ResponsePort:    proto.Uint32(53),
		QueryTimeSec:    &sec,
		QueryTimeNsec:   &nsec,
	}
	if seq%2 == 0 {
		m.Type = dnstap.Message_CLIENT_QUERY.Enum()
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		m.QueryMessage = b
	} else {
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = append(r.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A:   net.IPv4(192, 0, 2, byte(pair)),
		})
		b, err := r.Pack()
		if err != nil {
			t.Fatal(err)
		}
		m.Type = dnstap.Message_CLIENT_RESPONSE.Enum()
		m.ResponseMessage = b
		rt := qt.Add(300 * time.Microsecond)
		rs, rn := uint64(rt.Unix()), uint32(rt.Nanosecond())
		m.ResponseTimeSec, m.ResponseTimeNsec = &rs, &rn
	}
	extra := binary.BigEndian.AppendUint64(nil, uint64(seq))
	d := &dnstap.Dnstap{
		Type:     dnstap.Dnstap_MESSAGE.Enum(),
		Identity: []byte("tapproxy-test"),
		Version:  []byte("tapproxy fstrm test"),
		Extra:    extra,
		Message:  m,
	}
	b, err := proto.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// frameSeq decodes a frame built by dnstapFrame and returns its sequence
// number.
func frameSeq(t testing.TB, frame []byte) int {
	t.Helper()
	var d dnstap.Dnstap
	if err := proto.Unmarshal(frame, &d); err != nil {
		t.Fatalf("data frame is not a dnstap message: %v", err)
	}
	if len(d.Extra) != 8 {
		t.Fatalf("data frame without sequence number")
	}
	return int(binary.BigEndian.Uint64(d.Extra))
}

// ---------------------------------------------------------------- file parsing

// parsedFile is a Frame Streams file as read by the strict test parser.
type parsedFile struct {
	frames  [][]byte
	hasStop bool
}

// parseStrict reads a whole file: START with our content type, data frames,
// and (unless allowNoStop) STOP as the very last bytes. With allowNoStop the
// file may end after any complete frame but not inside one.
func parseStrict(b []byte, allowNoStop bool) (parsedFile, error) {
	var pf parsedFile
	var buf [controlBufSize]byte
	r := bytes.NewReader(b)
	cf, err := readControl(r, &buf)
	if err != nil {
		return pf, fmt.Errorf("reading START: %w", err)
	}
	if cf.typ != controlStart || len(cf.contentTypes) != 1 || string(cf.contentTypes[0]) != ContentType {
		return pf, fmt.Errorf("first frame is not START(%s): type %d", ContentType, cf.typ)
	}
	for {
		off := len(b) - r.Len()
		if r.Len() == 0 {
			if allowNoStop {
				return pf, nil
			}
			return pf, errors.New("file ends without STOP")
		}
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return pf, fmt.Errorf("torn frame length at offset %d", off)
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 {
			if _, err := r.Seek(-4, io.SeekCurrent); err != nil {
				return pf, err
			}
			cf, err := readControl(r, &buf)
			if err != nil {
				return pf, fmt.Errorf("control frame at offset %d: %w", off, err)
			}
			if cf.typ != controlStop {
				return pf, fmt.Errorf("control frame type %d at offset %d", cf.typ, off)
			}
			if r.Len() != 0 {
				return pf, fmt.Errorf("%d bytes after STOP", r.Len())
			}
			pf.hasStop = true
			return pf, nil
		}
		frame := make([]byte, n)
		if _, err := io.ReadFull(r, frame); err != nil {
			return pf, fmt.Errorf("torn data frame at offset %d (length %d, %d bytes left)", off, n, len(b)-off-4)
		}
		pf.frames = append(pf.frames, frame)
	}
}

// readFileStrict reads path with parseStrict and fails the test on error.
func readFileStrict(t testing.TB, path string, allowNoStop bool) parsedFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := parseStrict(b, allowNoStop)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pf
}

// readFileFramestream reads path with golang-framestream's Reader, which
// must end with io.EOF (at STOP or at the end of the file), never with a
// torn frame.
func readFileFramestream(t testing.TB, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := framestream.NewReader(f, &framestream.ReaderOptions{ContentTypes: [][]byte{[]byte(ContentType)}})
	if err != nil {
		t.Fatalf("framestream.NewReader %s: %v", path, err)
	}
	var out [][]byte
	buf := make([]byte, DefaultMaxFrameSize)
	for {
		n, err := r.ReadFrame(buf)
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("framestream ReadFrame %s after %d frames: %v", path, len(out), err)
		}
		out = append(out, bytes.Clone(buf[:n]))
	}
}

// ---------------------------------------------------------------- fake clock

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 27, 12, 34, 56, 0, time.UTC)}
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// ---------------------------------------------------------------- polling

// waitFor polls cond until it holds or the (generous) deadline passes. It
// is used only where the event happens in another process or goroutine that
// offers no signal (a collector process starting, a kernel noticing a dead
// peer); it asserts no latency.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ---------------------------------------------------------------- fstrm_capture

type capture struct {
	cmd  *exec.Cmd
	out  string
	log  *bytes.Buffer
	done chan struct{}
	err  error
}

// startCapture runs fstrm_capture writing to out; extra are its listen
// arguments (-u SOCK or -a ADDR -p PORT). The process is killed by PID at
// cleanup if it is still running.
func startCapture(t *testing.T, out string, extra ...string) *capture {
	t.Helper()
	requireTool(t, "fstrm_capture")
	args := append([]string{"-t", ContentType, "-w", out}, extra...)
	c := &capture{out: out, log: new(bytes.Buffer), done: make(chan struct{})}
	c.cmd = exec.Command("fstrm_capture", args...)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("starting fstrm_capture: %v", err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

// stop signals the capture and waits for it to exit.
func (c *capture) stop(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signalling fstrm_capture: %v", err)
	}
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("fstrm_capture did not exit after %v; log:\n%s", sig, c.log)
	}
}

// freeTCPPort returns a loopback port that was free a moment ago.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}

// readLine reads one line from r (used with a child's stdout).
func readLine(r io.Reader) (string, error) {
	s, err := bufio.NewReader(r).ReadString('\n')
	return strings.TrimSpace(s), err
}

// frameWriter mirrors tap.FrameWriter (tap imports this package, so it
// cannot be imported here); both writers must keep satisfying it.
type frameWriter interface {
	WriteFrame(p []byte) error
	Flush() error
	Close() error
}

var (
	_ frameWriter = (*FileWriter)(nil)
	_ frameWriter = (*SocketWriter)(nil)
)
