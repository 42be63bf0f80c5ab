package reader

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	framestream "github.com/farsightsec/golang-framestream"
)

// hangGuard bounds every wait in these tests. It only turns a hang into a
// failure; no assertion depends on timing.
const hangGuard = 60 * time.Second

type collectorRun struct {
	addr   net.Addr
	done   chan ConnInfo
	code   chan int
	exited chan struct{}
	cancel context.CancelFunc
	stdout *bytes.Buffer
	stderr *bytes.Buffer
}

// startCollector runs "tapproxy read --unix/--tcp ... -w out" through Run
// and returns once it listens.
func startCollector(t *testing.T, network, format, wfile string) *collectorRun {
	t.Helper()
	args := []string{"--format", format}
	switch network {
	case "unix":
		dir, err := os.MkdirTemp("", "trd") // short: sun_path holds 108 bytes
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		args = append(args, "--unix", filepath.Join(dir, "c.sock"))
	case "tcp":
		args = append(args, "--tcp", "127.0.0.1:0")
	}
	if wfile != "" {
		args = append(args, "-w", wfile)
	}
	var stderr bytes.Buffer
	o, err := ParseArgs(args, &stderr)
	if err != nil {
		t.Fatalf("ParseArgs: %v: %s", err, stderr.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &collectorRun{done: make(chan ConnInfo, 16), code: make(chan int, 1), exited: make(chan struct{}), cancel: cancel,
		stdout: new(bytes.Buffer), stderr: new(bytes.Buffer)}
	ready := make(chan net.Addr, 1)
	o.Ready = func(a net.Addr) { ready <- a }
	o.ConnDone = func(i ConnInfo) { c.done <- i }
	go func() {
		c.code <- Run(ctx, o, c.stdout, c.stderr)
		close(c.exited)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.exited:
		case <-time.After(hangGuard):
		}
	})
	select {
	case c.addr = <-ready:
	case code := <-c.code:
		t.Fatalf("collector exited with %d before listening: %s", code, c.stderr.String())
	case <-time.After(hangGuard):
		t.Fatal("collector did not start listening")
	}
	return c
}

func (c *collectorRun) waitConn(t *testing.T) ConnInfo {
	t.Helper()
	select {
	case i := <-c.done:
		return i
	case <-time.After(hangGuard):
		t.Fatal("no producer connection ended")
	}
	return ConnInfo{}
}

// stop cancels the collector (as SIGINT/SIGTERM do through main's context)
// and returns its exit code. Reading stdout/stderr is safe afterwards.
func (c *collectorRun) stop(t *testing.T) int {
	t.Helper()
	c.cancel()
	select {
	case code := <-c.code:
		return code
	case <-time.After(hangGuard):
		t.Fatal("collector did not stop after cancel")
	}
	return -1
}

// TestCollectorFstrmReplay: fstrm_replay (libfstrm, a real bidirectional
// producer) sends corpus files to --unix and --tcp; every message is printed
// and the -w file holds exactly the input frames, with a STOP frame.
func TestCollectorFstrmReplay(t *testing.T) {
	replay, err := exec.LookPath("fstrm_replay")
	if err != nil {
		t.Fatal("fstrm_replay (package fstrm-bin) is needed: ", err)
	}
	man := readManifest(t)
	for _, network := range []string{"unix", "tcp"} {
		for _, name := range []string{"unbound-resolver.fstrm", "named-auth-file.fstrm"} {
			t.Run(network+"/"+name, func(t *testing.T) {
				in := filepath.Join(corpusDir(t), name)
				wfile := filepath.Join(t.TempDir(), "out.fstrm")
				c := startCollector(t, network, "json", wfile)
				args := []string{"-t", ContentType, "-r", in}
				if network == "unix" {
					args = append(args, "-u", c.addr.String())
				} else {
					host, port, _ := net.SplitHostPort(c.addr.String())
					args = append(args, "-a", host, "-p", port)
				}
				ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
				defer cancel()
				if out, err := exec.CommandContext(ctx, replay, args...).CombinedOutput(); err != nil {
					t.Fatalf("fstrm_replay %v: %v\n%s", args, err, out)
				}
				info := c.waitConn(t)
				e := man[name]
				if !info.Stopped || info.Frames != e.total || info.Err != nil {
					t.Errorf("connection %+v, want STOP after %d frames", info, e.total)
				}
				if code := c.stop(t); code != ExitOK {
					t.Errorf("exit %d: %s", code, c.stderr.String())
				}
				counts := map[string]int{}
				for _, l := range nonEmptyLines(c.stdout.String()) {
					var v struct{ Type string }
					if err := json.Unmarshal([]byte(l), &v); err != nil {
						t.Fatalf("JSON line %q: %v", l, err)
					}
					counts[v.Type]++
				}
				if !maps.Equal(counts, e.counts) {
					t.Errorf("printed %v, want %v", counts, e.counts)
				}
				wantMsgs, _, _ := decodeAll(readCorpusFile(t, name))
				out, err := os.ReadFile(wfile)
				if err != nil {
					t.Fatal(err)
				}
				gotMsgs, bad, final := decodeAll(out)
				if !errors.Is(final, io.EOF) || len(bad) > 0 {
					t.Fatalf("-w file: final %v, bad %v", final, bad)
				}
				if len(gotMsgs) != len(wantMsgs) {
					t.Fatalf("-w file has %d messages, input %d", len(gotMsgs), len(wantMsgs))
				}
				for i := range gotMsgs {
					if !bytes.Equal(gotMsgs[i].Raw, wantMsgs[i].Raw) {
						t.Errorf("-w frame %d differs from the input's", i)
					}
				}
				if !strings.Contains(c.stderr.String(), "1 connections (0 handshake failed, 1 stopped") {
					t.Errorf("summary: %s", c.stderr.String())
				}
			})
		}
	}
}

// TestCollectorGoProducers drives the collector with golang-framestream's
// bidirectional writer: a clean STOP/FINISH, a producer offering another
// content type, one that closes without STOP, one sending an undecodable
// frame, and one still connected at shutdown.
func TestCollectorGoProducers(t *testing.T) {
	msgs, _, _ := decodeAll(readCorpusFile(t, "kdig-tool.fstrm"))
	wfile := filepath.Join(t.TempDir(), "out.fstrm")
	c := startCollector(t, "tcp", "text", wfile)
	dial := func() net.Conn {
		conn, err := net.Dial("tcp", c.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	writer := func(conn net.Conn, ct string) (*framestream.Writer, error) {
		return framestream.NewWriter(conn, &framestream.WriterOptions{ContentTypes: [][]byte{[]byte(ct)}, Bidirectional: true, Timeout: hangGuard})
	}
	var sent [][]byte

	// 1. STOP → FINISH: Close returns nil only after reading FINISH.
	w, err := writer(dial(), ContentType)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if _, err := w.WriteFrame(m.Raw); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, m.Raw)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close (STOP, wait for FINISH): %v", err)
	}
	if i := c.waitConn(t); !i.Stopped || i.Frames != len(msgs) {
		t.Errorf("clean producer: %+v", i)
	}

	// 2. Another content type is refused at the handshake.
	if _, err := writer(dial(), "protobuf:other.Thing"); err == nil {
		t.Error("a producer offering another content type was accepted")
	}
	if i := c.waitConn(t); i.Err == nil || i.Frames != 0 {
		t.Errorf("wrong content type: %+v", i)
	}

	// 3. Frames, then a close without STOP (what dnsdist does).
	conn := dial()
	if w, err = writer(conn, ContentType); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteFrame(msgs[0].Raw); err != nil {
		t.Fatal(err)
	}
	sent = append(sent, msgs[0].Raw)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if i := c.waitConn(t); i.Stopped || i.Frames != 1 || i.Err != nil {
		t.Errorf("close without STOP: %+v", i)
	}

	// 4. An undecodable frame is reported and still written to -w.
	if w, err = writer(dial(), ContentType); err != nil {
		t.Fatal(err)
	}
	garbage := []byte("\xff\xffnot a dnstap message")
	if _, err := w.WriteFrame(garbage); err != nil {
		t.Fatal(err)
	}
	sent = append(sent, garbage)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if i := c.waitConn(t); !i.Stopped || i.Frames != 1 {
		t.Errorf("garbage producer: %+v", i)
	}

	// 5. A producer still connected (handshake done, idle) at shutdown
	// does not hold the collector.
	if _, err = writer(dial(), ContentType); err != nil {
		t.Fatal(err)
	}
	code := c.stop(t)
	if i := c.waitConn(t); i.Stopped {
		t.Errorf("idle producer at shutdown: %+v", i)
	}
	if code != ExitBadFrame {
		t.Errorf("exit %d, want %d (one undecodable frame): %s", code, ExitBadFrame, c.stderr.String())
	}
	for _, want := range []string{"data frame " + strconv.Itoa(len(msgs)+1) + ": data frame is not a decodable Dnstap protobuf",
		"5 connections (1 handshake failed, 2 stopped, 1 closed without STOP, 1 aborted), " + strconv.Itoa(len(msgs)+1) + " messages, 1 bad frames"} {
		if !strings.Contains(c.stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, c.stderr.String())
		}
	}
	if n := strings.Count(c.stdout.String(), ";; frame "); n != len(msgs)+1 {
		t.Errorf("%d messages printed, want %d", n, len(msgs)+1)
	}
	out, err := os.ReadFile(wfile)
	if err != nil {
		t.Fatal(err)
	}
	d := NewDecoder(bytes.NewReader(out), 0)
	var got [][]byte
	for {
		m, err := d.Next()
		if errors.Is(err, ErrBadDnstap) {
			got = append(got, garbage) // checked by position below
			continue
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("-w file: %v", err)
			}
			break
		}
		got = append(got, m.Raw)
	}
	if len(got) != len(sent) {
		t.Fatalf("-w file has %d frames, sent %d", len(got), len(sent))
	}
	for i := range got {
		if !bytes.Equal(got[i], sent[i]) {
			t.Errorf("-w frame %d differs", i)
		}
	}
}

// TestCollectorListenErrors: a busy address and a unix path that is a
// regular file are I/O errors (exit 2); a stale socket is replaced.
func TestCollectorListenErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	code, _, stderr := runCommand(t, "--tcp", ln.Addr().String())
	if code != ExitIO {
		t.Errorf("busy address: exit %d (%s)", code, stderr)
	}
	dir, err := os.MkdirTemp("", "trd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	regular := filepath.Join(dir, "f")
	writeFile(t, regular, "keep me")
	code, _, stderr = runCommand(t, "--unix", regular)
	if b, _ := os.ReadFile(regular); code != ExitIO || string(b) != "keep me" || !strings.Contains(stderr, "not a socket") {
		t.Errorf("regular file: exit %d (%s), content %q", code, stderr, b)
	}
	// A socket left behind (listener closed without unlinking).
	stale := filepath.Join(dir, "s")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if err := removeStaleSocket(stale); err != nil {
		t.Errorf("stale socket: %v", err)
	}
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale socket still there: %v", err)
	}
}
