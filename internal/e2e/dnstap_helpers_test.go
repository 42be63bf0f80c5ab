package e2e

// Helpers of the dnstap end-to-end tests (dnstap_test.go,
// dnstap_faults_test.go). Everything is prefixed "dt" so that it cannot
// collide with the other e2e helpers of the package.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
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

	dnstap "github.com/dnstap/golang-dnstap"
	framestream "github.com/farsightsec/golang-framestream"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/proto"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// dtContentType is the Frame Streams content type of dnstap.
const dtContentType = "protobuf:dnstap.Dnstap"

// Bounds of the dnstap tests' waits. They bound, they do not assert speed.
const (
	dtReplyWait   = 5 * time.Second       // one DNS answer
	dtSignalWait  = 15 * time.Second      // a log line, a connection, a frame
	dtProcessWait = 10 * time.Second      // a helper process to start or exit
	dtPollEvery   = 10 * time.Millisecond // dtWaitLog's poll of tapproxy's output
)

// dtIdentity is the --dnstap-identity every test passes (and checks).
const dtIdentity = "e2e-dnstap"

// dtDroppedKeys are the dnstap_dropped_* final counters: with
// dnstap_written they account for every record produced (tap/doc.go).
var dtDroppedKeys = []string{
	"dnstap_dropped_queue_full", "dnstap_dropped_too_large",
	"dnstap_dropped_write_error", "dnstap_dropped_shutdown", "dnstap_dropped_panic",
}

// dtCheckInvariant checks the dnstap accounting of a final counters line:
// every key present and
//
//	dnstap_produced = dnstap_written + every dnstap_dropped_*.
//
// Every dnstap test calls it on every tapproxy it stops.
func dtCheckInvariant(t testing.TB, c map[string]uint64) {
	t.Helper()
	keys := append([]string{"dnstap_submitted", "dnstap_sampled_out", "dnstap_produced", "dnstap_written", "dnstap_lost_after_write"}, dtDroppedKeys...)
	var missing []string
	for _, k := range keys {
		if _, ok := c[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		t.Errorf("final counters: dnstap keys %v missing\n%s", missing, testenv.FormatCounters(c))
		return
	}
	sum := c["dnstap_written"]
	for _, k := range dtDroppedKeys {
		sum += c[k]
	}
	if c["dnstap_produced"] != sum {
		t.Errorf("final counters: dnstap_produced = %d, but dnstap_written + dnstap_dropped_* = %d\n%s",
			c["dnstap_produced"], sum, testenv.FormatCounters(c))
	}
	// Once tapproxy has exited its dnstap writer is closed: no collector
	// connection can be up (a non-zero value means the counters were read
	// before the writer had finished).
	if v, ok := c["dnstap_connected"]; ok && v != 0 {
		t.Errorf("final counters: dnstap_connected = %d after shutdown, want 0 (counters read before the dnstap writer finished?)\n%s",
			v, testenv.FormatCounters(c))
	}
	if c["dnstap_lost_after_write"] > c["dnstap_written"] {
		t.Errorf("final counters: dnstap_lost_after_write = %d > dnstap_written = %d\n%s",
			c["dnstap_lost_after_write"], c["dnstap_written"], testenv.FormatCounters(c))
	}
}

// dtCheckDelivered checks, for a sink that was healthy at the end, that
// the records found at the destination are exactly the records written
// minus those the writer counted lost after accepting them.
func dtCheckDelivered(t testing.TB, c map[string]uint64, found int) {
	t.Helper()
	want := c["dnstap_written"] - c["dnstap_lost_after_write"]
	if uint64(found) != want {
		t.Errorf("%d records at the destination, want dnstap_written - dnstap_lost_after_write = %d - %d = %d\n%s",
			found, c["dnstap_written"], c["dnstap_lost_after_write"], want, testenv.FormatCounters(c))
	}
}

// dtWantZeroDrops fails for every dnstap_dropped_* (and lost) counter that
// is not zero.
func dtWantZeroDrops(t testing.TB, c map[string]uint64) {
	t.Helper()
	want := map[string]uint64{"dnstap_lost_after_write": 0}
	for _, k := range dtDroppedKeys {
		want[k] = 0
	}
	testenv.WantCounters(t, c, want)
}

// ---------------------------------------------------------------- files

// dtRecord is one decoded dnstap record.
type dtRecord struct {
	File  string
	Index int // data frame index in its file
	Frame []byte
	D     *dnstap.Dnstap
	M     *dnstap.Message
	Seq   uint64 // from the tapproxy/1 annotation in extra
	Flags string // the annotation's flags value ("" when none)
	Extra string
}

func (r *dtRecord) String() string {
	return fmt.Sprintf("%s #%d %v seq=%d", filepath.Base(r.File), r.Index, r.M.GetType(), r.Seq)
}

// dtFrames parses a Frame Streams file strictly with our own framing code:
// START with the dnstap content type, data frames, STOP, nothing after.
// With complete=false (a collector killed by SIGKILL) a missing STOP or a
// torn last frame ends the list instead of being an error.
func dtFrames(b []byte, complete bool) ([][]byte, error) {
	u32 := func(off int) (uint32, bool) {
		if off+4 > len(b) {
			return 0, false
		}
		return binary.BigEndian.Uint32(b[off:]), true
	}
	// START: escape, length, type 2, content-type field.
	esc, ok1 := u32(0)
	clen, ok2 := u32(4)
	if !ok1 || !ok2 || esc != 0 || clen > 512 || 8+int(clen) > len(b) {
		return nil, fmt.Errorf("no START control frame at offset 0 (%d bytes)", len(b))
	}
	body := b[8 : 8+clen]
	if len(body) < 12 || binary.BigEndian.Uint32(body) != framestream.CONTROL_START ||
		binary.BigEndian.Uint32(body[4:]) != framestream.CONTROL_FIELD_CONTENT_TYPE ||
		int(binary.BigEndian.Uint32(body[8:])) != len(body)-12 || string(body[12:]) != dtContentType {
		return nil, fmt.Errorf("START control frame %x is not START with content type %q", body, dtContentType)
	}
	var frames [][]byte
	off := 8 + int(clen)
	for {
		n, ok := u32(off)
		if !ok {
			if complete {
				return frames, fmt.Errorf("no STOP frame: file ends at offset %d after %d data frames (%d stray bytes)", off, len(frames), len(b)-off)
			}
			return frames, nil
		}
		if n == 0 {
			cl, ok := u32(off + 4)
			if !ok || off+8+int(cl) > len(b) || cl < 4 {
				if complete {
					return frames, fmt.Errorf("torn control frame at offset %d", off)
				}
				return frames, nil
			}
			typ := binary.BigEndian.Uint32(b[off+8:])
			if typ != framestream.CONTROL_STOP || cl != 4 {
				return frames, fmt.Errorf("control frame type %d (length %d) at offset %d, want STOP", typ, cl, off)
			}
			if end := off + 12; end != len(b) {
				return frames, fmt.Errorf("%d bytes after the STOP frame at offset %d", len(b)-end, off)
			}
			return frames, nil
		}
		if off+4+int(n) > len(b) {
			if complete {
				return frames, fmt.Errorf("data frame at offset %d declares %d bytes, only %d left", off, n, len(b)-off-4)
			}
			return frames, nil
		}
		frames = append(frames, b[off+4:off+4+int(n)])
		off += 4 + int(n)
	}
}

// dtReadFile decodes a dnstap file: our strict framing, cross-checked with
// golang-framestream's Reader (same frames, byte for byte), every frame a
// golang-dnstap Dnstap MESSAGE with a tapproxy/1 annotation.
func dtReadFile(t testing.TB, path string, complete bool) []*dtRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading dnstap file: %v", err)
	}
	frames, err := dtFrames(b, complete)
	if err != nil {
		t.Fatalf("dnstap file %s: %v", path, err)
	}
	if complete {
		r, err := framestream.NewReader(bytes.NewReader(b), &framestream.ReaderOptions{ContentTypes: [][]byte{[]byte(dtContentType)}})
		if err != nil {
			t.Fatalf("golang-framestream: %s: %v", path, err)
		}
		buf := make([]byte, 1<<20)
		for i := 0; ; i++ {
			n, err := r.ReadFrame(buf)
			if err == framestream.EOF || err == io.EOF {
				if i != len(frames) {
					t.Fatalf("golang-framestream read %d data frames from %s, our framing %d", i, path, len(frames))
				}
				break
			}
			if err != nil {
				t.Fatalf("golang-framestream: %s frame %d: %v", path, i, err)
			}
			if i >= len(frames) || !bytes.Equal(buf[:n], frames[i]) {
				t.Fatalf("golang-framestream frame %d of %s differs from our framing", i, path)
			}
		}
	}
	recs := make([]*dtRecord, 0, len(frames))
	for i, f := range frames {
		recs = append(recs, dtDecode(t, path, i, f))
	}
	return recs
}

// dtDecode decodes one data frame.
func dtDecode(t testing.TB, file string, i int, f []byte) *dtRecord {
	t.Helper()
	d := new(dnstap.Dnstap)
	if err := proto.Unmarshal(f, d); err != nil {
		t.Fatalf("%s frame %d: not a Dnstap protobuf: %v (%x)", file, i, err, f)
	}
	if d.GetType() != dnstap.Dnstap_MESSAGE || d.GetMessage() == nil {
		t.Fatalf("%s frame %d: Dnstap type %v without a Message", file, i, d.GetType())
	}
	r := &dtRecord{File: file, Index: i, Frame: append([]byte(nil), f...), D: d, M: d.GetMessage(), Extra: string(d.GetExtra())}
	seq, flags, err := dtParseAnnotation(r.Extra)
	if err != nil {
		t.Fatalf("%s frame %d: extra %q: %v", file, i, r.Extra, err)
	}
	r.Seq, r.Flags = seq, flags
	return r
}

// dtParseAnnotation reads seq and flags from a "tapproxy/1 seq=N ..."
// annotation (README.md, annotate/annotate.go), independently of the
// annotate package.
func dtParseAnnotation(s string) (seq uint64, flags string, err error) {
	fields := strings.Fields(s)
	if len(fields) < 2 || fields[0] != "tapproxy/1" {
		return 0, "", errors.New("not a tapproxy/1 annotation")
	}
	haveSeq := false
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return 0, "", fmt.Errorf("field %q is not key=value", f)
		}
		switch k {
		case "seq":
			seq, err = strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, "", fmt.Errorf("seq: %v", err)
			}
			haveSeq = true
		case "flags":
			flags = v
		}
	}
	if !haveSeq {
		return 0, "", errors.New("no seq")
	}
	return seq, flags, nil
}

// dtCountTypes counts records per message type name.
func dtCountTypes(recs []*dtRecord) map[string]int {
	m := make(map[string]int)
	for _, r := range recs {
		m[r.M.GetType().String()]++
	}
	return m
}

// dtWantTypes checks the per-type counts exactly (types not in want: 0).
func dtWantTypes(t testing.TB, what string, got map[string]int, want map[string]int) {
	t.Helper()
	for k, v := range got {
		if want[k] != v {
			t.Errorf("%s: %d %s records, want %d (all: %v)", what, v, k, want[k], got)
		}
	}
	for k, v := range want {
		if _, ok := got[k]; !ok && v != 0 {
			t.Errorf("%s: no %s records, want %d (all: %v)", what, k, v, got)
		}
	}
}

// dtAddr returns the query or response address and port of a record.
func dtAddr(m *dnstap.Message, response bool) netip.AddrPort {
	b, p := m.GetQueryAddress(), m.GetQueryPort()
	if response {
		b, p = m.GetResponseAddress(), m.GetResponsePort()
	}
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p))
}

func dtTime(sec uint64, nsec uint32) time.Time {
	if sec == 0 && nsec == 0 {
		return time.Time{}
	}
	return time.Unix(int64(sec), int64(nsec))
}

func dtQueryTime(m *dnstap.Message) time.Time {
	return dtTime(m.GetQueryTimeSec(), m.GetQueryTimeNsec())
}

func dtResponseTime(m *dnstap.Message) time.Time {
	return dtTime(m.GetResponseTimeSec(), m.GetResponseTimeNsec())
}

// dtValidator checks that the corpus validator and the tools it runs are
// there (failing the test, naming the package, when not) and returns the
// script's path.
func dtValidator(t testing.TB) string {
	t.Helper()
	for _, tool := range []string{"fstrm_dump", "dnstap", "dnstap-ldns", "python3"} {
		testenv.RequireTool(t, tool)
	}
	script := filepath.Join(testenv.DnstapCorpus(t), "tools", "validate-dnstap-file.sh")
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("dnstap validator missing: %v", err)
	}
	return script
}

// dtValidate runs the corpus validator (validate-dnstap-file.sh: fstrm_dump,
// the dnstap CLI, dnstap-ldns and dnstap_inspect.py must all accept the file
// and agree) and checks that its last line says PASS. expect is its
// --expect argument ("" for none). It returns the SUMMARY line.
func dtValidate(t testing.TB, file, expect string) string {
	t.Helper()
	return dtRunValidator(t, dtValidator(t), file, expect)
}

// dtRunValidator is dtValidate with the script found already; it only
// reports errors (t.Errorf), so it may run in a goroutine of the test.
func dtRunValidator(t testing.TB, script, file, expect string) string {
	t.Helper()
	args := []string{script, "--quiet"}
	if expect != "" {
		args = append(args, "--expect", expect)
	}
	args = append(args, file)
	out, err := exec.Command("bash", args...).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := lines[len(lines)-1]
	if err != nil || !strings.HasPrefix(last, "SUMMARY status=PASS ") {
		t.Errorf("validate-dnstap-file.sh %s (--expect %q): %v\n%s", file, expect, err, out)
	}
	return last
}

// dtCLICounts runs `dnstap -r FILE -y` (golang-dnstap's CLI) and counts the
// messages per type in its YAML.
func dtCLICounts(t testing.TB, file string) map[string]int {
	t.Helper()
	bin := testenv.RequireTool(t, "dnstap")
	cmd := exec.Command(bin, "-r", file, "-y")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("dnstap -r %s -y: %v\n%s", file, err, stderr.String())
	}
	// The CLI exits 0 on a truncated file or a bad frame; it says so on
	// stderr, which must hold nothing but its "opened input file" line.
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if l != "" && !strings.Contains(l, "opened input file") {
			t.Errorf("dnstap -r %s -y complained: %s", file, l)
		}
	}
	m := make(map[string]int)
	for _, l := range strings.Split(stdout.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "  type: "); ok {
			m[v]++
		}
	}
	return m
}

// ---------------------------------------------------------------- queries

// dtVariedQueries returns n queries (wire format, ID 0: dtRun assigns IDs)
// over the names the test servers answer and names they do not, with RD
// and CD bits, EDNS on or off with several sizes and DO, and mixed case.
// The first ones pin answers that are truncated (TC=1) over UDP.
func dtVariedQueries(t testing.TB, r *rand.Rand, n int) [][]byte {
	t.Helper()
	type q struct {
		name   string
		qtype  uint16
		rd, cd bool
		edns   uint16
		do     bool
	}
	served := testenv.ServedNames()
	list := []q{
		{name: testenv.MediumTXT, qtype: dns.TypeTXT, rd: true},
		{name: testenv.BigTXT, qtype: dns.TypeTXT, rd: true, edns: 1232, do: true},
		{name: "nope." + testenv.Zone, qtype: dns.TypeA, edns: 4096},
	}
	types := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeMX, dns.TypeSOA, dns.TypeNS, dns.TypeSRV}
	for len(list) < n {
		var a q
		switch k := r.IntN(10); {
		case k < 6:
			s := served[r.IntN(len(served))]
			a.name, a.qtype = s.Name, s.Type
		case k < 8:
			a.name, a.qtype = fmt.Sprintf("nx-%d.%s", r.IntN(1_000_000), testenv.Zone), types[r.IntN(len(types))]
		case k < 9:
			a.name, a.qtype = fmt.Sprintf("a%d.b%d.%s", r.IntN(100), r.IntN(100), testenv.Zone), types[r.IntN(len(types))]
		default: // outside the zone: the test Unbound refuses it locally
			a.name, a.qtype = fmt.Sprintf("host%d.example.", r.IntN(1000)), dns.TypeA
		}
		if r.IntN(2) == 0 {
			b := []byte(a.name)
			for i, c := range b {
				if c >= 'a' && c <= 'z' && r.IntN(2) == 0 {
					b[i] = c - 'a' + 'A'
				}
			}
			a.name = string(b)
		}
		a.rd = r.IntN(4) != 0
		a.cd = r.IntN(8) == 0
		a.edns = []uint16{0, 512, 1232, 4096}[r.IntN(4)]
		a.do = a.edns != 0 && r.IntN(2) == 0
		list = append(list, a)
	}
	out := make([][]byte, 0, n)
	for _, a := range list[:n] {
		m := new(dns.Msg)
		m.SetQuestion(a.name, a.qtype)
		m.Id = 0
		m.RecursionDesired = a.rd
		m.CheckingDisabled = a.cd
		if a.edns != 0 {
			m.SetEdns0(a.edns, a.do)
		}
		b, err := m.Pack()
		if err != nil {
			t.Fatalf("packing %s: %v", a.name, err)
		}
		out = append(out, b)
	}
	return out
}

// dtSimpleQueries returns n A queries for distinct names under the test
// zone (for the fake upstream).
func dtSimpleQueries(t testing.TB, prefix string, n int) [][]byte {
	t.Helper()
	out := make([][]byte, n)
	for i := range out {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("%s-%d.%s", prefix, i, testenv.Zone), dns.TypeA)
		b, err := m.Pack()
		if err != nil {
			t.Fatalf("packing: %v", err)
		}
		out[i] = b
	}
	return out
}

// dtAnswerHandler is a FakeUpstream handler answering every query that
// parses with one A record (and anything else with FORMERR).
func dtAnswerHandler(q []byte, _ netip.AddrPort, reply func([]byte), _ func(int, []byte)) {
	m := new(dns.Msg)
	if err := m.Unpack(q); err != nil || len(m.Question) != 1 {
		reply(testenv.HeaderOnlyReply(q, dns.RcodeFormatError))
		return
	}
	r := new(dns.Msg)
	r.SetReply(m)
	r.Answer = append(r.Answer, &dns.A{
		Hdr: dns.RR_Header{Name: m.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
		A:   net.IPv4(192, 0, 2, 53).To4(),
	})
	b, err := r.Pack()
	if err != nil {
		reply(testenv.HeaderOnlyReply(q, dns.RcodeServerFailure))
		return
	}
	reply(b)
}

// ---------------------------------------------------------------- clients

// dtExchange is one query a client sent and what it saw come back.
type dtExchange struct {
	Client netip.AddrPort // the client socket
	Server netip.AddrPort // where the query went (tapproxy's listen address)
	Query  []byte         // the bytes sent
	Reply  []byte         // the bytes received; nil when no answer came
	RTT    time.Duration  // diagnostic only
}

// dtRun sends queries to server from `workers` client sockets on
// 127.0.0.1, each sending its next query when the previous one is answered
// (or timed out after dtReplyWait). Each query gets an ID unique on its
// socket (so the ID and the addresses identify it). With pace > 0 the
// queries are handed out at most one per pace. hook, if not nil, runs in
// the calling goroutine before query i is handed out; when it returns false
// no more queries are sent. Results are in query order; a worker never
// fails the test itself.
func dtRun(t testing.TB, server netip.AddrPort, queries [][]byte, workers int, pace time.Duration, hook func(i int) bool) []dtExchange {
	t.Helper()
	res := make([]dtExchange, len(queries))
	conns := make([]*net.UDPConn, workers)
	for w := range conns {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatalf("client socket: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
		conns[w] = c
	}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w, c := range conns {
		seed := uint64(w)*7919 + uint64(len(queries))
		perm := rand.New(rand.NewPCG(seed, 0xd75)).Perm(1 << 16)
		wg.Go(func() {
			local := c.LocalAddr().(*net.UDPAddr).AddrPort()
			local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
			buf := make([]byte, 65536)
			k := 0
			for i := range jobs {
				q := append([]byte(nil), queries[i]...)
				id := uint16(perm[k%len(perm)])
				k++
				binary.BigEndian.PutUint16(q, id)
				ex := dtExchange{Client: local, Server: server, Query: q}
				start := time.Now()
				if _, err := c.WriteToUDPAddrPort(q, server); err == nil {
					deadline := start.Add(dtReplyWait)
					for {
						_ = c.SetReadDeadline(deadline)
						n, from, err := c.ReadFromUDPAddrPort(buf)
						if err != nil {
							break
						}
						from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
						if from == server && n >= 2 && binary.BigEndian.Uint16(buf) == id {
							ex.Reply = append([]byte(nil), buf[:n]...)
							ex.RTT = time.Since(start)
							break
						}
					}
				}
				res[i] = ex
			}
		})
	}
	// A hook that fails the test (Goexit) still lets the workers end.
	closed := false
	defer func() {
		if !closed {
			close(jobs)
		}
	}()
	var tick *time.Ticker
	if pace > 0 {
		tick = time.NewTicker(pace)
		defer tick.Stop()
	}
	sent := len(queries)
	for i := range queries {
		if hook != nil && !hook(i) {
			sent = i
			break
		}
		if tick != nil {
			<-tick.C
		}
		jobs <- i
	}
	closed = true
	close(jobs)
	wg.Wait()
	return res[:sent]
}

// dtWantAllAnswered fails for each exchange without a reply.
func dtWantAllAnswered(t testing.TB, what string, ex []dtExchange) {
	t.Helper()
	missing := 0
	for _, e := range ex {
		if e.Reply == nil {
			if missing < 5 {
				t.Errorf("%s: no answer from %s to %s query %x", what, e.Server, e.Client, e.Query)
			}
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%s: %d of %d queries unanswered", what, missing, len(ex))
	}
}

// dtLatency returns the p50 and p99 RTT of the answered exchanges, for a
// diagnostic line only (never asserted).
func dtLatency(ex []dtExchange) (p50, p99 time.Duration) {
	var d []time.Duration
	for _, e := range ex {
		if e.Reply != nil {
			d = append(d, e.RTT)
		}
	}
	if len(d) == 0 {
		return 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2], d[len(d)*99/100]
}

// dtKey identifies a client exchange: client address, ID and question.
type dtKey struct {
	client netip.AddrPort
	server netip.AddrPort
	id     uint16
	q      string // lower-cased raw question
}

// dtQuestion returns the raw first question of a DNS message, lower-cased
// (RFC 4343), or "" when it has none that parses.
func dtQuestion(b []byte) string {
	if len(b) < 12 || binary.BigEndian.Uint16(b[4:]) == 0 {
		return ""
	}
	i := 12
	for {
		if i >= len(b) {
			return ""
		}
		l := int(b[i])
		if l == 0 {
			i++
			break
		}
		if l > 63 {
			return ""
		}
		i += 1 + l
	}
	if i+4 > len(b) {
		return ""
	}
	return strings.ToLower(string(b[12 : i+4]))
}

func dtIDOf(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

// ---------------------------------------------------------------- record checks

// dtTxn is one transaction's records, grouped by annotation seq.
type dtTxn struct {
	Seq            uint64
	CQ, CR, FQ, FR *dtRecord
}

// dtGroup groups records by seq, failing on two records of one type in a
// transaction.
func dtGroup(t testing.TB, recs []*dtRecord) map[uint64]*dtTxn {
	t.Helper()
	m := make(map[uint64]*dtTxn)
	for _, r := range recs {
		x := m[r.Seq]
		if x == nil {
			x = &dtTxn{Seq: r.Seq}
			m[r.Seq] = x
		}
		var p **dtRecord
		switch r.M.GetType() {
		case dnstap.Message_CLIENT_QUERY:
			p = &x.CQ
		case dnstap.Message_CLIENT_RESPONSE:
			p = &x.CR
		case dnstap.Message_FORWARDER_QUERY:
			p = &x.FQ
		case dnstap.Message_FORWARDER_RESPONSE:
			p = &x.FR
		default:
			t.Errorf("%v: unexpected message type", r)
			continue
		}
		if *p != nil {
			t.Errorf("seq %d: two %v records (%v and %v): seq must be unique per transaction", r.Seq, r.M.GetType(), *p, r)
			continue
		}
		*p = r
	}
	return m
}

// dtCheckCommon checks what every tapproxy record carries: identity,
// version, extra annotation (parsed at decode), UDP over IPv4 here.
func dtCheckCommon(t testing.TB, recs []*dtRecord) {
	t.Helper()
	bad := 0
	for _, r := range recs {
		var why string
		switch {
		case string(r.D.GetIdentity()) != dtIdentity:
			why = fmt.Sprintf("identity %q, want %q", r.D.GetIdentity(), dtIdentity)
		case !strings.HasPrefix(string(r.D.GetVersion()), "tapproxy "):
			why = fmt.Sprintf("version %q, want \"tapproxy VERSION\"", r.D.GetVersion())
		case r.M.GetSocketFamily() != dnstap.SocketFamily_INET:
			why = fmt.Sprintf("socket family %v, want INET", r.M.GetSocketFamily())
		case r.M.GetSocketProtocol() != dnstap.SocketProtocol_UDP:
			why = fmt.Sprintf("socket protocol %v, want UDP", r.M.GetSocketProtocol())
		case len(r.M.GetQueryAddress()) != 4 || len(r.M.GetResponseAddress()) != 4:
			why = fmt.Sprintf("addresses %x, %x: want 4 bytes each for INET", r.M.GetQueryAddress(), r.M.GetResponseAddress())
		case len(r.M.GetQueryZone()) != 0 && !dtZoneEncloses(r):
			why = fmt.Sprintf("query_zone %x does not enclose the question", r.M.GetQueryZone())
		}
		if why != "" {
			if bad < 5 {
				t.Errorf("%v: %s", r, why)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d records with wrong common fields", bad)
	}
}

// dtCheckClientRecords checks the client leg against what the clients sent
// and saw: for every exchange exactly one CLIENT_QUERY (the query bytes as
// sent, from the client to the listen address) and one CLIENT_RESPONSE (the
// reply bytes as received), paired by seq and, independently, by addresses,
// ID and question (which must give the same pairs); query_time <=
// response_time; the truncated flag iff TC=1. Records of other
// transactions are not allowed (every record belongs to an exchange).
func dtCheckClientRecords(t testing.TB, recs []*dtRecord, ex []dtExchange) map[uint64]*dtTxn {
	t.Helper()
	txns := dtGroup(t, recs)
	byKey := make(map[dtKey]*dtExchange, len(ex))
	for i := range ex {
		e := &ex[i]
		k := dtKey{e.Client, e.Server, dtIDOf(e.Query), dtQuestion(e.Query)}
		if _, dup := byKey[k]; dup {
			t.Fatalf("test bug: two exchanges with key %+v", k)
		}
		byKey[k] = e
	}
	// Independent pairing by addresses + ID + question.
	qByKey := make(map[dtKey]*dtRecord)
	for _, r := range recs {
		if r.M.GetType() != dnstap.Message_CLIENT_QUERY {
			continue
		}
		k := dtKey{dtAddr(r.M, false), dtAddr(r.M, true), dtIDOf(r.M.GetQueryMessage()), dtQuestion(r.M.GetQueryMessage())}
		if o, dup := qByKey[k]; dup {
			t.Errorf("two CLIENT_QUERY records with the same addresses, ID and question: %v and %v", o, r)
		}
		qByKey[k] = r
	}
	matched := make(map[*dtExchange]bool)
	errs := 0
	fail := func(format string, a ...any) {
		if errs < 10 {
			t.Errorf(format, a...)
		}
		errs++
	}
	for _, r := range recs {
		if r.M.GetType() != dnstap.Message_CLIENT_RESPONSE {
			continue
		}
		resp := r.M.GetResponseMessage()
		k := dtKey{dtAddr(r.M, false), dtAddr(r.M, true), dtIDOf(resp), dtQuestion(resp)}
		q := qByKey[k]
		switch {
		case q == nil:
			fail("%v: no CLIENT_QUERY with its addresses, ID and question %+v", r, k)
		case q.Seq != r.Seq:
			fail("%v pairs by addresses/ID/question with %v, but by seq with another record", r, q)
		case len(resp) < 3 || resp[2]&0x80 == 0:
			fail("%v: response_message has QR=0", r)
		}
	}
	for seq, x := range txns {
		if x.CQ == nil {
			fail("seq %d: no CLIENT_QUERY (records: %v %v %v)", seq, x.CR, x.FQ, x.FR)
			continue
		}
		m := x.CQ.M
		k := dtKey{dtAddr(m, false), dtAddr(m, true), dtIDOf(m.GetQueryMessage()), dtQuestion(m.GetQueryMessage())}
		e := byKey[k]
		if e == nil {
			fail("%v: no client sent this query (%+v)", x.CQ, k)
			continue
		}
		if matched[e] {
			fail("%v: the exchange %+v is logged twice", x.CQ, k)
			continue
		}
		matched[e] = true
		if !bytes.Equal(m.GetQueryMessage(), e.Query) {
			fail("%v: query_message %x, the client sent %x", x.CQ, m.GetQueryMessage(), e.Query)
		}
		if len(m.GetResponseMessage()) != 0 || !dtResponseTime(m).IsZero() {
			fail("%v: CLIENT_QUERY carries a response", x.CQ)
		}
		if dtQueryTime(m).IsZero() {
			fail("%v: CLIENT_QUERY without query_time", x.CQ)
		}
		if e.Reply == nil {
			if x.CR != nil {
				fail("%v: logged a response the client never got", x.CR)
			}
			continue
		}
		if x.CR == nil {
			fail("seq %d: the client got an answer but there is no CLIENT_RESPONSE", seq)
			continue
		}
		rm := x.CR.M
		if !bytes.Equal(rm.GetResponseMessage(), e.Reply) {
			fail("%v: response_message %x, the client received %x", x.CR, rm.GetResponseMessage(), e.Reply)
		}
		if dtAddr(rm, false) != e.Client || dtAddr(rm, true) != e.Server {
			fail("%v: addresses %v -> %v, want %v -> %v", x.CR, dtAddr(rm, false), dtAddr(rm, true), e.Client, e.Server)
		}
		qt, rt := dtQueryTime(rm), dtResponseTime(rm)
		if rt.IsZero() || qt.IsZero() {
			fail("%v: CLIENT_RESPONSE without both times (query %v, response %v)", x.CR, qt, rt)
		} else if rt.Before(qt) {
			fail("%v: response_time %v before query_time %v", x.CR, rt, qt)
		}
		if !qt.Equal(dtQueryTime(m)) {
			fail("%v: query_time %v differs from its CLIENT_QUERY's %v", x.CR, qt, dtQueryTime(m))
		}
		tc := len(e.Reply) > 2 && e.Reply[2]&0x02 != 0
		if tr := strings.Contains(","+x.CR.Flags+",", ",truncated,"); tr != tc {
			fail("%v: annotation flags %q, but the reply has TC=%v", x.CR, x.CR.Flags, tc)
		}
		if x.CQ.Extra != x.CR.Extra {
			fail("seq %d: CLIENT_QUERY extra %q differs from CLIENT_RESPONSE extra %q", seq, x.CQ.Extra, x.CR.Extra)
		}
	}
	if n := len(ex) - len(matched); n > 0 {
		fail("%d of %d exchanges have no CLIENT_QUERY record", n, len(ex))
	}
	if errs > 10 {
		t.Errorf("... %d client-record errors in all", errs)
	}
	return txns
}

// dtFindExchanges reports which of ex have their CLIENT_QUERY (bytes,
// client and server address) among recs.
func dtFindExchanges(recs []*dtRecord, ex []dtExchange) (found int, missing []dtExchange) {
	have := make(map[string]bool)
	for _, r := range recs {
		if r.M.GetType() == dnstap.Message_CLIENT_QUERY {
			have[dtAddr(r.M, false).String()+"|"+string(r.M.GetQueryMessage())] = true
		}
	}
	for _, e := range ex {
		if have[e.Client.String()+"|"+string(e.Query)] {
			found++
		} else {
			missing = append(missing, e)
		}
	}
	return found, missing
}

// ---------------------------------------------------------------- upstream relay

// dtDatagram is one datagram a relay saw on tapproxy's side.
type dtDatagram struct {
	Peer netip.AddrPort // tapproxy's upstream socket
	Data []byte
}

// dtRelay is a UDP relay between tapproxy and a real server that records
// the upstream leg as it is on the wire: the queries tapproxy sent (with its
// source port and on-wire ID) and the answers tapproxy got. Each tapproxy
// source socket gets its own socket towards the server, so IDs never clash.
type dtRelay struct {
	Addr   netip.AddrPort
	conn   *net.UDPConn
	target netip.AddrPort

	mu   sync.Mutex
	ups  map[netip.AddrPort]*net.UDPConn
	in   []dtDatagram // from tapproxy
	out  []dtDatagram // to tapproxy
	errs []error
	wg   sync.WaitGroup
}

func dtStartRelay(t testing.TB, target netip.AddrPort) *dtRelay {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	r := &dtRelay{conn: c, target: target, ups: make(map[netip.AddrPort]*net.UDPConn)}
	a := c.LocalAddr().(*net.UDPAddr).AddrPort()
	r.Addr = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	r.wg.Go(r.readClients)
	t.Cleanup(func() {
		_ = c.Close()
		r.mu.Lock()
		for _, u := range r.ups {
			_ = u.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
		for _, err := range r.errs {
			t.Errorf("relay: %v", err)
		}
	})
	return r
}

func (r *dtRelay) fail(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

func (r *dtRelay) readClients() {
	buf := make([]byte, 65536)
	for {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.fail(err)
			}
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		d := append([]byte(nil), buf[:n]...)
		r.mu.Lock()
		r.in = append(r.in, dtDatagram{from, d})
		u := r.ups[from]
		if u == nil {
			u, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(r.target))
			if err != nil {
				r.mu.Unlock()
				r.fail(err)
				continue
			}
			r.ups[from] = u
			r.wg.Go(func() { r.readServer(u, from) })
		}
		r.mu.Unlock()
		if _, err := u.Write(d); err != nil {
			r.fail(err)
		}
	}
}

func (r *dtRelay) readServer(u *net.UDPConn, to netip.AddrPort) {
	buf := make([]byte, 65536)
	for {
		n, err := u.Read(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.fail(err)
			}
			return
		}
		d := append([]byte(nil), buf[:n]...)
		r.mu.Lock()
		r.out = append(r.out, dtDatagram{to, d})
		r.mu.Unlock()
		if _, err := r.conn.WriteToUDPAddrPort(d, to); err != nil && !errors.Is(err, net.ErrClosed) {
			r.fail(err)
		}
	}
}

func (r *dtRelay) seen() (in, out []dtDatagram) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]dtDatagram(nil), r.in...), append([]dtDatagram(nil), r.out...)
}

// ---------------------------------------------------------------- collectors

// dtCollector is an in-process Frame Streams collector on a unix socket or
// TCP port, built on golang-framestream's bidirectional Reader (it answers
// READY with ACCEPT and STOP with FINISH). It records every data frame and
// lets a test wait for a number of frames or connections.
type dtCollector struct {
	ln net.Listener

	mu       sync.Mutex
	frames   [][]byte
	conns    int             // handshakes completed
	finished int             // connections ended by STOP (FINISH sent)
	queries  map[string]bool // CLIENT_QUERY records seen: client address|query bytes
	changed  chan struct{}
	live     map[net.Conn]bool
	wg       sync.WaitGroup
}

func dtListen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	if network == "unix" {
		_ = os.Remove(addr)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("collector listen %s %s: %v", network, addr, err)
	}
	return ln
}

func dtStartCollector(t testing.TB, network, addr string) *dtCollector {
	t.Helper()
	c := &dtCollector{ln: dtListen(t, network, addr), changed: make(chan struct{}), live: make(map[net.Conn]bool), queries: make(map[string]bool)}
	c.wg.Go(c.accept)
	t.Cleanup(c.Close)
	return c
}

// Close stops listening and closes every connection (abruptly, as a dying
// collector would). It is idempotent.
func (c *dtCollector) Close() {
	_ = c.ln.Close()
	c.mu.Lock()
	for nc := range c.live {
		_ = nc.Close()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

func (c *dtCollector) accept() {
	for {
		nc, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		c.live[nc] = true
		c.mu.Unlock()
		c.wg.Go(func() { c.serve(nc) })
	}
}

func (c *dtCollector) bump() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *dtCollector) serve(nc net.Conn) {
	defer func() {
		_ = nc.Close()
		c.mu.Lock()
		delete(c.live, nc)
		c.mu.Unlock()
	}()
	r, err := framestream.NewReader(nc, &framestream.ReaderOptions{
		ContentTypes:  [][]byte{[]byte(dtContentType)},
		Bidirectional: true,
		Timeout:       dtSignalWait,
	})
	if err != nil {
		return
	}
	c.mu.Lock()
	c.conns++
	c.bump()
	c.mu.Unlock()
	buf := make([]byte, 1<<20)
	for {
		n, err := r.ReadFrame(buf)
		if err != nil {
			if err == framestream.EOF {
				c.mu.Lock()
				c.finished++
				c.bump()
				c.mu.Unlock()
			}
			return
		}
		f := append([]byte(nil), buf[:n]...)
		key := ""
		d := new(dnstap.Dnstap)
		if proto.Unmarshal(f, d) == nil && d.GetMessage().GetType() == dnstap.Message_CLIENT_QUERY {
			key = dtAddr(d.GetMessage(), false).String() + "|" + string(d.GetMessage().GetQueryMessage())
		}
		c.mu.Lock()
		c.frames = append(c.frames, f)
		if key != "" {
			c.queries[key] = true
		}
		c.bump()
		c.mu.Unlock()
	}
}

// wait waits until cond (called under the lock) holds, or fails the test.
func (c *dtCollector) wait(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(dtSignalWait)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		ok, ch := cond(), c.changed
		n, conns := len(c.frames), c.conns
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("collector: %s not reached within %v (%d frames, %d connections)", what, dtSignalWait, n, conns)
		}
	}
}

// waitExchanges waits until the collector has the CLIENT_QUERY record of
// every exchange in ex.
func (c *dtCollector) waitExchanges(t testing.TB, what string, ex []dtExchange) {
	t.Helper()
	c.wait(t, what, func() bool {
		for _, e := range ex {
			if !c.queries[e.Client.String()+"|"+string(e.Query)] {
				return false
			}
		}
		return true
	})
}

func (c *dtCollector) records(t testing.TB) []*dtRecord {
	t.Helper()
	c.mu.Lock()
	frames := append([][]byte(nil), c.frames...)
	c.mu.Unlock()
	out := make([]*dtRecord, len(frames))
	for i, f := range frames {
		out[i] = dtDecode(t, "collector", i, f)
	}
	return out
}

func (c *dtCollector) stats() (frames, conns, finished int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.frames), c.conns, c.finished
}

// dtShortDir returns a fresh short directory for unix sockets (sun_path
// holds 108 bytes; t.TempDir() paths of long test names do not fit).
func dtShortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// ---------------------------------------------------------------- processes

// dtProc is a helper process (fstrm_capture) started by a test and stopped
// by PID. Its output can be awaited: every write closes `changed`.
type dtProc struct {
	name    string
	cmd     *exec.Cmd
	mu      sync.Mutex
	out     bytes.Buffer
	changed chan struct{}
	done    chan struct{}
	err     error
}

func (p *dtProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.changed)
	p.changed = make(chan struct{})
	return p.out.Write(b)
}

func (p *dtProc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitOutput waits until the output holds substr at least n times; it fails
// the test if the process exits first or the bound passes.
func (p *dtProc) waitOutput(t testing.TB, substr string, n int, limit time.Duration) {
	t.Helper()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		got, changed := strings.Count(p.out.String(), substr), p.changed
		p.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-p.done:
			if strings.Count(p.Output(), substr) >= n {
				return
			}
			t.Fatalf("%s exited (%v) before logging %q %d times\n%s", p.name, p.err, substr, n, p.Output())
		case <-deadline.C:
			t.Fatalf("%s did not log %q %d times within %v\n%s", p.name, substr, n, limit, p.Output())
		}
	}
}

func dtStartProc(t testing.TB, bin string, args ...string) *dtProc {
	t.Helper()
	p := &dtProc{name: filepath.Base(bin), cmd: exec.Command(bin, args...), changed: make(chan struct{}), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("%s %v output:\n%s", p.name, args, p.Output())
		}
	})
	return p
}

func (p *dtProc) signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// stop sends sig and waits (bounded) for the exit.
func (p *dtProc) stop(t testing.TB, sig syscall.Signal) {
	t.Helper()
	p.signal(sig)
	select {
	case <-p.done:
	case <-time.After(dtProcessWait):
		p.signal(syscall.SIGKILL)
		<-p.done
		t.Fatalf("%s did not exit within %v of %v", p.name, dtProcessWait, sig)
	}
}

// dtStartCapture starts `fstrm_capture -t protobuf:dnstap.Dnstap` with the
// given listen arguments writing to out, and waits until it has opened its
// output file (after its socket).
func dtStartCapture(t testing.TB, out string, listen ...string) *dtProc {
	t.Helper()
	bin := testenv.RequireTool(t, "fstrm_capture")
	// -d x4 makes it log each handshake ("received FSTRM_CONTROL_START"),
	// the signal that a producer is connected.
	args := append([]string{"-t", dtContentType, "-d", "-d", "-d", "-d"}, listen...)
	args = append(args, "-w", out)
	p := dtStartProc(t, bin, args...)
	p.waitOutput(t, "opened output file", 1, dtProcessWait)
	return p
}

// dtCaptureConnected is what fstrm_capture (-d x4) logs once a producer
// has completed the handshake.
const dtCaptureConnected = "received FSTRM_CONTROL_START"

// waitConnected waits until fstrm_capture has completed n handshakes.
func (p *dtProc) waitConnected(t testing.TB, n int) {
	t.Helper()
	p.waitOutput(t, dtCaptureConnected, n, dtSignalWait)
}

// dtWaitLog waits until tapproxy's output holds substr at least n times.
// testenv exports no way to await tapproxy's output, so this polls it
// (bounded); it is the only poll in these tests.
func dtWaitLog(t testing.TB, tp *testenv.Tapproxy, substr string, n int) {
	t.Helper()
	deadline := time.Now().Add(dtSignalWait)
	for strings.Count(tp.Output(), substr) < n {
		if time.Now().After(deadline) {
			t.Fatalf("tapproxy did not log %q %d times within %v\noutput:\n%s", substr, n, dtSignalWait, tp.Output())
		}
		time.Sleep(dtPollEvery)
	}
}

// dtCPUTime returns the user+system CPU time a process has used so far
// (/proc/PID/stat fields 14 and 15, in USER_HZ = 100 ticks per second).
func dtCPUTime(t testing.TB, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("reading CPU time: %v", err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// dtQuietCPU measures the CPU time pid uses during one second in which the
// test sends nothing, and fails if it is more than bound: a writer that
// retries a failing sink in a busy loop burns a whole core.
func dtQuietCPU(t testing.TB, pid int, what string, bound time.Duration) {
	t.Helper()
	before := dtCPUTime(t, pid)
	time.Sleep(time.Second) // the measurement window, not a synchronisation
	used := dtCPUTime(t, pid) - before
	t.Logf("%s: tapproxy used %v of CPU in a quiet second", what, used)
	if used > bound {
		t.Errorf("%s: tapproxy used %v of CPU in one quiet second (bound %v): busy loop?", what, used, bound)
	}
}

// dtListenAddr returns a free loopback listen address for tapproxy (UDP and
// TCP: tapproxy serves both by default).
func dtListenAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(testenv.FreePort(t, "ip4")))
}

// dtStartProxy starts tapproxy with one worker in front of upstream with the
// dnstap flags given.
func dtStartProxy(t testing.TB, upstream netip.AddrPort, dnstapArgs ...string) (*testenv.Tapproxy, netip.AddrPort) {
	t.Helper()
	listen := dtListenAddr(t)
	args := append([]string{"--listen", listen.String(), "--upstream", upstream.String(), "--workers", "2",
		"--dnstap-identity", dtIdentity}, dnstapArgs...)
	return testenv.StartTapproxy(t, args...), listen
}

// dtControl builds a control frame (escape, length, type, optional
// content-type field), for the hostile collectors.
func dtControl(typ uint32, contentType string) []byte {
	body := binary.BigEndian.AppendUint32(nil, typ)
	if contentType != "" {
		body = binary.BigEndian.AppendUint32(body, framestream.CONTROL_FIELD_CONTENT_TYPE)
		body = binary.BigEndian.AppendUint32(body, uint32(len(contentType)))
		body = append(body, contentType...)
	}
	out := binary.BigEndian.AppendUint32(nil, 0)
	out = binary.BigEndian.AppendUint32(out, uint32(len(body)))
	return append(out, body...)
}

// dtReadControl reads one control frame from r (escape, length <= 512,
// body) and returns its type and body.
func dtReadControl(r io.Reader) (uint32, []byte, error) {
	var h [8]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if binary.BigEndian.Uint32(h[:]) != 0 {
		return 0, nil, fmt.Errorf("not a control frame: %x", h)
	}
	n := binary.BigEndian.Uint32(h[4:])
	if n < 4 || n > 512 {
		return 0, nil, fmt.Errorf("control frame length %d", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return binary.BigEndian.Uint32(body), body, nil
}

// dtCounters builds a want map for testenv.WantCounters from key, int
// pairs.
func dtCounters(kv ...any) map[string]uint64 {
	m := make(map[string]uint64)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = uint64(kv[i+1].(int))
	}
	return m
}

// dtZoneEncloses reports whether a record's query_zone (learned from SOA/NS
// owners in earlier answers) is a wire-format name that encloses the
// record's question name.
func dtZoneEncloses(r *dtRecord) bool {
	zone, _, err := dns.UnpackDomainName(r.M.GetQueryZone(), 0)
	if err != nil {
		return false
	}
	msg := r.M.GetQueryMessage()
	if len(msg) == 0 {
		msg = r.M.GetResponseMessage()
	}
	var m dns.Msg
	if m.Unpack(msg) != nil || len(m.Question) == 0 {
		return false
	}
	return dns.IsSubDomain(zone, m.Question[0].Name)
}
