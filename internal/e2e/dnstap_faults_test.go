package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	framestream "github.com/farsightsec/golang-framestream"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

// Fault tests: the dnstap destination absent, late, killed, stalled,
// hostile or out of disk space, and SIGHUP rotation under load. In every
// one DNS must be unaffected (every query answered) and the dnstap counters
// must account for every record.

// dtCPUBound is the CPU a tapproxy with a failing dnstap sink may use in a
// quiet second: a busy retry loop would use a whole second.
const dtCPUBound = 300 * time.Millisecond

// TestDnstapCollectorAbsentThenStarted: with no collector at the socket
// tapproxy answers every query and counts the records it cannot write; once
// a collector appears, records flow to it within a bounded wait, and at the
// end the collector holds exactly what was written.
func TestDnstapCollectorAbsentThenStarted(t *testing.T) {
	t.Parallel()
	fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", dtAnswerHandler)
	sock := filepath.Join(dtShortDir(t), "dnstap.sock")
	tp, listen := dtStartProxy(t, fake.Addr, "--dnstap-unix", sock, "--dnstap-drain", "2s")

	before := dtRun(t, listen, dtSimpleQueries(t, "absent", 100), 2, 0, nil)
	dtWantAllAnswered(t, "collector absent", before)

	col := dtStartCollector(t, "unix", sock)
	col.wait(t, "tapproxy connects to the late collector", func() bool { return col.conns >= 1 })
	after := dtRun(t, listen, dtSimpleQueries(t, "present", 100), 2, 0, nil)
	dtWantAllAnswered(t, "collector present", after)
	col.waitExchanges(t, "records of the queries sent after the collector came", after)

	c := tp.Stop()
	n := len(before) + len(after)
	testenv.WantCounters(t, c, dtCounters("answered", n, "dnstap_produced", 2*n, "dnstap_connects", 1,
		"dnstap_lost_after_write", 0, "dnstap_dropped_too_large", 0))
	dtCheckInvariant(t, c)
	if c["dnstap_dropped_write_error"] == 0 {
		t.Errorf("no dnstap_dropped_write_error while the collector was absent\n%s", testenv.FormatCounters(c))
	}
	frames, _, finished := col.stats()
	if finished != 1 {
		t.Errorf("%d connections ended with STOP/FINISH, want 1", finished)
	}
	dtCheckDelivered(t, c, frames)
	recs := col.records(t)
	dtCheckCommon(t, recs)
	if found, missing := dtFindExchanges(recs, after); len(missing) > 0 {
		t.Errorf("%d of %d queries sent with the collector up are not at the collector", len(missing), found+len(missing))
	}
}

// TestDnstapCollectorAbsent: nothing ever listens on the dnstap socket.
// Every query is answered, tapproxy does not spin on the dead destination,
// writes nothing and counts every record.
func TestDnstapCollectorAbsent(t *testing.T) {
	t.Parallel()
	fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", dtAnswerHandler)
	sock := filepath.Join(dtShortDir(t), "dnstap.sock")
	tp, listen := dtStartProxy(t, fake.Addr, "--dnstap-unix", sock, "--dnstap-drain", "200ms")
	ex := dtRun(t, listen, dtSimpleQueries(t, "nobody", 200), 2, 0, nil)
	dtWantAllAnswered(t, "collector absent", ex)
	dtQuietCPU(t, tp.PID, "collector absent", dtCPUBound)
	c := tp.Stop()
	n := len(ex)
	testenv.WantCounters(t, c, dtCounters("received", n, "answered", n, "dnstap_produced", 2*n, "dnstap_written", 0,
		"dnstap_connects", 0, "dnstap_lost_after_write", 0, "dnstap_dropped_too_large", 0))
	dtCheckInvariant(t, c)
	if c["dnstap_dropped_write_error"] == 0 {
		t.Errorf("no dnstap_dropped_write_error with the collector absent\n%s", testenv.FormatCounters(c))
	}
}

// TestDnstapCollectorKilled: fstrm_capture is killed with SIGKILL in the
// middle of a paced load and a new one started on the same socket; DNS is
// unaffected, tapproxy reconnects, and the records of every query sent once
// it has reconnected reach the new collector.
func TestDnstapCollectorKilled(t *testing.T) {
	t.Parallel()
	fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", dtAnswerHandler)
	dir := dtShortDir(t)
	sock := filepath.Join(dir, "dnstap.sock")
	outA, outB := filepath.Join(dir, "a.fstrm"), filepath.Join(dir, "b.fstrm")
	capA := dtStartCapture(t, outA, "-u", sock)
	tp, listen := dtStartProxy(t, fake.Addr, "--dnstap-unix", sock, "--dnstap-drain", "2s")
	capA.waitConnected(t, 1)

	var capB *dtProc
	load := dtRun(t, listen, dtSimpleQueries(t, "load", 1000), 2, time.Millisecond, func(i int) bool {
		switch i {
		case 300:
			capA.stop(t, syscall.SIGKILL)
		case 500:
			capB = dtStartCapture(t, outB, "-u", sock)
		}
		return true
	})
	dtWantAllAnswered(t, "collector killed and restarted", load)
	capB.waitConnected(t, 1)
	final := dtRun(t, listen, dtSimpleQueries(t, "final", 100), 1, 0, nil)
	dtWantAllAnswered(t, "after the reconnection", final)

	c := tp.Stop()
	n := len(load) + len(final)
	testenv.WantCounters(t, c, dtCounters("answered", n, "dnstap_produced", 2*n, "dnstap_connects", 2))
	dtCheckInvariant(t, c)
	if strings.Contains(tp.Output(), `msg="dnstap shutdown"`) {
		t.Errorf("tapproxy's dnstap shutdown with the second collector was not clean")
	}
	capB.stop(t, syscall.SIGTERM)

	recsA := dtReadFile(t, outA, false) // killed: may lack STOP or end torn
	recsB := dtReadFile(t, outB, true)
	t.Logf("collector A (killed) kept %d records, collector B %d; written %d, lost after write %d",
		len(recsA), len(recsB), c["dnstap_written"], c["dnstap_lost_after_write"])
	if got := uint64(len(recsA)+len(recsB)) + c["dnstap_lost_after_write"]; got > c["dnstap_written"] {
		t.Errorf("records at the collectors (%d + %d) + lost after write (%d) exceed dnstap_written %d",
			len(recsA), len(recsB), c["dnstap_lost_after_write"], c["dnstap_written"])
	}
	dtCheckCommon(t, append(recsA, recsB...))
	if found, missing := dtFindExchanges(recsB, final); len(missing) > 0 {
		t.Errorf("%d of %d queries sent after the reconnection are not in the new collector's file (first: %+v)",
			len(missing), found+len(missing), missing[0])
	}
	dtValidate(t, outB, "")
}

// TestDnstapStalledCollector: a collector that completes the handshake and
// never reads. DNS answers keep flowing, tapproxy drops the stalled
// connection on its write timeout and reconnects, and the counters add up.
func TestDnstapStalledCollector(t *testing.T) {
	t.Parallel()
	fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", dtAnswerHandler)
	sock := filepath.Join(dtShortDir(t), "dnstap.sock")
	ln := dtListen(t, "unix", sock)
	var mu sync.Mutex
	var held []net.Conn
	handshakes := make(chan struct{}, 100)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, nc)
			mu.Unlock()
			// READY -> ACCEPT, START; then never read again.
			if _, err := framestream.NewReader(nc, &framestream.ReaderOptions{
				ContentTypes: [][]byte{[]byte(dtContentType)}, Bidirectional: true, Timeout: dtSignalWait,
			}); err == nil {
				select {
				case handshakes <- struct{}{}:
				default:
				}
			}
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, nc := range held {
			_ = nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})

	tp, listen := dtStartProxy(t, fake.Addr, "--dnstap-unix", sock, "--dnstap-drain", "1s")
	select {
	case <-handshakes:
	case <-time.After(dtSignalWait):
		t.Fatalf("tapproxy did not complete a handshake with the stalled collector within %v", dtSignalWait)
	}
	first := dtRun(t, listen, dtSimpleQueries(t, "early", 200), 2, 0, nil)
	dtWantAllAnswered(t, "stalled collector, first queries", first)

	// Load until the stall is noticed (the socket buffers hold a few
	// hundred KB, so a few thousand records fill them, and then the write
	// waits out its 2 s timeout), bounded in count and time: how many
	// queries fit in those 2 s depends on the machine.
	var stalled []dtExchange
	giveUp := time.Now().Add(30 * time.Second)
	for batch := 0; !strings.Contains(tp.Output(), "reason=write_timeout"); batch++ {
		if batch == 300 || time.Now().After(giveUp) {
			t.Fatalf("no write timeout logged after %d queries to a collector that never reads\n%s", len(stalled), tp.Output())
		}
		ex := dtRun(t, listen, dtSimpleQueries(t, fmt.Sprintf("stall%d", batch), 1000), 4, 0, nil)
		dtWantAllAnswered(t, "stalled collector", ex)
		stalled = append(stalled, ex...)
	}
	after := dtRun(t, listen, dtSimpleQueries(t, "late", 500), 4, 0, nil)
	dtWantAllAnswered(t, "after the stalled connection was dropped", after)
	p50a, p99a := dtLatency(first)
	p50b, p99b := dtLatency(append(stalled, after...))
	t.Logf("diagnostic only: DNS latency p50/p99 %v/%v early, %v/%v while the collector stalls (%d queries)",
		p50a, p99a, p50b, p99b, len(stalled)+len(after))

	c := tp.Stop()
	n := len(first) + len(stalled) + len(after)
	testenv.WantCounters(t, c, dtCounters("received", n, "answered", n, "dnstap_produced", 2*n))
	dtCheckInvariant(t, c)
	if c["dnstap_connects"] < 2 {
		t.Errorf("dnstap_connects = %d: tapproxy did not reconnect after dropping the stalled connection\n%s", c["dnstap_connects"], testenv.FormatCounters(c))
	}
}

// TestDnstapHostileCollectors: collectors that answer READY wrongly. DNS is
// unaffected; tapproxy never sends START or data to them, drops them and
// retries with a backoff (no busy loop), writes nothing, and counts every
// record dropped.
func TestDnstapHostileCollectors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		reply []byte // sent after READY; nil: nothing
	}{
		{"never-accept", nil},
		{"wrong-content-type", dtControl(framestream.CONTROL_ACCEPT, "protobuf:other.Thing")},
		{"oversized-control", append(dtControl(framestream.CONTROL_ACCEPT, strings.Repeat("x", 600)), make([]byte, 64)...)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", dtAnswerHandler)
			sock := filepath.Join(dtShortDir(t), "dnstap.sock")
			ln := dtListen(t, "unix", sock)
			type attempt struct {
				ready error // reading READY
				extra int   // bytes tapproxy sent after READY
				end   error // how the connection ended
			}
			attempts := make(chan attempt, 100)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var conns []net.Conn
			wg.Go(func() {
				for {
					nc, err := ln.Accept()
					if err != nil {
						return
					}
					mu.Lock()
					conns = append(conns, nc)
					mu.Unlock()
					wg.Go(func() {
						defer nc.Close()
						var a attempt
						_ = nc.SetDeadline(time.Now().Add(dtSignalWait))
						typ, body, err := dtReadControl(nc)
						if err == nil && (typ != framestream.CONTROL_READY || !strings.Contains(string(body), dtContentType)) {
							err = fmt.Errorf("first frame type %d %q, want READY with %s", typ, body, dtContentType)
						}
						a.ready = err
						if err == nil && tc.reply != nil {
							_, _ = nc.Write(tc.reply)
						}
						n, err := io.Copy(io.Discard, nc)
						if errors.Is(err, syscall.ECONNRESET) {
							// Closed with our unread bytes in its
							// receive queue (the oversized frame).
							err = nil
						}
						a.extra, a.end = int(n), err
						select {
						case attempts <- a:
						default:
						}
					})
				}
			})
			t.Cleanup(func() {
				_ = ln.Close()
				mu.Lock()
				for _, nc := range conns {
					_ = nc.Close()
				}
				mu.Unlock()
				wg.Wait()
			})

			tp, listen := dtStartProxy(t, fake.Addr, "--dnstap-unix", sock, "--dnstap-drain", "200ms")
			ex := dtRun(t, listen, dtSimpleQueries(t, tc.name, 200), 2, 0, nil)
			dtWantAllAnswered(t, "hostile collector", ex)
			// Two attempts that tapproxy ended: it gave up and retried.
			for i := range 2 {
				select {
				case a := <-attempts:
					if a.ready != nil {
						t.Errorf("attempt %d: %v", i, a.ready)
					}
					if a.extra != 0 {
						t.Errorf("attempt %d: tapproxy sent %d bytes after READY to a collector that did not accept (want none: no START, no data)", i, a.extra)
					}
					if a.end != nil {
						t.Errorf("attempt %d: tapproxy did not close the connection (%v)", i, a.end)
					}
				case <-time.After(dtSignalWait):
					t.Fatalf("tapproxy made %d connection attempts that ended within %v, want 2", i, dtSignalWait)
				}
			}
			dtQuietCPU(t, tp.PID, tc.name, dtCPUBound)

			c := tp.Stop()
			n := len(ex)
			testenv.WantCounters(t, c, dtCounters("answered", n, "dnstap_produced", 2*n, "dnstap_written", 0,
				"dnstap_connects", 0, "dnstap_lost_after_write", 0))
			dtCheckInvariant(t, c)
		})
	}
}

// dtMountTmpfs mounts a tmpfs of the given size on a fresh directory and
// unmounts it in t.Cleanup (registered before anything that writes there,
// so it runs last).
func dtMountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("%v", err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755"); err != nil {
		t.Fatalf("mounting a %s tmpfs on %s to simulate a full disk: %v (this test needs root, or CAP_SYS_ADMIN; "+
			"/dev/full cannot stand in, as tapproxy creates its dnstap file by path with O_EXCL)", size, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			if err2 := syscall.Unmount(dir, syscall.MNT_DETACH); err2 != nil {
				t.Errorf("unmounting %s: %v; lazy: %v", dir, err, err2)
			}
		}
	})
	return dir
}

// TestDnstapDiskFull: the dnstap file's file system fills up. DNS is
// unaffected, write errors are counted, tapproxy does not spin while it
// cannot write, and once space returns it resumes in the same file, which
// ends up complete (STOP) and valid, holding exactly what was written.
func TestDnstapDiskFull(t *testing.T) {
	t.Parallel()
	dir := dtMountTmpfs(t, "256k")
	fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", dtAnswerHandler)
	path := filepath.Join(dir, "dns.fstrm")
	tp, listen := dtStartProxy(t, fake.Addr, "--dnstap-file", path, "--dnstap-drain", "2s")

	var all []dtExchange
	run := func(what, prefix string, n int, pace time.Duration, hook func(int) bool) []dtExchange {
		ex := dtRun(t, listen, dtSimpleQueries(t, prefix, n), 1, pace, hook)
		dtWantAllAnswered(t, what, ex)
		all = append(all, ex...)
		return ex
	}
	healthy := run("healthy disk", "healthy", 20, 0, nil)
	// The dnstap writer flushes within its flush interval (100 ms): wait
	// (bounded) until the healthy records are on disk before filling it.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(path); err == nil {
			if fr, _ := dtFrames(b, false); len(fr) >= 2*len(healthy) {
				break
			}
		}
	}

	// Fill the file system.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatalf("%v", err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the tmpfs: %v", err)
			}
			break
		}
	}
	_ = f.Close()

	// The file's last page still has room for a few records; query until
	// tapproxy reports the failure (bounded).
	const failing = "dnstap file output failing"
	filled := run("disk filling", "filling", 500, 0, func(int) bool { return !strings.Contains(tp.Output(), failing) })
	if !strings.Contains(tp.Output(), failing) {
		t.Fatalf("no write error reported after %d queries with the disk full\n%s", len(filled), tp.Output())
	}
	run("disk full", "full", 50, 0, nil)
	dtQuietCPU(t, tp.PID, "disk full", dtCPUBound)

	if err := os.Remove(filler); err != nil {
		t.Fatalf("%v", err)
	}
	const recovered = "dnstap file output recovered"
	probes := run("space returned", "probe", 500, 20*time.Millisecond, func(int) bool { return !strings.Contains(tp.Output(), recovered) })
	if !strings.Contains(tp.Output(), recovered) {
		t.Fatalf("dnstap output did not recover within %d paced queries after space returned\n%s", len(probes), tp.Output())
	}
	final := run("after recovery", "final", 50, 0, nil)

	c := tp.Stop()
	n := len(all)
	testenv.WantCounters(t, c, dtCounters("answered", n, "dnstap_produced", 2*n, "dnstap_file_rotations", 0))
	dtCheckInvariant(t, c)
	if c["dnstap_file_write_errors"] == 0 || c["dnstap_dropped_write_error"] == 0 {
		t.Errorf("disk full: want dnstap_file_write_errors > 0 and dnstap_dropped_write_error > 0\n%s", testenv.FormatCounters(c))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("%v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 1 || names[0] != "dns.fstrm" {
		t.Errorf("files in the dnstap directory: %v, want only dns.fstrm (no rotated or torn file)", names)
	}
	recs := dtReadFile(t, path, true)
	dtCheckDelivered(t, c, len(recs))
	dtCheckCommon(t, recs)
	for _, part := range []struct {
		what string
		ex   []dtExchange
	}{{"before the disk filled", healthy}, {"after recovery", final}} {
		if found, missing := dtFindExchanges(recs, part.ex); len(missing) > 0 {
			t.Errorf("%d of %d queries sent %s are not in the file", len(missing), found+len(missing), part.what)
		}
	}
	t.Logf("disk full: %d queries, %d records written, %d in the file, counters: %s", n, c["dnstap_written"], len(recs), testenv.FormatCounters(c))
	dtValidate(t, path, "")
}

// TestDnstapDiskFullAtShutdown: tapproxy is stopped while its dnstap file
// system is still full and records are queued. The drain gives up (counted
// dropped_shutdown), but the file writer must still be closed: every record
// counted written is either in a file or counted lost after write, and no
// file is left at PATH without its STOP frame (a file that could not be
// finished is moved aside as .torn, tap/fstrm/doc.go).
func TestDnstapDiskFullAtShutdown(t *testing.T) {
	t.Parallel()
	dir := dtMountTmpfs(t, "256k")
	fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", dtAnswerHandler)
	path := filepath.Join(dir, "dns.fstrm")
	tp, listen := dtStartProxy(t, fake.Addr, "--dnstap-file", path, "--dnstap-drain", "500ms")

	n := len(dtRun(t, listen, dtSimpleQueries(t, "healthy", 20), 1, 0, nil))
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatalf("%v", err)
	}
	for err == nil {
		_, err = f.Write(make([]byte, 4096))
	}
	_ = f.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the tmpfs: %v", err)
	}
	const failing = "dnstap file output failing"
	ex := dtRun(t, listen, dtSimpleQueries(t, "filling", 500), 1, 0, func(int) bool { return !strings.Contains(tp.Output(), failing) })
	dtWantAllAnswered(t, "disk filling", ex)
	n += len(ex)
	if !strings.Contains(tp.Output(), failing) {
		t.Fatalf("no write error reported after %d queries with the disk full", len(ex))
	}
	ex = dtRun(t, listen, dtSimpleQueries(t, "full", 50), 1, 0, nil)
	dtWantAllAnswered(t, "disk full", ex)
	n += len(ex)

	c := tp.Stop()
	testenv.WantCounters(t, c, dtCounters("answered", n, "dnstap_produced", 2*n))
	dtCheckInvariant(t, c)
	// Space returns only after tapproxy has exited, so that the files can
	// be read as tapproxy left them.
	if err := os.Remove(filler); err != nil {
		t.Fatalf("%v", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("%v", err)
	}
	found := 0
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		torn := strings.HasSuffix(e.Name(), ".torn")
		if e.Name() != "dns.fstrm" && !torn && !dtRotatedName.MatchString(e.Name()) {
			t.Errorf("unexpected file %s", e.Name())
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v", err)
		}
		frames, ferr := dtFrames(b, !torn)
		if ferr != nil {
			t.Errorf("%s left by a clean shutdown: %v (only a .torn file may lack STOP)", e.Name(), ferr)
			frames, _ = dtFrames(b, false)
		}
		t.Logf("%s: %d records", e.Name(), len(frames))
		found += len(frames)
	}
	dtCheckDelivered(t, c, found)
}

// dtRotatedName is the documented name of a rotated dnstap file
// (tap/fstrm/doc.go): PATH.YYYYMMDDTHHMMSSZ[.N].
var dtRotatedName = regexp.MustCompile(`^dns\.fstrm\.\d{8}T\d{6}Z(\.\d+)?$`)

// TestDnstapSighupRotation sends SIGHUP a few times during a paced load,
// the first time after renaming the file as logrotate would: every file (the
// renamed one, each rotated one with the documented names, and the current
// one) is complete and valid, and together they hold every query and
// response exactly once, with no drop.
func TestDnstapSighupRotation(t *testing.T) {
	t.Parallel()
	fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", dtAnswerHandler)
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	tp, listen := dtStartProxy(t, fake.Addr, "--dnstap-file", path)

	const queries, hups = 2000, 4
	sent := 0
	ex := dtRun(t, listen, dtSimpleQueries(t, "hup", queries), 4, time.Millisecond, func(i int) bool {
		if i > 0 && i%(queries/(hups+1)) == 0 {
			if sent == 0 {
				// logrotate: rename, then SIGHUP. tapproxy finishes the
				// renamed file (STOP) and starts a new one at PATH.
				if err := os.Rename(path, path+".logrotated"); err != nil {
					t.Errorf("rename: %v", err)
					return false
				}
			}
			if err := syscall.Kill(tp.PID, syscall.SIGHUP); err != nil {
				t.Errorf("SIGHUP: %v", err)
				return false
			}
			sent++
			// One such line per SIGHUP (reloaded or not), logged after
			// the dnstap reopen was requested (cmd/tapproxy/serve.go).
			dtWaitLog(t, tp, `msg="SIGHUP: configuration `, sent)
		}
		return true
	})
	dtWantAllAnswered(t, "SIGHUP rotation", ex)
	if len(ex) != queries || sent != hups {
		t.Fatalf("sent %d queries and %d SIGHUPs, want %d and %d", len(ex), sent, queries, hups)
	}

	c := tp.Stop()
	testenv.WantCounters(t, c, dtCounters("answered", queries, "dnstap_produced", 2*queries, "dnstap_written", 2*queries,
		"dnstap_file_rotations", hups, "dnstap_file_write_errors", 0))
	dtWantZeroDrops(t, c)
	dtCheckInvariant(t, c)

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("%v", err)
	}
	var files []string
	for _, e := range entries {
		if e.Name() != "dns.fstrm" && e.Name() != "dns.fstrm.logrotated" && !dtRotatedName.MatchString(e.Name()) {
			t.Errorf("unexpected file %s in the dnstap directory (rotated names are dns.fstrm.YYYYMMDDTHHMMSSZ[.N])", e.Name())
			continue
		}
		files = append(files, filepath.Join(dir, e.Name()))
	}
	if len(files) != hups+1 {
		t.Errorf("%d dnstap files %v, want %d (one per SIGHUP plus the current one)", len(files), files, hups+1)
	}
	if _, err := os.Stat(path + ".logrotated"); err != nil {
		t.Errorf("the file renamed before the first SIGHUP: %v", err)
	}
	var recs []*dtRecord
	for _, f := range files {
		r := dtReadFile(t, f, true)
		if len(r) == 0 {
			t.Errorf("%s holds no record", f)
		}
		t.Logf("%s: %d records", filepath.Base(f), len(r))
		recs = append(recs, r...)
	}
	dtCheckDelivered(t, c, len(recs))
	dtWantTypes(t, "all files", dtCountTypes(recs), map[string]int{"CLIENT_QUERY": queries, "CLIENT_RESPONSE": queries})
	dtCheckCommon(t, recs)
	dtCheckClientRecords(t, recs, ex)

	// The validator is slow (four readers); run the files side by side.
	script := dtValidator(t)
	var wg sync.WaitGroup
	for _, f := range files {
		wg.Go(func() { dtRunValidator(t, script, f, "") })
	}
	wg.Wait()
}
