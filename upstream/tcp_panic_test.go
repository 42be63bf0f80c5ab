package upstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/listener"
)

// tcpTestUpstream listens on loopback and runs serve on each accepted
// connection (closing it afterwards) until the test ends.
func tcpTestUpstream(t *testing.T, serve func(c net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// tcpEchoUpstream answers every framed message with itself, QR set.
func tcpEchoUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	return tcpTestUpstream(t, func(c net.Conn) {
		var l [2]byte
		for {
			if _, err := io.ReadFull(c, l[:]); err != nil {
				return
			}
			m := make([]byte, 2+int(binary.BigEndian.Uint16(l[:])))
			copy(m, l[:])
			if _, err := io.ReadFull(c, m[2:]); err != nil {
				return
			}
			if len(m) >= 14 {
				m[4] |= 0x80
			}
			if _, err := c.Write(m); err != nil {
				return
			}
		}
	})
}

// TestTCPForwarderRecoversPanic: a panic while a TCP query is taken in is
// recovered per query; the query counts tcp dropped_panic, its slot is
// freed, and the same client connection keeps being served.
func TestTCPForwarderRecoversPanic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logBuf lockedBuf
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	f, err := NewTCPForwarder(TCPConfig{Upstreams: []netip.AddrPort{tcpEchoUpstream(t)},
		Timeout: 5 * time.Second, MaxInflight: 8, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	f.fault = func(msg []byte) {
		if bytes.Contains(msg, []byte("panicq")) {
			panic("injected tcp fault")
		}
	}
	f.Start()
	srv := listener.NewTCPServer(listener.TCPConfig{Log: log}, f)
	addr, err := srv.Listen(ctx, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(ctx)
	closed := false
	shut := func() {
		if !closed {
			closed = true
			srv.Close()
			f.Close() // waits for the upstream readers
		}
	}
	defer shut()

	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second)) // against a hang only
	const rounds = 41                                   // more than MaxInflight (a leaked slot would show); the last is answered
	wantPanics := 0
	for i := 0; i < rounds; i++ {
		name := "ok.example."
		if i%2 == 1 {
			name = "panicq.example."
			wantPanics++
		}
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Id = uint16(i)
		b := pack(t, m)
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)); err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			continue
		}
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		r := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, r); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		if id := binary.BigEndian.Uint16(r); id != uint16(i) {
			t.Fatalf("query %d: answer with ID %d", i, id)
		}
	}
	// The reader counts and frees a slot after relaying its answer: stop
	// everything first so that the figures are final.
	shut()
	st := f.Stats()
	if got := st.DroppedPanic.Load(); got != uint64(wantPanics) {
		t.Errorf("dropped_panic = %d, want %d", got, wantPanics)
	}
	if got := st.Answered.Load(); got != uint64(rounds-wantPanics) {
		t.Errorf("answered = %d, want %d", got, rounds-wantPanics)
	}
	f.mu.Lock()
	free := len(f.free)
	f.mu.Unlock()
	if free != len(f.slots) {
		t.Errorf("free slots %d of %d: a slot leaked", free, len(f.slots))
	}
	if out := logBuf.String(); !strings.Contains(out, "where=upstream.tcp.query") || !strings.Contains(out, "tcp_panic_test.go") {
		t.Errorf("log lacks the report:\n%s", out)
	}
}
