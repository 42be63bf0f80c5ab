package listener

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// signalSource wraps a StampReader and reports, after each read, how many
// bytes it returned, so a test can act between two reads without sleeping.
type signalSource struct {
	r    *StampReader
	read chan int
}

func (s *signalSource) readStamped(p []byte, _ bool) (int, int64, error) {
	n, st, err := s.r.Read(p)
	s.read <- n
	return n, st, err
}

// tcpPair returns a connected client and the accepted server side, with
// SO_TIMESTAMPNS on the server socket (from ListenTCP, and set again as on
// accept).
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, warns, err := ListenTCP(context.Background(), netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) > 0 {
		t.Fatalf("socket options refused: %v", warns)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := s.SyscallConn()
	if !setupAccepted(rc, 0) {
		t.Fatal("SO_TIMESTAMPNS refused on the accepted socket")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// TestStampIsCompletingSegment pins down what QueryKernel means for a
// message that spans segments: the kernel time of the segment that
// completed it, not of its first byte. The first part is sent and read;
// only then is a wall-clock mark taken and the rest sent, so the completing
// segment provably arrived after the mark and the first one before it.
func TestStampIsCompletingSegment(t *testing.T) {
	client, server := tcpPair(t)
	r, err := NewStampReader(server)
	if err != nil {
		t.Fatal(err)
	}
	src := &signalSource{r: r, read: make(chan int, 64)}
	msg := bytes.Repeat([]byte{0xab}, 100)
	wire := frame(msg)

	before := time.Now().UnixNano()
	if _, err := client.Write(wire[:30]); err != nil {
		t.Fatal(err)
	}
	type result struct {
		msg   []byte
		stamp int64
		err   error
	}
	done := make(chan result, 1)
	go func() {
		var fr frameReader
		m, buf, st, err := fr.next(src)
		res := result{stamp: st, err: err}
		if err == nil {
			res.msg = append([]byte(nil), m...)
			putMsgBuf(buf)
		}
		done <- res
	}()
	// Wait until the reader has consumed all 30 bytes of the first segment
	// (2 of length, 28 of body).
	for got := 0; got < 30; {
		select {
		case n := <-src.read:
			got += n
		case <-time.After(10 * time.Second):
			t.Fatal("reader did not consume the first segment")
		}
	}
	mark := time.Now().UnixNano()
	if _, err := client.Write(wire[30:]); err != nil {
		t.Fatal(err)
	}
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("message not completed")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	if !bytes.Equal(res.msg, msg) {
		t.Fatal("message bytes differ")
	}
	if res.stamp == 0 {
		t.Fatal("no kernel timestamp on a TCP read")
	}
	if res.stamp < mark {
		t.Fatalf("stamp %d is before the mark %d: it is the first segment's (sent at ≥%d), not the completing one's", res.stamp, mark, before)
	}
}

// TestStampReaderEOF: a clean close reads as io.EOF; ReadFull inside data
// reads as io.ErrUnexpectedEOF.
func TestStampReaderEOF(t *testing.T) {
	client, server := tcpPair(t)
	r, err := NewStampReader(server)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	client.Close()
	buf := make([]byte, 8)
	if _, err := r.ReadFull(buf); err == nil || err.Error() != "unexpected EOF" {
		t.Fatalf("ReadFull past the end: %v, want unexpected EOF", err)
	}
}

func TestDirectWriter(t *testing.T) {
	client, server := tcpPair(t)
	rc, _ := server.SyscallConn()
	var w directWriter
	w.init(rc)
	msg := bytes.Repeat([]byte{7}, 300)
	n, err := w.write(msg)
	if err != nil || n != 302 {
		t.Fatalf("write: n=%d err=%v", n, err)
	}
	got := make([]byte, 302)
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, frame(msg)) {
		t.Fatal("framed bytes differ")
	}
}

func TestIPKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{"192.0.2.1", "192.0.2.1"},
		{"::ffff:192.0.2.1", "192.0.2.1"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"},
	}
	for _, tc := range tests {
		if got := ipKey(netip.MustParseAddr(tc.in)); got != netip.MustParseAddr(tc.want) {
			t.Errorf("ipKey(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
