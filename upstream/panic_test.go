package upstream

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/listener"
)

// lockedBuf is a log destination safe for several goroutines.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// echoUpstream answers every datagram with itself, QR set, until the
// connection is closed.
func echoUpstream(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n >= 12 {
				buf[2] |= 0x80
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return c
}

// TestWorkerRecoversPanics injects panics while queries are taken in and
// while upstream answers are classified: each is recovered per packet,
// counted in exactly one fate (dropped_panic, resp_panic; the query whose
// answer was lost times out), no slot leaks, mu is not left held, and the
// worker goes on serving.
func TestWorkerRecoversPanics(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up := echoUpstream(t)
	client, err := listener.ListenUDP(ctx, netip.MustParseAddrPort("127.0.0.1:0"), listener.Options{PktInfo: true})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var logBuf lockedBuf
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	upAddr := up.LocalAddr().(*net.UDPAddr).AddrPort()
	// A high failure threshold: the lost answers must not mark the only
	// upstream down while the test runs.
	pool, err := NewPool([]Spec{{Addr: upAddr, Weight: 1}}, FirstAvailable, HealthConfig{FailThreshold: 1 << 30}, log)
	if err != nil {
		t.Fatal(err)
	}
	uw, err := NewWorker(ctx, Config{Upstreams: []netip.AddrPort{upAddr}, Pool: pool,
		Timeout: 300 * time.Millisecond, MaxInflight: 64, Log: log}, client)
	if err != nil {
		t.Fatal(err)
	}
	defer uw.Close()
	// Hostile names trip the injected faults, as a parser bug would.
	uw.faultQuery = func(data []byte) {
		if bytes.Contains(data, []byte("panicq")) {
			panic("injected query fault")
		}
	}
	uw.faultResp = func(data []byte) {
		if bytes.Contains(data, []byte("panicr")) {
			panic("injected response fault")
		}
	}
	upCtx, upCancel := context.WithCancel(context.Background())
	uw.Start(upCtx)
	lw := listener.NewWorker(client, listener.WorkerConfig{Log: log}, uw)
	lwDone := make(chan error, 1)
	go func() { lwDone <- lw.Run(ctx) }()

	cl, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(client.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const rounds = 200 // more than MaxInflight: a leaked slot would show
	var wantQ, wantR, wantOK int
	buf := make([]byte, 512)
	for i := 0; i <= rounds; i++ {
		name := "ok.example."
		switch i % 4 {
		case 1:
			name, wantQ = "panicq.example.", wantQ+1
		case 3:
			name, wantR = "panicr.example.", wantR+1
		case 0: // also the last one: its answer shows every query was read
			wantOK++
		default:
			wantOK++
		}
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Id = uint16(i)
		if _, err := cl.Write(pack(t, m)); err != nil {
			t.Fatal(err)
		}
		if name != "ok.example." {
			continue
		}
		// A safety net against a hang, not a timing assertion.
		_ = cl.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := cl.Read(buf)
		if err != nil {
			t.Fatalf("query %d: no answer: %v", i, err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:n]); err != nil || r.Id != uint16(i) || r.Question[0].Name != name {
			t.Fatalf("query %d: bad answer %v (err %v)", i, r, err)
		}
	}
	cancel()
	if err := <-lwDone; err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	uw.Drain(dctx)
	dcancel()
	upCancel()
	uw.Wait()

	st := uw.Stats()
	if got := st.DroppedPanic.Load(); got != uint64(wantQ) {
		t.Errorf("dropped_panic = %d, want %d", got, wantQ)
	}
	if got := st.RespPanic.Load(); got != uint64(wantR) {
		t.Errorf("resp_panic = %d, want %d", got, wantR)
	}
	if got := st.TimedOut.Load(); got != uint64(wantR) {
		t.Errorf("timed_out = %d, want %d (the queries whose answers panicked)", got, wantR)
	}
	if got := st.Answered.Load(); got != uint64(wantOK) {
		t.Errorf("answered = %d, want %d", got, wantOK)
	}
	handled := lw.Stats().Handled.Load()
	if sum := st.DroppedFull.Load() + st.SendFailed.Load() + st.Forwarded.Load() + st.ServfailAllDown.Load() +
		st.LoopDetected.Load() + st.DroppedPanic.Load(); sum != handled {
		t.Errorf("handled %d != sum of query fates %d", handled, sum)
	}
	if got := st.Answered.Load() + st.TimedOut.Load() + st.ReplyFailed.Load(); got != st.Forwarded.Load() {
		t.Errorf("forwarded %d != answered+timed_out+reply_failed %d", st.Forwarded.Load(), got)
	}
	if sum := st.RespMatched.Load() + st.RespShort.Load() + st.RespNotResponse.Load() + st.RespWrongSource.Load() +
		st.RespUnknownID.Load() + st.RespLate.Load() + st.RespQuestionMismatch.Load() + st.RespPanic.Load(); sum != st.RespReceived.Load() {
		t.Errorf("resp_received %d != sum of response fates %d", st.RespReceived.Load(), sum)
	}
	// InFlight takes mu: it would hang here had a recovery left it held.
	if n := uw.InFlight(); n != 0 {
		t.Errorf("in flight after drain: %d", n)
	}
	if n := len(uw.tab.free); n != len(uw.tab.slots) {
		t.Errorf("free slots %d of %d: a slot leaked", n, len(uw.tab.slots))
	}
	for _, u := range uw.cfg.Pool.Upstreams() {
		if n := u.InFlight.Load(); n != 0 {
			t.Errorf("upstream %s in flight %d", u.Addr, n)
		}
	}
	out := logBuf.String()
	for _, want := range []string{"where=upstream.udp.query", "where=upstream.udp.response", "panic_test.go"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}
