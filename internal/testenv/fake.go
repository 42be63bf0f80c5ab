package testenv

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// Handler scripts a FakeUpstream. It is called once per datagram, in
// arrival order, from the fake's single reader goroutine (so it must not
// call t.Fatal). query is a private copy of the datagram; from is its
// source. reply sends b from the fake's own address back to from;
// replyFrom sends b to from out of another socket bound to the fake's IP
// and the given port (0: any free port). Both stay usable after the handler
// returns (to answer a held query later) until the test ends; send errors
// are reported as test errors at cleanup.
type Handler func(query []byte, from netip.AddrPort, reply func(b []byte), replyFrom func(port int, b []byte))

// Datagram is one datagram the fake received.
type Datagram struct {
	Data []byte
	From netip.AddrPort
}

// Fake is a scriptable in-process UDP DNS server.
type Fake struct {
	Addr netip.AddrPort

	conn    *net.UDPConn
	mu      sync.Mutex
	handler Handler
	got     []Datagram
	errs    []error
	changed chan struct{} // closed and replaced when got grows
	done    chan struct{} // closed when the reader exits
}

// FakeUpstream starts a scriptable UDP DNS server on addr ("127.0.0.1:0"
// for any port; network is "udp", "udp4" or "udp6"). Every datagram it
// receives is recorded byte for byte, after h has run for it, so once
// WaitReceived returns n datagrams every reply h sent for them has been
// sent. A nil h never answers. The socket is closed in t.Cleanup.
func FakeUpstream(t testing.TB, network, addr string, h Handler) *Fake {
	t.Helper()
	ua, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		t.Fatalf("testenv: FakeUpstream: %v", err)
	}
	if ua.IP == nil || !(ua.IP.IsLoopback()) {
		t.Fatalf("testenv: FakeUpstream: %s is not a loopback address", addr)
	}
	conn, err := net.ListenUDP(network, ua)
	if err != nil {
		t.Fatalf("testenv: FakeUpstream: %v", err)
	}
	f := &Fake{
		Addr:    conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		conn:    conn,
		handler: h,
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	f.Addr = netip.AddrPortFrom(f.Addr.Addr().Unmap(), f.Addr.Port())
	go f.read()
	t.Cleanup(func() {
		_ = conn.Close()
		<-f.done
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, err := range f.errs {
			t.Errorf("testenv: fake upstream %s: %v", f.Addr, err)
		}
	})
	return f
}

// SetHandler replaces the handler for datagrams read from now on.
func (f *Fake) SetHandler(h Handler) {
	f.mu.Lock()
	f.handler = h
	f.mu.Unlock()
}

func (f *Fake) read() {
	defer close(f.done)
	buf := make([]byte, 65536)
	for {
		n, from, err := f.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			f.addErr(fmt.Errorf("read: %w", err))
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		data := append([]byte(nil), buf[:n]...)
		f.mu.Lock()
		h := f.handler
		f.mu.Unlock()
		if h != nil {
			h(append([]byte(nil), data...), from, f.replier(from), f.replierFrom(from))
		}
		f.mu.Lock()
		f.got = append(f.got, Datagram{Data: data, From: from})
		close(f.changed)
		f.changed = make(chan struct{})
		f.mu.Unlock()
	}
}

func (f *Fake) addErr(err error) {
	f.mu.Lock()
	f.errs = append(f.errs, err)
	f.mu.Unlock()
}

func (f *Fake) replier(to netip.AddrPort) func([]byte) {
	return func(b []byte) {
		if _, err := f.conn.WriteToUDPAddrPort(b, to); err != nil && !errors.Is(err, net.ErrClosed) {
			f.addErr(fmt.Errorf("reply to %s: %w", to, err))
		}
	}
}

func (f *Fake) replierFrom(to netip.AddrPort) func(int, []byte) {
	return func(port int, b []byte) {
		src := &net.UDPAddr{IP: f.Addr.Addr().AsSlice(), Port: port}
		c, err := net.ListenUDP("udp", src)
		if err != nil {
			f.addErr(fmt.Errorf("replyFrom port %d: %w", port, err))
			return
		}
		defer c.Close()
		if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
			f.addErr(fmt.Errorf("replyFrom %s to %s: %w", c.LocalAddr(), to, err))
		}
	}
}

// Received returns a copy of every datagram received so far, in order.
func (f *Fake) Received() []Datagram {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Datagram(nil), f.got...)
}

// WaitReceived waits until at least n datagrams have been received (and
// handled), or fails the test after timeout. It returns all received so far.
func (f *Fake) WaitReceived(t testing.TB, n int, timeout time.Duration) []Datagram {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		got, changed := len(f.got), f.changed
		f.mu.Unlock()
		if got >= n {
			return f.Received()
		}
		select {
		case <-changed:
		case <-f.done:
			t.Fatalf("testenv: fake upstream %s closed with %d of %d datagrams", f.Addr, got, n)
		case <-deadline.C:
			t.Fatalf("testenv: fake upstream %s got %d datagrams within %v, want %d", f.Addr, got, timeout, n)
		}
	}
}

// Reply builds an answer to a raw query: a copy of the query with QR=1 and
// the given rcode, followed by extra bytes (appended verbatim; callers
// adjust counts themselves when they append records). The question is kept,
// so tapproxy's RFC 5452 question check passes.
func Reply(query []byte, rcode int) []byte {
	b := append([]byte(nil), query...)
	if len(b) >= 4 {
		b[2] |= 0x80
		b[3] = b[3]&0xF0 | byte(rcode&0xF)
	}
	return b
}

// HeaderOnlyReply builds a 12-byte error answer to a raw query: the query's
// ID, opcode and RD, QR=1, the given rcode and all counts zero; what servers
// send for a query they cannot parse (FORMERR, RFC 1035 §4.1.1).
func HeaderOnlyReply(query []byte, rcode int) []byte {
	b := make([]byte, 12)
	if len(query) >= 3 {
		b[0], b[1] = query[0], query[1]
		b[2] = 0x80 | query[2]&0x79 // QR, opcode, RD
	}
	b[3] = byte(rcode & 0xF)
	return b
}
