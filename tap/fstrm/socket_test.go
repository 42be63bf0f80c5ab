package fstrm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// captureTarget describes one fstrm_capture endpoint for the writer.
type captureTarget struct {
	network, address string
	args             []string
}

func unixTarget(t *testing.T) captureTarget {
	sock := filepath.Join(t.TempDir(), "dnstap.sock")
	return captureTarget{"unix", sock, []string{"-u", sock}}
}

func tcpTarget(t *testing.T) captureTarget {
	port := freeTCPPort(t)
	return captureTarget{"tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		[]string{"-a", "127.0.0.1", "-p", strconv.Itoa(port)}}
}

func newTestSocketWriter(t *testing.T, opts SocketOptions) *SocketWriter {
	t.Helper()
	w, err := NewSocketWriter(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// waitConnected waits until n connections are up; Flush adopts them.
func waitConnected(t *testing.T, w *SocketWriter, n int) {
	t.Helper()
	waitFor(t, strconv.Itoa(n)+" collector connections", func() bool { return w.Stats().Connected >= n })
}

// writeSeqs writes frames [from, to) and fails on any error.
func writeSeqs(t *testing.T, w *SocketWriter, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := w.WriteFrame(dnstapFrame(t, i)); err != nil {
			t.Fatalf("WriteFrame %d: %v", i, err)
		}
		if i%10 == 9 {
			if err := w.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
		}
	}
}

// checkCaptured validates the capture's file and checks it holds frames
// [from, to) exactly once.
func checkCaptured(t *testing.T, path string, from, to int) {
	t.Helper()
	if c := validateFile(t, path, false); c != to-from {
		t.Errorf("validator: %d messages, want %d", c, to-from)
	}
	pf := readFileStrict(t, path, false)
	seen := map[int]bool{}
	for _, fr := range pf.frames {
		s := frameSeq(t, fr)
		if s < from || s >= to || seen[s] {
			t.Errorf("unexpected or duplicate frame %d", s)
		}
		seen[s] = true
	}
	if len(seen) != to-from {
		t.Errorf("captured %d distinct frames, want %d", len(seen), to-from)
	}
}

func TestSocketFstrmCapture(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		target func(*testing.T) captureTarget
		conns  int
	}{
		{"unix", unixTarget, 1},
		{"tcp 3 connections", tcpTarget, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := tc.target(t)
			out := filepath.Join(t.TempDir(), "out.fstrm")
			capt := startCapture(t, out, tg.args...)
			w := newTestSocketWriter(t, SocketOptions{Network: tg.network, Address: tg.address, Connections: tc.conns})
			waitConnected(t, w, tc.conns)
			const n = 300
			writeSeqs(t, w, 0, n)
			if err := w.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			st := w.Stats()
			if st.Frames != n || st.FramesLost != 0 || st.Disconnects.Closed != uint64(tc.conns) || st.Connected != 0 {
				t.Errorf("stats %+v", st)
			}
			capt.stop(t, syscall.SIGTERM)
			checkCaptured(t, out, 0, n)
		})
	}
}

// TestSocketCollectorLate starts the writer before the collector: frames are
// refused at once, the writer keeps dialling with backoff, and connects once
// the collector is there.
func TestSocketCollectorLate(t *testing.T) {
	t.Parallel()
	tg := unixTarget(t)
	w := newTestSocketWriter(t, SocketOptions{Network: tg.network, Address: tg.address})
	if err := w.WriteFrame(dnstapFrame(t, 0)); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("no collector: %v, want ErrNotConnected", err)
	}
	waitFor(t, "two failed dials", func() bool { return w.Stats().Handshake.Dial >= 2 })
	out := filepath.Join(t.TempDir(), "out.fstrm")
	capt := startCapture(t, out, tg.args...)
	waitConnected(t, w, 1)
	writeSeqs(t, w, 0, 50)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	capt.stop(t, syscall.SIGTERM)
	checkCaptured(t, out, 0, 50)
}

// TestSocketCollectorKilled kills fstrm_capture with SIGKILL mid-stream and
// starts a new one at the same address: the writer notices, refuses frames
// meanwhile, and comes back.
func TestSocketCollectorKilled(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		target func(*testing.T) captureTarget
	}{{"unix", unixTarget}, {"tcp", tcpTarget}} {
		t.Run(tc.name, func(t *testing.T) {
			tg := tc.target(t)
			dir := t.TempDir()
			first := startCapture(t, filepath.Join(dir, "first.fstrm"), tg.args...)
			w := newTestSocketWriter(t, SocketOptions{Network: tg.network, Address: tg.address})
			waitConnected(t, w, 1)
			writeSeqs(t, w, 0, 100)
			first.stop(t, syscall.SIGKILL)
			waitFor(t, "the writer to notice the dead collector", func() bool { return w.Stats().Connected == 0 })
			if err := w.WriteFrame(dnstapFrame(t, 100)); !errors.Is(err, ErrNotConnected) {
				// Tests of other packages run in parallel and pick free
				// ports too: if something else now listens on this
				// port, the writer may have connected to it. Only then is
				// a nil error acceptable.
				if err != nil || w.Stats().Connected == 0 {
					t.Fatalf("collector dead: %v, want ErrNotConnected", err)
				}
				t.Logf("something else took port %s after the collector died; writer reconnected", tg.address)
			}
			if d := w.Stats().Disconnects; d.PeerClosed != 1 {
				t.Errorf("disconnects %+v, want one PeerClosed", d)
			}
			second := startCapture(t, filepath.Join(dir, "second.fstrm"), tg.args...)
			waitConnected(t, w, 1)
			writeSeqs(t, w, 200, 300)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			second.stop(t, syscall.SIGTERM)
			checkCaptured(t, filepath.Join(dir, "second.fstrm"), 200, 300)
			if st := w.Stats(); st.Connects != 2 {
				t.Errorf("Connects %d, want 2", st.Connects)
			}
		})
	}
}

// TestKillOrder checks what TestSocketCollectorKilled relies on, without
// its timing: once Stats shows a connection gone (Connected down, a
// Disconnects counter up), WriteFrame refuses it. kill used to count first
// and mark the connection dead after closing the socket, and in that gap a
// frame was buffered into the dead connection and WriteFrame returned nil
// (seen once in CI). Each round kills a fresh connection in another
// goroutine while this one, as the writer, watches the counters.
func TestKillOrder(t *testing.T) {
	t.Parallel()
	w := newTestSocketWriter(t, SocketOptions{Network: "unix", Address: filepath.Join(t.TempDir(), "none.sock"), BackoffMin: time.Hour})
	s := w.slots[0]
	deadline := time.Now().Add(60 * time.Second)
	for round := range 300 {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		f0, f1 := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
		nc, err := net.FileConn(f0)
		_ = f0.Close()
		if err != nil {
			t.Fatal(err)
		}
		// No reader runs for this connection: readerDone starts closed,
		// so that Close at cleanup does not wait for one.
		c := &sconn{nc: nc, dead: make(chan struct{}), finished: make(chan struct{}), readerDone: make(chan struct{})}
		close(c.readerDone)
		s.cur = c
		w.connected.Add(1)
		before := w.Stats().Disconnects.PeerClosed
		go w.kill(c, discPeerClosed, io.EOF)
		for i := 0; ; i++ {
			st := w.Stats()
			if st.Connected == 0 || st.Disconnects.PeerClosed != before {
				break
			}
			if i%1024 == 0 && time.Now().After(deadline) {
				t.Fatalf("round %d: kill never counted", round)
			}
			// With one P, let the killer run now rather than at the next
			// preemption (10 ms); with several the spin keeps watching.
			runtime.Gosched()
		}
		if err := w.WriteFrame(dnstapFrame(t, round)); !errors.Is(err, ErrNotConnected) {
			t.Fatalf("round %d: connection counted gone, WriteFrame: %v, want ErrNotConnected", round, err)
		}
		<-c.dead
		_ = f1.Close()
	}
	if st := w.Stats(); st.Disconnects.PeerClosed != 300 || st.Connected != 0 || st.FramesLost != 0 {
		t.Errorf("stats %+v", st)
	}
}

// ---------------------------------------------------------------- fake collectors

// fakeCollector accepts connections and runs behave on each, recording how
// many it accepted.
type fakeCollector struct {
	l        net.Listener
	quit     chan struct{} // closed at cleanup: behaviours that hold a connection return
	mu       sync.Mutex
	accepted int
	conns    []net.Conn
	wg       sync.WaitGroup
}

func startFake(t *testing.T, network string, once bool, behave func(net.Conn, <-chan struct{})) *fakeCollector {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "fake.sock")
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	fc := &fakeCollector{l: l, quit: make(chan struct{})}
	fc.wg.Add(1)
	go func() {
		defer fc.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fc.mu.Lock()
			fc.accepted++
			fc.conns = append(fc.conns, c)
			fc.mu.Unlock()
			fc.wg.Add(1)
			go func() {
				defer fc.wg.Done()
				behave(c, fc.quit)
			}()
			if once {
				_ = l.Close()
				return
			}
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		close(fc.quit)
		fc.mu.Lock()
		for _, c := range fc.conns {
			_ = c.Close()
		}
		fc.mu.Unlock()
		fc.wg.Wait()
	})
	return fc
}

func (fc *fakeCollector) count() int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.accepted
}

// collectorHandshake plays the collector's part: read READY, answer ACCEPT
// with our content type, read START. It reports success.
func collectorHandshake(c net.Conn) bool {
	var buf [controlBufSize]byte
	cf, err := readControl(c, &buf)
	if err != nil || cf.typ != controlReady {
		return false
	}
	if _, err := c.Write(encodeControl(controlAccept, ContentType)); err != nil {
		return false
	}
	cf, err = readControl(c, &buf)
	return err == nil && cf.typ == controlStart
}

func ignoreQuit(f func(net.Conn)) func(net.Conn, <-chan struct{}) {
	return func(c net.Conn, _ <-chan struct{}) { f(c) }
}

func rawControl(typ uint32, fields ...[]byte) []byte {
	body := binary.BigEndian.AppendUint32(nil, typ)
	for _, f := range fields {
		body = append(body, f...)
	}
	out := binary.BigEndian.AppendUint32(nil, 0)
	out = binary.BigEndian.AppendUint32(out, uint32(len(body)))
	return append(out, body...)
}

func ctField(ct string) []byte {
	f := binary.BigEndian.AppendUint32(nil, fieldContentType)
	f = binary.BigEndian.AppendUint32(f, uint32(len(ct)))
	return append(f, ct...)
}

// answerReady reads READY and replies with reply, then waits for the
// writer to hang up.
func answerReady(reply []byte) func(net.Conn) {
	return func(c net.Conn) {
		var buf [controlBufSize]byte
		if _, err := readControl(c, &buf); err != nil {
			return
		}
		_, _ = c.Write(reply)
		_, _ = io.Copy(io.Discard, c)
	}
}

// TestSocketHostileHandshake: each bad collector is rejected, counted under
// its cause, and retried (with backoff) without ever counting as connected.
func TestSocketHostileHandshake(t *testing.T) {
	oversized := binary.BigEndian.AppendUint32(nil, 0)
	oversized = binary.BigEndian.AppendUint32(oversized, 100000)
	oversized = append(oversized, bytes.Repeat([]byte{0xAA}, 600)...)
	for _, tc := range []struct {
		name   string
		behave func(net.Conn)
		count  func(HandshakeFailures) uint64
	}{
		{"silent: no ACCEPT within the deadline", func(c net.Conn) { _, _ = io.Copy(io.Discard, c) },
			func(h HandshakeFailures) uint64 { return h.Timeout }},
		{"START instead of ACCEPT", answerReady(rawControl(controlStart, ctField(ContentType))),
			func(h HandshakeFailures) uint64 { return h.Unexpected }},
		{"ACCEPT with a wrong content type", answerReady(rawControl(controlAccept, ctField("protobuf:dnstap.DnstaX"))),
			func(h HandshakeFailures) uint64 { return h.ContentType }},
		{"ACCEPT with no content type", answerReady(rawControl(controlAccept)),
			func(h HandshakeFailures) uint64 { return h.ContentType }},
		{"oversized control frame", answerReady(oversized),
			func(h HandshakeFailures) uint64 { return h.Oversized }},
		{"garbage instead of a control frame", answerReady([]byte("HTTP/1.1 400 Bad Request\r\n\r\n")),
			func(h HandshakeFailures) uint64 { return h.Malformed }},
		{"ACCEPT with an unknown field", answerReady(rawControl(controlAccept, []byte{0, 0, 0, 9, 0, 0, 0, 0})),
			func(h HandshakeFailures) uint64 { return h.Malformed }},
		{"ACCEPT cut short, then close", func(c net.Conn) {
			var buf [controlBufSize]byte
			if _, err := readControl(c, &buf); err == nil {
				_, _ = c.Write(rawControl(controlAccept, ctField(ContentType))[:10])
			}
			_ = c.Close()
		}, func(h HandshakeFailures) uint64 { return h.Closed }},
		{"close at once", func(c net.Conn) { _ = c.Close() },
			func(h HandshakeFailures) uint64 { return h.Closed }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := startFake(t, "tcp", false, ignoreQuit(tc.behave))
			w := newTestSocketWriter(t, SocketOptions{
				Network: "tcp", Address: fc.l.Addr().String(),
				HandshakeTimeout: 200 * time.Millisecond,
				BackoffMin:       5 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
			})
			waitFor(t, "three rejected handshakes", func() bool { return tc.count(w.Stats().Handshake) >= 3 })
			if err := w.WriteFrame(dnstapFrame(t, 0)); !errors.Is(err, ErrNotConnected) {
				t.Errorf("WriteFrame: %v, want ErrNotConnected", err)
			}
			if err := w.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			st := w.Stats()
			if st.Connects != 0 || st.Connected != 0 {
				t.Errorf("hostile collector counted as connected: %+v", st)
			}
			if fc.count() < 3 {
				t.Errorf("collector saw %d connections, want retries", fc.count())
			}
			var total uint64
			h := st.Handshake
			for _, v := range []uint64{h.Dial, h.Timeout, h.Closed, h.Unexpected, h.ContentType, h.Oversized, h.Malformed} {
				total += v
			}
			// Close may cut one attempt short; every other attempt has
			// exactly one cause.
			if total+1 < st.ConnectAttempts || total > st.ConnectAttempts {
				t.Errorf("%d attempts but %d failures counted: %+v", st.ConnectAttempts, total, h)
			}
		})
	}
}

// TestSocketHostileAfterHandshake: a collector that completes the handshake
// and then misbehaves is dropped with the right reason.
func TestSocketHostileAfterHandshake(t *testing.T) {
	for _, tc := range []struct {
		name   string
		after  func(net.Conn)
		reason func(Disconnects) uint64
	}{
		{"FINISH before STOP", func(c net.Conn) { _, _ = c.Write(rawControl(controlFinish)) },
			func(d Disconnects) uint64 { return d.Protocol }},
		{"garbage", func(c net.Conn) { _, _ = c.Write([]byte("garbage!")) },
			func(d Disconnects) uint64 { return d.Protocol }},
		{"close", func(c net.Conn) { _ = c.Close() },
			func(d Disconnects) uint64 { return d.PeerClosed }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := startFake(t, "unix", true, func(c net.Conn, _ <-chan struct{}) {
				if collectorHandshake(c) {
					tc.after(c)
				}
				_, _ = io.Copy(io.Discard, c)
			})
			w := newTestSocketWriter(t, SocketOptions{Network: "unix", Address: fc.l.Addr().String()})
			waitFor(t, "the disconnect", func() bool { return tc.reason(w.Stats().Disconnects) == 1 })
			if err := w.WriteFrame(dnstapFrame(t, 0)); !errors.Is(err, ErrNotConnected) {
				t.Errorf("WriteFrame: %v, want ErrNotConnected", err)
			}
			if st := w.Stats(); st.Connects != 1 || st.Connected != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestSocketStalledCollector: the collector completes the handshake and never
// reads. WriteFrame must fail with a deadline error (not hang), the
// connection is dropped, and later frames are refused at once.
func TestSocketStalledCollector(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			fc := startFake(t, network, true, func(c net.Conn, quit <-chan struct{}) {
				if collectorHandshake(c) {
					<-quit // stalled: never read again
				}
			})
			w := newTestSocketWriter(t, SocketOptions{
				Network: network, Address: fc.l.Addr().String(),
				WriteTimeout: 300 * time.Millisecond, BufferSize: 16 << 10,
			})
			waitConnected(t, w, 1)
			type result struct {
				accepted int
				err      error
			}
			res := make(chan result, 1)
			go func() {
				payload := bytes.Repeat([]byte{0x42}, 8<<10)
				// Bounded: 64 MiB is far more than any loopback socket buffers.
				for i := range 8192 {
					if err := w.WriteFrame(payload); err != nil {
						res <- result{i, err}
						return
					}
				}
				res <- result{8192, nil}
			}()
			var r result
			select {
			case r = <-res:
			case <-time.After(60 * time.Second):
				t.Fatal("WriteFrame hung on a stalled collector")
			}
			if !errors.Is(r.err, os.ErrDeadlineExceeded) {
				t.Fatalf("after %d frames: %v, want a write deadline error", r.accepted, r.err)
			}
			if err := w.WriteFrame([]byte{1}); !errors.Is(err, ErrNotConnected) {
				t.Errorf("after the stall: %v, want ErrNotConnected", err)
			}
			st := w.Stats()
			if st.Disconnects.WriteTimeout != 1 || st.Connected != 0 {
				t.Errorf("stats %+v", st)
			}
			if st.Frames+st.FramesLost != uint64(r.accepted) {
				t.Errorf("written %d + lost %d != accepted %d", st.Frames, st.FramesLost, r.accepted)
			}
			closed := make(chan error, 1)
			go func() { closed <- w.Close() }()
			select {
			case <-closed:
			case <-time.After(60 * time.Second):
				t.Fatal("Close hung")
			}
		})
	}
}

// TestSocketNoFinish: the collector takes the data but never answers STOP;
// Close gives up after FinishTimeout and says so.
func TestSocketNoFinish(t *testing.T) {
	fc := startFake(t, "unix", true, func(c net.Conn, _ <-chan struct{}) {
		if collectorHandshake(c) {
			_, _ = io.Copy(io.Discard, c)
		}
	})
	w := newTestSocketWriter(t, SocketOptions{Network: "unix", Address: fc.l.Addr().String(), FinishTimeout: 100 * time.Millisecond})
	waitConnected(t, w, 1)
	writeSeqs(t, w, 0, 20)
	if err := w.Close(); err == nil {
		t.Fatal("Close without FINISH returned nil")
	}
	if st := w.Stats(); st.Disconnects.NoFinish != 1 || st.Frames != 20 {
		t.Errorf("stats %+v", st)
	}
}

func TestNextBackoff(t *testing.T) {
	d, maxB := DefaultBackoffMin, DefaultBackoffMax
	var got []time.Duration
	for range 6 {
		got = append(got, d)
		d = nextBackoff(d, maxB)
	}
	want := []time.Duration{50, 100, 200, 400, 500, 500}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("backoff sequence %v", got)
		}
	}
}

func TestSocketOptionsValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts SocketOptions
	}{
		{"udp", SocketOptions{Network: "udp", Address: "127.0.0.1:1"}},
		{"no address", SocketOptions{Network: "unix"}},
		{"too many connections", SocketOptions{Network: "unix", Address: "x", Connections: 65}},
		{"negative timeout", SocketOptions{Network: "unix", Address: "x", WriteTimeout: -1}},
	} {
		if w, err := NewSocketWriter(tc.opts); err == nil {
			_ = w.Close()
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func TestSocketWriteFrameAllocs(t *testing.T) {
	fc := startFake(t, "unix", true, func(c net.Conn, _ <-chan struct{}) {
		if collectorHandshake(c) {
			_, _ = io.Copy(io.Discard, c)
		}
	})
	w := newTestSocketWriter(t, SocketOptions{Network: "unix", Address: fc.l.Addr().String(), FinishTimeout: time.Millisecond})
	waitConnected(t, w, 1)
	fr := dnstapFrame(t, 1)
	allocs := testing.AllocsPerRun(2000, func() {
		if err := w.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("WriteFrame allocates %.1f times per frame", allocs)
	}
}

// TestSocketSlowCollectorWrites: a collector slower than the writer fills
// the socket buffer, so writes must wait for room (counted in WriteWaits)
// and still deliver every byte; and a write long after such a wait, when
// the deadline it set is in the past, must not fail with that deadline.
func TestSocketSlowCollectorWrites(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			// 16 MiB: more than loopback TCP's autotuned buffers hold.
			const frames, size = 2048, 8 << 10
			want := frames*(4+size) + 4 + 1 // the big frames, then one of 1 byte
			got := make(chan int, 1)
			fc := startFake(t, network, true, func(c net.Conn, _ <-chan struct{}) {
				if !collectorHandshake(c) {
					got <- -1
					return
				}
				// Slow: at most 64 KiB per millisecond, far below a
				// loopback writer's speed, so the socket buffer fills.
				buf := make([]byte, 64<<10)
				total := 0
				for total < want {
					n, err := c.Read(buf)
					total += n
					if err != nil {
						break
					}
					time.Sleep(time.Millisecond)
				}
				got <- total
			})
			timeout := time.Second
			w := newTestSocketWriter(t, SocketOptions{
				Network: network, Address: fc.l.Addr().String(),
				WriteTimeout: timeout, BufferSize: 64 << 10,
			})
			waitConnected(t, w, 1)
			payload := bytes.Repeat([]byte{0x42}, size)
			for i := range frames {
				if err := w.WriteFrame(payload); err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if st := w.Stats(); st.WriteWaits == 0 {
				t.Fatalf("no write waited (stats %+v): the collector was not slow enough to test the waiting path", st)
			}
			// Let the deadline set by the last wait pass, then write again.
			time.Sleep(timeout + 100*time.Millisecond)
			if err := w.WriteFrame([]byte{1}); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil {
				t.Fatalf("write after an old wait's deadline: %v", err)
			}
			select {
			case n := <-got:
				if n != want {
					t.Fatalf("collector read %d bytes, want %d", n, want)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("collector did not receive every byte")
			}
			if st := w.Stats(); st.Frames != frames+1 || st.FramesLost != 0 || st.Connected != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}
