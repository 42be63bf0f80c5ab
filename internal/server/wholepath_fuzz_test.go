package server

// The whole path under fuzzing (issue 9 item 2): fuzzed bytes → tapproxy →
// a reflecting upstream → the client, over UDP (from an allowed and from a
// refused client address) and over TCP, with dnstap going through the real
// encoder, Logger and Frame Streams socket writer to a unix-socket collector
// that decodes with golang-framestream and golang-dnstap. One proxy per fuzz
// process (not per input); one query outstanding at a time, so fuzz inputs
// may repeat IDs freely.
//
//	go test ./internal/server -run '^$' -fuzz FuzzWholePath -fuzztime 60s
//
// The rules asserted per input are the documented ones:
//   - UDP datagrams under 12 bytes: dropped_short; QR=1: dropped_qr (both
//     before the ACL, listener/worker.go admit); nothing goes upstream,
//     nothing is answered or logged.
//   - UDP from a client the ACL refuses: refused_acl; a REFUSED reply with
//     the query's header and (when it parses and fits 512 bytes) its
//     question only; CLIENT_QUERY and CLIENT_RESPONSE logged; nothing
//     upstream.
//   - Anything else is forwarded: the upstream receives the input with only
//     bytes 0-1 (the ID) changed, the client gets the upstream's bytes with
//     its own ID restored, and dnstap carries CLIENT_QUERY (the input),
//     FORWARDER_QUERY (what the upstream received), FORWARDER_RESPONSE (what
//     the upstream sent) and CLIENT_RESPONSE (what the client received),
//     all with the same, next sequence number. A query whose question does
//     not parse is counted malformed and flagged, nothing else changes.
//   - UDP payloads above 65507 bytes (the IPv4 maximum) cannot be sent: the
//     client's kernel refuses them (EMSGSIZE) and tapproxy sees nothing.
//     Every datagram that can arrive fits tapproxy's 65536-byte receive
//     buffers (listener.MaxDatagram), so tapproxy never truncates one.
//   - TCP: a length prefix under 12 closes the connection (short_length);
//     QR=1 is dropped (tcp_dropped_qr) on a connection that stays open;
//     messages above 65535 bytes cannot be framed (skipped); zone-transfer
//     queries are skipped (a reflected AXFR/IXFR query that opens with an
//     SOA never ends and would cost the timeout; TestTCPZoneTransfer covers
//     transfers); the rest as for UDP.
//
// After every input, every counter other than the expected fates is
// unchanged, the accounting invariants hold, and the Logger has written
// every record it produced.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	framestream "github.com/farsightsec/golang-framestream"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/proto"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/listener"
	"github.com/tapproxy/tapproxy/tap"
	"github.com/tapproxy/tapproxy/tap/fstrm"
	"github.com/tapproxy/tapproxy/upstream"
)

// Fuzz modes (the second fuzz argument, taken modulo wpModes).
const (
	wpUDP        = iota // UDP from 127.0.0.1, which the ACL allows
	wpUDPRefused        // UDP from 127.0.0.2, which the ACL refuses
	wpTCP               // TCP from 127.0.0.1 on a kept-open connection
	wpModes
)

// wpMaxUDP is the largest UDP payload over IPv4 (65535 - 20 - 8).
const wpMaxUDP = 65507

func FuzzWholePath(f *testing.F) {
	for _, s := range wpSeeds(f) {
		for mode := range uint8(wpModes) {
			f.Add(s, mode)
		}
	}
	h := newWPHarness(f, true)
	f.Fuzz(func(t *testing.T, msg []byte, mode uint8) {
		h.check(t, msg, mode%wpModes)
	})
}

// wpSeeds are the seed inputs, each run in every mode.
func wpSeeds(tb testing.TB) [][]byte {
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	q := func(name string, t uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, t)
		m.Id = 0x1234
		return m
	}
	hdr := func(id, flags, qd, an, ns, ar uint16) []byte {
		b := make([]byte, 12)
		for i, v := range []uint16{id, flags, qd, an, ns, ar} {
			binary.BigEndian.PutUint16(b[2*i:], v)
		}
		return b
	}
	var seeds [][]byte

	// A normal recursive query as a stub resolver sends it: one question,
	// RD set.
	seeds = append(seeds, pack(q("www.example.com.", dns.TypeA)))

	// EDNS(0) (RFC 6891): an OPT record with DO set and a client cookie
	// (RFC 7873) in the additional section.
	m := q("example.org.", dns.TypeAAAA)
	m.SetEdns0(1232, true)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	seeds = append(seeds, pack(m))

	// A compression loop: the question name is a pointer to itself
	// (offset 12). The question does not parse (pointers must point
	// backwards), so the query is forwarded as malformed and paired on ID
	// and addresses alone.
	seeds = append(seeds, append(hdr(0xbeef, 0x0100, 1, 0, 0, 0), 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01))

	// QDCOUNT 0 with a cookie-only OPT record (RFC 7873 §5.4 allows a
	// query without a question): malformed for tapproxy, forwarded.
	m = new(dns.Msg)
	m.Id = 7
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "1112131415161718"})
	seeds = append(seeds, pack(m))

	// QDCOUNT 2: two questions. Parsed as malformed (QDCOUNT must be 1),
	// forwarded verbatim.
	m = q("a.example.", dns.TypeA)
	m.Question = append(m.Question, dns.Question{Name: "b.example.", Qtype: dns.TypeMX, Qclass: dns.ClassINET})
	seeds = append(seeds, pack(m))

	// A 12-byte header only, claiming one question that is not there.
	seeds = append(seeds, hdr(0x0102, 0x0100, 1, 0, 0, 0))

	// Trailing garbage after a complete question: forwarded untouched both
	// ways, the question still parses.
	seeds = append(seeds, append(pack(q("trailing.example.", dns.TypeTXT)), 0xde, 0xad, 0xbe, 0xef, 0x00))

	// A 4096-byte query: EDNS padding (RFC 7830) to exactly 4096 bytes,
	// above the 512 bytes an in-flight slot holds inline.
	m = q("big.example.", dns.TypeA)
	m.SetEdns0(4096, false)
	base := len(pack(m)) + 4 // the padding option's code and length
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_PADDING{Padding: make([]byte, 4096-base)})
	seeds = append(seeds, pack(m))

	// A zone-transfer query: over UDP an ordinary query (forwarded), over
	// TCP skipped (see the file comment).
	seeds = append(seeds, pack(q("example.", dns.TypeAXFR)))

	// 11 bytes, one short of a header: dropped_short over UDP, a
	// short_length close over TCP.
	seeds = append(seeds, hdr(0x4444, 0x0100, 1, 0, 0, 0)[:11])

	// Nothing at all: an empty datagram, a zero length prefix.
	seeds = append(seeds, []byte{})

	// A response (QR=1) sent to the server port: dropped_qr, never
	// forwarded or answered (no reflection).
	r := q("www.example.com.", dns.TypeA)
	r.Response = true
	seeds = append(seeds, pack(r))

	// The largest UDP payload over IPv4, 65507 bytes (a query with
	// trailing zeros): forwarded whole both ways, logged whole.
	seeds = append(seeds, append(pack(q("max.example.", dns.TypeA)), make([]byte, wpMaxUDP-len(pack(q("max.example.", dns.TypeA))))...))

	// One byte more: over UDP the client's own kernel refuses to send it
	// (EMSGSIZE), so tapproxy sees nothing; over TCP it is forwarded.
	seeds = append(seeds, append(pack(q("over.example.", dns.TypeA)), make([]byte, wpMaxUDP+1-len(pack(q("over.example.", dns.TypeA))))...))
	return seeds
}

// wpBound bounds each wait of one input. While fuzzing it stays under the
// fuzzer's 10 s limit per input, so that a lost answer is reported as one
// (with the counters) rather than as a hung worker; seed and corpus runs
// (go test, make unit) use waitBound.
func wpBound() time.Duration {
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return 4 * time.Second
	}
	return waitBound
}

// wpSeen is one message a reflecting upstream received.
type wpSeen struct {
	msg  []byte
	from netip.AddrPort
}

// wpHarness is one in-process proxy with its reflecting upstream (UDP and
// TCP on the same port), dnstap collector and clients, shared by every
// input of a fuzz process.
type wpHarness struct {
	verify bool
	srv    *Server
	logger *tap.Logger
	sw     *fstrm.SocketWriter
	upAddr netip.AddrPort

	// Filled only when verify is set.
	udpSeen, tcpSeen chan wpSeen
	recs             chan *dnstap.Dnstap
	collErr          chan error

	cl, rc *net.UDPConn // allowed and refused UDP clients
	tc     *net.TCPConn // nil until dialled, and after the server closed it
	in     []byte       // reply buffer
	timer  *time.Timer  // bounds each wait for a dnstap record
	prev   map[string]uint64
	bound  time.Duration // bounds every wait of one input (wpBound)
	seq    uint64        // last sequence number logged; 0: none yet
	dirty  bool          // the last input failed: resynchronise first
}

func newWPHarness(tb testing.TB, verify bool) *wpHarness {
	tb.Helper()
	h := &wpHarness{verify: verify, in: make([]byte, 65536+2), timer: time.NewTimer(time.Hour), bound: wpBound()}
	h.timer.Stop()
	if verify {
		h.udpSeen, h.tcpSeen = make(chan wpSeen, 64), make(chan wpSeen, 64)
		h.recs, h.collErr = make(chan *dnstap.Dnstap, 4096), make(chan error, 16)
	}
	h.startUpstream(tb)
	sock := h.startCollector(tb)

	var err error
	h.sw, err = fstrm.NewSocketWriter(fstrm.SocketOptions{Network: "unix", Address: sock,
		BackoffMin: time.Millisecond, BackoffMax: 10 * time.Millisecond})
	if err != nil {
		tb.Fatal(err)
	}
	enc := tap.NewEncoder(tap.EncoderOptions{Identity: []byte("wholepath"), Version: []byte("fuzz"),
		Types: tap.TypesAll, Zones: annotate.NewZoneCache(0)})
	// A queue of 8 entries has an urgent length of 1, so the writer does
	// not linger; a 1 ns flush interval flushes after every transaction:
	// each input's records reach the collector at once.
	h.logger = tap.NewLogger(tap.LoggerOptions{QueueEntries: 8, FlushInterval: time.Nanosecond}, enc, h.sw, nil)
	h.logger.Start()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitBound)
		defer cancel()
		_ = h.logger.Shutdown(ctx)
	})
	deadline := time.Now().Add(waitBound)
	for h.sw.Stats().Connected == 0 {
		if time.Now().After(deadline) {
			tb.Fatalf("dnstap socket writer did not connect to the collector: %+v", h.sw.Stats())
		}
		time.Sleep(time.Millisecond)
	}

	acl, err := listener.ParseACL([]string{"127.0.0.1/32"})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Upstreams: []netip.AddrPort{h.upAddr},
		Workers: 1, ACL: acl, ACLAction: listener.ACLRefuse, Sink: h.logger,
		// Timeouts far above any round trip: a reflected answer always
		// comes, so a timeout would be a failure, not a fate under test.
		Upstream: upstream.Config{Timeout: waitBound, SocketsPerUpstream: 1},
		TCP: TCPConfig{Enable: true,
			Client:   listener.TCPConfig{IdleTimeout: time.Hour, MaxLifetime: 24 * time.Hour, MaxQueries: 1 << 30},
			Upstream: upstream.TCPConfig{PoolSize: 1, IdleTimeout: time.Hour}},
		DrainTimeout: 5 * time.Second,
	}
	h.srv, err = New(ctx, cfg)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.srv.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitBound):
		}
	})

	srvAddr := net.UDPAddrFromAddrPort(h.srv.Addrs()[0])
	if h.cl, err = net.DialUDP("udp4", nil, srvAddr); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.cl.Close() })
	if h.rc, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}, srvAddr); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.rc.Close() })
	tb.Cleanup(func() {
		if h.tc != nil {
			h.tc.Close()
		}
	})
	h.prev = h.counters()
	return h
}

// startUpstream starts the reflecting upstream: UDP and TCP on one port.
// It answers every message with its own bytes and QR set, and (verify)
// reports each message it received.
func (h *wpHarness) startUpstream(tb testing.TB) {
	var uc *net.UDPConn
	var ln *net.TCPListener
	for try := 0; ; try++ {
		var err error
		if uc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
			tb.Fatal(err)
		}
		port := uc.LocalAddr().(*net.UDPAddr).Port
		if ln, err = net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}); err == nil {
			break
		}
		uc.Close()
		if try == 20 {
			tb.Fatalf("no port free for both UDP and TCP: %v", err)
		}
	}
	h.upAddr = uc.LocalAddr().(*net.UDPAddr).AddrPort()
	udpDone := make(chan struct{})
	go func() {
		defer close(udpDone)
		buf := make([]byte, 65536)
		for {
			n, from, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if h.verify {
				h.udpSeen <- wpSeen{msg: append([]byte(nil), buf[:n]...), from: from}
			}
			if n > 2 {
				buf[2] |= 0x80
			}
			_, _ = uc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	tcpDone := make(chan struct{})
	var connsMu sync.Mutex
	var conns []*net.TCPConn
	var connWG sync.WaitGroup
	go func() {
		defer close(tcpDone)
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
			connWG.Add(1)
			go func() {
				defer connWG.Done()
				defer c.Close()
				buf := make([]byte, 2+65535)
				for {
					if _, err := io.ReadFull(c, buf[:2]); err != nil {
						return
					}
					n := int(binary.BigEndian.Uint16(buf))
					if _, err := io.ReadFull(c, buf[2:2+n]); err != nil {
						return
					}
					if h.verify {
						h.tcpSeen <- wpSeen{msg: append([]byte(nil), buf[2:2+n]...), from: c.RemoteAddr().(*net.TCPAddr).AddrPort()}
					}
					if n > 2 {
						buf[4] |= 0x80
					}
					if _, err := c.Write(buf[:2+n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	tb.Cleanup(func() {
		uc.Close()
		ln.Close()
		<-udpDone
		<-tcpDone
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		connWG.Wait()
	})
}

// startCollector listens on a unix socket for the dnstap writer. With
// verify it decodes every frame with golang-framestream (bidirectional
// handshake, FINISH on STOP) and golang-dnstap; otherwise it completes the
// handshake and discards frames without allocating, answering STOP.
func (h *wpHarness) startCollector(tb testing.TB) string {
	dir, err := os.MkdirTemp("", "wp")
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(dir, "dnstap.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			h.collect(c)
			c.Close()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		os.RemoveAll(dir)
	})
	return path
}

func (h *wpHarness) collect(c *net.UnixConn) {
	r, err := framestream.NewReader(c, &framestream.ReaderOptions{
		ContentTypes: [][]byte{[]byte(fstrm.ContentType)}, Bidirectional: true, Timeout: waitBound})
	if err != nil {
		h.report(fmt.Errorf("collector handshake: %w", err))
		return
	}
	if !h.verify {
		wpDiscardFrames(c)
		return
	}
	buf := make([]byte, framestream.DEFAULT_MAX_PAYLOAD_SIZE)
	for {
		n, err := r.ReadFrame(buf)
		if err != nil {
			if !errors.Is(err, framestream.EOF) && !errors.Is(err, io.EOF) {
				h.report(fmt.Errorf("collector: %w", err))
			}
			return
		}
		d := new(dnstap.Dnstap)
		if err := proto.Unmarshal(buf[:n], d); err != nil {
			h.report(fmt.Errorf("collector: frame is no dnstap.Dnstap: %w", err))
			continue
		}
		h.recs <- d
	}
}

func (h *wpHarness) report(err error) {
	if h.verify {
		select {
		case h.collErr <- err:
		default:
		}
	}
}

// wpDiscardFrames reads Frame Streams frames after the handshake into a
// fixed buffer and answers STOP with FINISH; it allocates nothing, so it
// does not disturb allocation counts. The framestream Reader's buffer may
// hold the first data bytes already; frames are discarded either way.
func wpDiscardFrames(c *net.UnixConn) {
	var hdr [4]byte
	buf := make([]byte, 1<<20)
	finish := []byte{0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 5} // escape, length 4, FINISH
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 { // control frame: length, then type
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			n = binary.BigEndian.Uint32(hdr[:])
			if n > uint32(len(buf)) || n < 4 {
				return
			}
			if _, err := io.ReadFull(c, buf[:n]); err != nil {
				return
			}
			if binary.BigEndian.Uint32(buf) == 3 { // STOP
				_, _ = c.Write(finish)
				return
			}
			continue
		}
		if n > uint32(len(buf)) {
			return
		}
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			return
		}
	}
}

// counters flattens the server's counters by their documented names.
func (h *wpHarness) counters() map[string]uint64 {
	a := h.srv.Counters().Attrs()
	m := make(map[string]uint64, len(a)/2)
	for i := 0; i+1 < len(a); i += 2 {
		m[a[i].(string)], _ = a[i+1].(uint64)
	}
	return m
}

// wpVolatile are counters that change for reasons other than the input:
// connection bookkeeping (the harness redials, upstream connections are
// dialled on demand) and momentary in-flight gauges.
func wpVolatile(k string) bool {
	switch k {
	case "in_flight", "tcp_in_flight", "tcp_unsent", "tcp_open", "tcp_accepted", "tcp_closed_eof",
		"tcp_no_timestamp", "tcp_inflight_waits", "tcp_queued_replies":
		return true
	}
	return strings.HasPrefix(k, "tcp_up_")
}

// deltaErr compares the counter changes since h.prev with want (missing
// keys: 0), skipping volatile ones; nil when they match.
func (h *wpHarness) deltaErr(now map[string]uint64, want map[string]uint64) error {
	var bad []string
	for k, v := range now {
		if wpVolatile(k) {
			continue
		}
		if d := v - h.prev[k]; d != want[k] {
			bad = append(bad, fmt.Sprintf("%s +%d (want +%d)", k, d, want[k]))
		}
	}
	for k := range want {
		if _, ok := now[k]; !ok {
			bad = append(bad, "no counter "+k)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	return errors.New(strings.Join(bad, ", "))
}

// waitCounters polls until the counters moved exactly as want and the
// accounting invariants hold, then makes them the new baseline.
func (h *wpHarness) waitCounters(t *testing.T, want map[string]uint64) {
	t.Helper()
	deadline := time.Now().Add(h.bound)
	for {
		c := h.srv.Counters()
		now := h.counters()
		err := h.deltaErr(now, want)
		if err == nil {
			if err = c.Check(); err == nil {
				h.prev = now
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters after the input: %v\nall counters: %v", err, c.Attrs())
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// resync brings the harness back to a quiet state after a failed input
// (seed runs go on after a failure; fuzzing stops at the first).
func (h *wpHarness) resync() {
	if h.tc != nil {
		h.tc.Close()
		h.tc = nil
	}
	time.Sleep(100 * time.Millisecond)
	for _, c := range []*net.UDPConn{h.cl, h.rc} {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		for {
			if _, err := c.Read(h.in); err != nil {
				break
			}
		}
	}
	for {
		select {
		case <-h.udpSeen:
		case <-h.tcpSeen:
		case <-h.recs:
		case <-h.collErr:
		default:
			h.seq = 0
			h.prev = h.counters()
			return
		}
	}
}

// quiet checks that nothing happened since the last input finished.
func (h *wpHarness) quiet(t *testing.T) {
	t.Helper()
	select {
	case s := <-h.udpSeen:
		t.Fatalf("the upstream received a datagram after the previous input was done: % x", wpShort(s.msg))
	case s := <-h.tcpSeen:
		t.Fatalf("the upstream received a TCP message after the previous input was done: % x", wpShort(s.msg))
	case r := <-h.recs:
		t.Fatalf("a dnstap record arrived after the previous input was done: %v", r.GetMessage().GetType())
	case err := <-h.collErr:
		t.Fatal(err)
	default:
	}
	if err := h.deltaErr(h.counters(), nil); err != nil {
		t.Fatalf("counters changed after the previous input was done: %v", err)
	}
	if st := h.logger.Stats(); st.Dropped() != 0 || st.Written != st.Produced {
		t.Fatalf("dnstap logger: %+v", st)
	}
}

func wpShort(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// check runs one input through the proxy and asserts its fate.
func (h *wpHarness) check(t *testing.T, msg []byte, mode uint8) {
	if h.dirty {
		h.resync()
	}
	h.dirty = true
	h.quiet(t)
	switch mode {
	case wpUDP, wpUDPRefused:
		h.checkUDP(t, msg, mode == wpUDPRefused)
	case wpTCP:
		h.checkTCP(t, msg)
	}
	h.waitLogger(t)
	h.dirty = false
}

// waitLogger waits until the Logger has counted every record it produced
// as written, and fails on any drop. The wait is needed: the socket writer
// may send a frame to the collector (its buffer filled) inside WriteFrame,
// before the Logger counts it written.
func (h *wpHarness) waitLogger(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(h.bound)
	for {
		st := h.logger.Stats()
		if st.Dropped() != 0 {
			t.Fatalf("dnstap logger dropped records: %+v", st)
		}
		if st.Written == st.Produced {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dnstap logger: records produced but not written: %+v", st)
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// wpQOK mirrors the forwarders' rule: a query's question "parses" when
// dnswire.ParseQuestion accepts it (QDCOUNT 1 included).
func wpQOK(msg []byte) (dnswire.Question, bool) {
	var q dnswire.Question
	return q, dnswire.ParseQuestion(msg, &q) == nil
}

func wpB2U(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func (h *wpHarness) checkUDP(t *testing.T, msg []byte, refused bool) {
	c := h.cl
	if refused {
		c = h.rc
	}
	if len(msg) > wpMaxUDP {
		_, err := c.Write(msg)
		if !errors.Is(err, syscall.EMSGSIZE) {
			t.Fatalf("sending a %d-byte datagram: %v, want EMSGSIZE", len(msg), err)
		}
		h.waitCounters(t, nil)
		return
	}
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("client write: %v", err)
	}
	switch {
	case len(msg) < dnswire.HeaderLen:
		h.waitCounters(t, map[string]uint64{"received": 1, "dropped_short": 1})
		return
	case msg[2]&0x80 != 0:
		h.waitCounters(t, map[string]uint64{"received": 1, "dropped_qr": 1})
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(h.bound))
	n, err := c.Read(h.in)
	if err != nil {
		t.Fatalf("no answer to a %d-byte query (refused=%v): %v\ncounters: %v", len(msg), refused, err, h.srv.Counters().Attrs())
	}
	reply := h.in[:n]
	client := c.LocalAddr().(*net.UDPAddr).AddrPort()
	local := h.srv.Addrs()[0]
	_, qok := wpQOK(msg)
	if refused {
		wpCheckRefused(t, msg, reply)
		recs := h.records(t, 2)
		h.checkRecord(t, recs[0], dnstap.Message_CLIENT_QUERY, dnstap.SocketProtocol_UDP, client, local, msg, nil)
		h.checkRecord(t, recs[1], dnstap.Message_CLIENT_RESPONSE, dnstap.SocketProtocol_UDP, client, local, nil, reply)
		h.checkAnnotation(t, recs, false, true, false)
		h.waitCounters(t, map[string]uint64{"received": 1, "refused_acl": 1})
		return
	}
	var seen wpSeen
	select {
	case seen = <-h.udpSeen:
	default:
		t.Fatal("the client got an answer but the upstream saw no query")
	}
	h.checkForwarded(t, msg, seen, reply)
	recs := h.records(t, 4)
	up := reflectAnswer(seen.msg)
	h.checkRecord(t, recs[0], dnstap.Message_CLIENT_QUERY, dnstap.SocketProtocol_UDP, client, local, msg, nil)
	h.checkRecord(t, recs[1], dnstap.Message_FORWARDER_QUERY, dnstap.SocketProtocol_UDP, seen.from, h.upAddr, seen.msg, nil)
	h.checkRecord(t, recs[2], dnstap.Message_FORWARDER_RESPONSE, dnstap.SocketProtocol_UDP, seen.from, h.upAddr, nil, up)
	h.checkRecord(t, recs[3], dnstap.Message_CLIENT_RESPONSE, dnstap.SocketProtocol_UDP, client, local, nil, reply)
	h.checkAnnotation(t, recs, !qok, false, reply[2]&0x02 != 0)
	h.waitCounters(t, map[string]uint64{"received": 1, "forwarded": 1, "answered": 1,
		"resp_received": 1, "resp_matched": 1, "malformed": wpB2U(!qok)})
}

// checkForwarded: the upstream got the input with only the ID changed, and
// the client got the upstream's answer with only the ID restored.
func (h *wpHarness) checkForwarded(t *testing.T, msg []byte, seen wpSeen, reply []byte) {
	t.Helper()
	if len(seen.msg) != len(msg) || !bytes.Equal(seen.msg[2:], msg[2:]) {
		t.Fatalf("upstream received other bytes than the client sent (beyond the ID):\n got % x\nwant % x", wpShort(seen.msg), wpShort(msg))
	}
	want := reflectAnswer(msg)
	if !bytes.Equal(reply, want) {
		t.Fatalf("client got other bytes than the upstream's answer with the client's ID:\n got % x\nwant % x", wpShort(reply), wpShort(want))
	}
}

// wpCheckRefused checks a REFUSED reply against the documented rule
// (listener.ACLRefuse): the query's header with QR set, opcode and RD kept,
// AA/TC/RA/Z/AD/CD cleared, rcode 5, ANCOUNT=NSCOUNT=ARCOUNT=0, and the
// question section copied (QDCOUNT 1) only when the question parses and
// fits the 512-byte reply buffer; never longer than the query.
func wpCheckRefused(t *testing.T, q, r []byte) {
	t.Helper()
	n := dnswire.HeaderLen
	if qq, ok := wpQOK(q); ok && qq.End <= 512 {
		n = qq.End
	}
	want := append([]byte(nil), q[:n]...)
	flags := binary.BigEndian.Uint16(q[2:])&(0xF<<11|1<<8) | 0x8000 | dnswire.RcodeRefused
	binary.BigEndian.PutUint16(want[2:], flags)
	binary.BigEndian.PutUint16(want[4:], uint16(wpB2U(n > dnswire.HeaderLen)))
	clear(want[6:12])
	if !bytes.Equal(r, want) {
		t.Fatalf("REFUSED reply:\n got % x\nwant % x", wpShort(r), wpShort(want))
	}
}

func (h *wpHarness) checkTCP(t *testing.T, msg []byte) {
	if len(msg) > 65535 {
		return // cannot be framed: not an input tapproxy can receive
	}
	if q, ok := wpQOK(msg); ok && (q.Type == dns.TypeAXFR || q.Type == dns.TypeIXFR) && len(msg) >= dnswire.HeaderLen && msg[2]&0x80 == 0 {
		return // zone transfers: see the file comment
	}
	if h.tc == nil {
		c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(h.srv.TCPAddrs()[0]))
		if err != nil {
			t.Fatalf("dialling the proxy over TCP: %v", err)
		}
		h.tc = c
	}
	c := h.tc
	_ = c.SetDeadline(time.Now().Add(h.bound))
	frame := append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
	if _, err := c.Write(frame); err != nil {
		t.Fatalf("TCP client write: %v", err)
	}
	switch {
	case len(msg) < dnswire.HeaderLen:
		// The server closes the connection at the length prefix.
		for {
			if _, err := c.Read(h.in); err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("waiting for the close after a %d-byte length prefix: %v", len(msg), err)
				}
				break
			}
			t.Fatalf("the server answered a %d-byte TCP message", len(msg))
		}
		c.Close()
		h.tc = nil
		h.waitCounters(t, map[string]uint64{"tcp_closed_short_length": 1})
		return
	case msg[2]&0x80 != 0:
		h.waitCounters(t, map[string]uint64{"tcp_received": 1, "tcp_dropped_qr": 1})
		return
	}
	if _, err := io.ReadFull(c, h.in[:2]); err != nil {
		t.Fatalf("no TCP answer to a %d-byte query: %v\ncounters: %v", len(msg), err, h.srv.Counters().Attrs())
	}
	n := int(binary.BigEndian.Uint16(h.in))
	if _, err := io.ReadFull(c, h.in[:n]); err != nil {
		t.Fatalf("reading a %d-byte TCP answer: %v", n, err)
	}
	reply := h.in[:n]
	var seen wpSeen
	select {
	case seen = <-h.tcpSeen:
	default:
		t.Fatal("the client got an answer but the upstream saw no query")
	}
	h.checkForwarded(t, msg, seen, reply)
	client := c.LocalAddr().(*net.TCPAddr).AddrPort()
	local := h.srv.TCPAddrs()[0]
	_, qok := wpQOK(msg)
	recs := h.records(t, 4)
	h.checkRecord(t, recs[0], dnstap.Message_CLIENT_QUERY, dnstap.SocketProtocol_TCP, client, local, msg, nil)
	h.checkRecord(t, recs[1], dnstap.Message_FORWARDER_QUERY, dnstap.SocketProtocol_TCP, seen.from, h.upAddr, seen.msg, nil)
	h.checkRecord(t, recs[2], dnstap.Message_FORWARDER_RESPONSE, dnstap.SocketProtocol_TCP, seen.from, h.upAddr, nil, reflectAnswer(seen.msg))
	h.checkRecord(t, recs[3], dnstap.Message_CLIENT_RESPONSE, dnstap.SocketProtocol_TCP, client, local, nil, reply)
	h.checkAnnotation(t, recs, !qok, false, reply[2]&0x02 != 0)
	h.waitCounters(t, map[string]uint64{"tcp_received": 1, "tcp_handled": 1, "tcp_forwarded": 1,
		"tcp_answered": 1, "tcp_resp_received": 1, "tcp_resp_matched": 1, "tcp_malformed": wpB2U(!qok)})
}

// records waits for n dnstap records from the collector.
func (h *wpHarness) records(t *testing.T, n int) []*dnstap.Dnstap {
	t.Helper()
	out := make([]*dnstap.Dnstap, 0, n)
	h.timer.Reset(h.bound)
	defer h.timer.Stop()
	for len(out) < n {
		select {
		case r := <-h.recs:
			out = append(out, r)
		case err := <-h.collErr:
			t.Fatal(err)
		case <-h.timer.C:
			t.Fatalf("got %d of %d dnstap records; logger %+v, socket %+v", len(out), n, h.logger.Stats(), h.sw.Stats())
		}
	}
	return out
}

// checkRecord checks one record's type, transport, endpoints and messages
// (a nil want leaves that message out of the check but requires it absent
// for the record types that carry only the other one).
func (h *wpHarness) checkRecord(t *testing.T, d *dnstap.Dnstap, typ dnstap.Message_Type, proto dnstap.SocketProtocol,
	qa, ra netip.AddrPort, query, response []byte) {
	t.Helper()
	m := d.GetMessage()
	if d.GetType() != dnstap.Dnstap_MESSAGE || m == nil {
		t.Fatalf("record is not a MESSAGE: %v", d)
	}
	if m.GetType() != typ {
		t.Fatalf("record type %v, want %v", m.GetType(), typ)
	}
	if m.GetSocketProtocol() != proto || m.GetSocketFamily() != dnstap.SocketFamily_INET {
		t.Fatalf("%v: socket %v/%v, want %v/INET", typ, m.GetSocketProtocol(), m.GetSocketFamily(), proto)
	}
	gotQ := netip.AddrPortFrom(wpAddr(m.GetQueryAddress()), uint16(m.GetQueryPort()))
	gotR := netip.AddrPortFrom(wpAddr(m.GetResponseAddress()), uint16(m.GetResponsePort()))
	if gotQ != qa || gotR != ra {
		t.Fatalf("%v: addresses %v → %v, want %v → %v", typ, gotQ, gotR, qa, ra)
	}
	if !bytes.Equal(m.GetQueryMessage(), query) {
		t.Fatalf("%v: query_message not verbatim:\n got % x\nwant % x", typ, wpShort(m.GetQueryMessage()), wpShort(query))
	}
	if !bytes.Equal(m.GetResponseMessage(), response) {
		t.Fatalf("%v: response_message not verbatim:\n got % x\nwant % x", typ, wpShort(m.GetResponseMessage()), wpShort(response))
	}
	if m.GetQueryTimeSec() == 0 {
		t.Fatalf("%v: no query_time", typ)
	}
	if response != nil && m.GetResponseTimeSec() == 0 {
		t.Fatalf("%v: no response_time", typ)
	}
}

func wpAddr(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}

// checkAnnotation: every record of the transaction carries the same
// annotation with the next sequence number and the expected flags.
func (h *wpHarness) checkAnnotation(t *testing.T, recs []*dnstap.Dnstap, malformed, refused, truncated bool) {
	t.Helper()
	var seq uint64
	for i, d := range recs {
		a, err := annotate.Parse(d.GetExtra())
		if err != nil {
			t.Fatalf("record %d: extra %q: %v", i, d.GetExtra(), err)
		}
		if i == 0 {
			seq = a.Seq
		} else if a.Seq != seq {
			t.Fatalf("records of one transaction carry seq %d and %d", seq, a.Seq)
		}
		if a.Malformed != malformed || a.Refused != refused || a.Truncated != truncated || a.Timeout || a.Servfail {
			t.Fatalf("record %d: extra %q, want malformed=%v refused=%v truncated=%v", i, d.GetExtra(), malformed, refused, truncated)
		}
	}
	if h.seq != 0 && seq != h.seq+1 {
		t.Fatalf("sequence number %d after %d: a gap or a duplicate", seq, h.seq)
	}
	h.seq = seq
}

// TestWholePathAllocs: in steady state a query allocates nothing anywhere
// in the process (tapproxy, the upstream and the discarding collector
// together) on the paths a mixed load takes: UDP and TCP answered, with
// dnstap through the real encoder (zone cache on), Logger and unix-socket
// writer; malformed queries; ACL refusals; runts and QR=1 drops. Queries
// longer than an in-flight slot's 512 inline bytes are the documented
// exception (one copy each, upstream/table.go slotQueryCap) and are not
// measured here. testing.AllocsPerRun floors the mean, so this proves less
// than one allocation per query (sync.Pool drops a quarter of its puts
// under the race detector; the count is then still 0).
func TestWholePathAllocs(t *testing.T) {
	h := newWPHarness(t, false)
	normal := dnsQuery(t, "allocs.example.", dns.TypeA, 1)
	loop := []byte{0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}
	runt := normal[:11]
	resp := reflectAnswer(normal)
	tc, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(h.srv.TCPAddrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(waitBound))
	lw := h.srv.pairs[0].lw.Stats()

	var failed error
	fail := func(err error) {
		if failed == nil {
			failed = err
		}
	}
	// written waits until the Logger has written want more records.
	written := func(want uint64) func() {
		base := h.logger.Stats().Written
		return func() {
			deadline := time.Now().Add(waitBound)
			for h.logger.Stats().Written < base+want {
				if time.Now().After(deadline) {
					fail(errors.New("dnstap records not written"))
					return
				}
				time.Sleep(10 * time.Microsecond) // parks: lets the scheduler poll the network (GOMAXPROCS is 1 here)
			}
			base += want
		}
	}
	udp := func(c *net.UDPConn, msg []byte, records uint64) func() {
		wait := written(records)
		in := make([]byte, 65536)
		return func() {
			if _, err := c.Write(msg); err != nil {
				fail(err)
				return
			}
			if _, err := c.Read(in); err != nil {
				fail(err)
				return
			}
			wait()
		}
	}
	dropped := func(msg []byte, ctr interface{ Load() uint64 }) func() {
		return func() {
			base := ctr.Load()
			if _, err := h.cl.Write(msg); err != nil {
				fail(err)
				return
			}
			deadline := time.Now().Add(waitBound)
			for ctr.Load() == base {
				if time.Now().After(deadline) {
					fail(errors.New("drop not counted"))
					return
				}
				time.Sleep(10 * time.Microsecond)
			}
		}
	}
	tcp := func(msg []byte) func() {
		wait := written(4)
		frame := append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
		in := make([]byte, len(frame))
		return func() {
			if _, err := tc.Write(frame); err != nil {
				fail(err)
				return
			}
			if _, err := io.ReadFull(tc, in); err != nil {
				fail(err)
				return
			}
			wait()
		}
	}
	_ = h.cl.SetReadDeadline(time.Now().Add(waitBound))
	_ = h.rc.SetReadDeadline(time.Now().Add(waitBound))
	for _, tc := range []struct {
		name string
		run  func()
	}{
		{"udp answered", udp(h.cl, normal, 4)},
		{"udp malformed (compression loop)", udp(h.cl, loop, 4)},
		{"udp refused by ACL", udp(h.rc, normal, 2)},
		{"udp runt dropped", dropped(runt, &lw.DroppedShort)},
		{"udp QR=1 dropped", dropped(resp, &lw.DroppedQR)},
		{"tcp answered", tcp(normal)},
		{"tcp malformed (compression loop)", tcp(loop)},
	} {
		for range 200 { // warm pools, buffers, connections and the zone cache
			tc.run()
		}
		allocs := testing.AllocsPerRun(300, tc.run)
		if failed != nil {
			t.Fatalf("%s: %v", tc.name, failed)
		}
		t.Logf("%s: %.2f allocations per query", tc.name, allocs)
		if allocs != 0 {
			t.Errorf("%s: %.2f allocations per query, want 0", tc.name, allocs)
		}
	}
}
