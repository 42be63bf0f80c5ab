package tap

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"google.golang.org/protobuf/proto"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/txn"
)

// fakeWriter is a FrameWriter for tests. Frames are copied when keep is set.
// fail, if set, decides whether the n-th WriteFrame call (from 0) fails.
// When block is non-nil, every WriteFrame first signals entered (without
// blocking) and then waits for block to be closed.
type fakeWriter struct {
	keep    bool
	fail    func(n int) bool
	block   chan struct{}
	entered chan struct{}

	mu      sync.Mutex
	calls   int
	ok      int
	errs    int
	frames  [][]byte
	flushes int
	closes  int
	flushed chan struct{} // if set, signalled (non-blocking) on each Flush
}

var errFake = errors.New("fake write error")

func (w *fakeWriter) WriteFrame(p []byte) error {
	if w.block != nil {
		select {
		case w.entered <- struct{}{}:
		default:
		}
		<-w.block
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.calls
	w.calls++
	if w.fail != nil && w.fail(n) {
		w.errs++
		return errFake
	}
	w.ok++
	if w.keep {
		w.frames = append(w.frames, append([]byte(nil), p...))
	}
	return nil
}

func (w *fakeWriter) Flush() error {
	w.mu.Lock()
	w.flushes++
	w.mu.Unlock()
	if w.flushed != nil {
		select {
		case w.flushed <- struct{}{}:
		default:
		}
	}
	return nil
}

func (w *fakeWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closes++
	return nil
}

func (w *fakeWriter) counts() (calls, ok, errs, closes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.calls, w.ok, w.errs, w.closes
}

// checkBooks asserts the accounting identity after the writer finished.
func checkBooks(t *testing.T, l *Logger, w *fakeWriter) Stats {
	t.Helper()
	<-l.Done()
	st := l.Stats()
	if st.Produced != st.Written+st.Dropped() {
		t.Fatalf("produced %d != written %d + dropped %d (%+v)", st.Produced, st.Written, st.Dropped(), st)
	}
	_, ok, errs, closes := w.counts()
	if uint64(ok) != st.Written || uint64(errs) != st.DroppedWriteError {
		t.Fatalf("writer saw %d ok / %d errors, stats say written %d / write errors %d", ok, errs, st.Written, st.DroppedWriteError)
	}
	if closes != 1 {
		t.Fatalf("FrameWriter closed %d times", closes)
	}
	return st
}

// txnN returns the n-th test transaction: alternately IPv4 UDP and IPv6
// TCP, every fifth one timed out.
func txnN(n int) *txn.Transaction {
	t := answeredUDP4()
	if n%2 == 1 {
		t = answeredTCP6()
	}
	t.Seq = uint64(n)
	t.Query = dnsMsg(uint16(n), 30+n%50, byte(n))
	t.Response = dnsMsg(uint16(n), 100+n%300, byte(n))
	if n%5 == 4 {
		t.Outcome, t.Response, t.ResponseKernel, t.ReplySent = txn.TimedOut, nil, 0, 0
	}
	return t
}

// answeredN returns an answered IPv4 UDP transaction with Seq n: two
// records with the client types.
func answeredN(n int) *txn.Transaction {
	t := answeredUDP4()
	t.Seq = uint64(n)
	return t
}

func TestLoggerWritesEverything(t *testing.T) {
	enc := NewEncoder(EncoderOptions{Identity: []byte("id"), Types: TypesAll})
	w := &fakeWriter{keep: true}
	l := NewLogger(LoggerOptions{}, enc, w, nil)
	var want [][]byte
	// The writer is not started: everything waits in the queue, and
	// Shutdown starts the writer and drains it.
	for i := range 500 {
		tr := txnN(i)
		var ends []int
		var buf []byte
		buf, ends = enc.EncodeTransaction(buf, ends, tr)
		start := 0
		for _, e := range ends {
			want = append(want, buf[start:e])
			start = e
		}
		l.Submit(tr)
		// Submit must not retain the caller's bytes.
		tr.Query[2], tr.Response = 0xff, nil
	}
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	st := checkBooks(t, l, w)
	if st.Dropped() != 0 || st.Written != uint64(len(want)) || st.Submitted != 500 {
		t.Fatalf("stats %+v, want %d written and no drops", st, len(want))
	}
	if len(w.frames) != len(want) {
		t.Fatalf("%d frames, want %d", len(w.frames), len(want))
	}
	for i := range want {
		if !bytes.Equal(w.frames[i], want[i]) {
			t.Fatalf("frame %d differs from the direct encoding", i)
		}
	}
	d := &dnstap.Dnstap{}
	if err := proto.Unmarshal(w.frames[len(w.frames)-1], d); err != nil {
		t.Fatal(err)
	}
	if a, err := annotate.Parse(d.Extra); err != nil || a.Seq != 499 {
		t.Fatalf("last frame annotation %q: %v", d.Extra, err)
	}
	if w.flushes == 0 {
		t.Fatal("never flushed")
	}
}

func TestLoggerConcurrentAccounting(t *testing.T) {
	enc := NewEncoder(EncoderOptions{Types: TypesAll})
	// Every 499th write fails; a small queue so that some Submits find it
	// full; a frame limit that rejects the large responses.
	w := &fakeWriter{fail: func(n int) bool { return n%499 == 498 }}
	l := NewLogger(LoggerOptions{QueueEntries: 256, MaxFrameSize: 1000}, enc, w, nil)
	l.Start()
	const goroutines, each = 8, 1500
	var wantProduced atomic.Uint64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				tr := txnN(g*each + i)
				if i%100 == 0 {
					tr.Response = dnsMsg(1, 2000, 'L') // too large a frame
				}
				wantProduced.Add(uint64(enc.Records(tr)))
				l.Submit(tr)
			}
		})
	}
	wg.Wait()
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	st := checkBooks(t, l, w)
	if st.Produced != wantProduced.Load() || st.Submitted != goroutines*each {
		t.Fatalf("produced %d submitted %d, want %d and %d", st.Produced, st.Submitted, wantProduced.Load(), goroutines*each)
	}
	if st.DroppedShutdown != 0 {
		t.Fatalf("healthy shutdown dropped %d", st.DroppedShutdown)
	}
	t.Logf("%+v", st)
}

func TestLoggerStalledWriter(t *testing.T) {
	enc := NewEncoder(EncoderOptions{Types: TypesClient})
	w := &fakeWriter{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	var logs countingHandler
	l := NewLogger(LoggerOptions{QueueEntries: 8}, enc, w, slog.New(&logs))
	l.Start()
	l.Submit(txnN(0))
	<-w.entered // the writer holds txn 0 and is stuck in WriteFrame

	// Submit must return while the writer stays stuck. If it blocked, done
	// would never close; the watchdog only turns that deadlock into a
	// failure instead of a test-binary timeout.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= 100; i++ {
			l.Submit(answeredN(i)) // even: answered UDP, 2 records each
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Submit blocked behind a stuck writer")
	}
	st := l.Stats()
	// 8 transactions fit in the queue; the other 92 × 2 records are dropped.
	if st.DroppedQueueFull != 92*2 {
		t.Fatalf("dropped_queue_full = %d, want %d", st.DroppedQueueFull, 92*2)
	}
	close(w.block)
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	st = checkBooks(t, l, w)
	if st.Written != 9*2 {
		t.Fatalf("written %d, want 18", st.Written)
	}
	if n := logs.warns.Load(); n < 1 || n > 3 {
		t.Fatalf("%d drop summary lines for %d drops; want a few", n, st.Dropped())
	}
}

func TestLoggerQueueByteBound(t *testing.T) {
	enc := NewEncoder(EncoderOptions{Types: TypesClient})
	w := &fakeWriter{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	l := NewLogger(LoggerOptions{QueueBytes: 1}, enc, w, nil) // raised to MinQueueBytes
	l.Start()
	l.Submit(txnN(0))
	<-w.entered
	big := func(i int) *txn.Transaction {
		tr := answeredN(i)
		tr.Query, tr.Response = dnsMsg(1, 10000, 'q'), dnsMsg(1, 10000, 'r')
		return tr
	}
	for i := 1; i <= 20; i++ {
		l.Submit(big(i))
	}
	// 20000 bytes each: 13 fit in 256 KiB.
	if st := l.Stats(); st.DroppedQueueFull != 7*2 {
		t.Fatalf("dropped_queue_full = %d, want 14", st.DroppedQueueFull)
	}
	close(w.block)
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := checkBooks(t, l, w); st.Written != 14*2 {
		t.Fatalf("written %d, want 28", st.Written)
	}
}

func TestLoggerWriteErrors(t *testing.T) {
	enc := NewEncoder(EncoderOptions{Types: TypesClient})
	w := &fakeWriter{fail: func(n int) bool { return n < 5 }}
	l := NewLogger(LoggerOptions{}, enc, w, nil)
	for i := range 4 {
		l.Submit(answeredN(i))
	}
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := checkBooks(t, l, w)
	if st.DroppedWriteError != 5 || st.Written != 3 {
		t.Fatalf("write errors %d written %d, want 5 and 3", st.DroppedWriteError, st.Written)
	}
	if calls, _, _, _ := w.counts(); calls != 8 {
		t.Fatalf("%d WriteFrame calls for 8 records: failed frames must not be retried", calls)
	}
}

func TestLoggerTooLarge(t *testing.T) {
	enc := NewEncoder(EncoderOptions{Types: TypesAll})
	w := &fakeWriter{keep: true}
	l := NewLogger(LoggerOptions{MaxFrameSize: 600}, enc, w, nil)
	tr := txnN(0)
	tr.Response = dnsMsg(1, 1000, 'r') // FORWARDER_RESPONSE and CLIENT_RESPONSE are too large
	l.Submit(tr)
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := checkBooks(t, l, w)
	if st.DroppedTooLarge != 2 || st.Written != 2 {
		t.Fatalf("too large %d written %d, want 2 and 2", st.DroppedTooLarge, st.Written)
	}
}

// TestDefaultMaxFrameSize checks the documented claim: with identity and
// version of 255 bytes and the longest annotation, every record of a
// transaction with 64 KiB TCP messages fits the default frame limit.
func TestDefaultMaxFrameSize(t *testing.T) {
	long := bytes.Repeat([]byte{'i'}, 255)
	enc := NewEncoder(EncoderOptions{Identity: long, Version: long, Types: TypesAll})
	tr := answeredTCP6()
	tr.Seq = ^uint64(0)
	tr.Flags = txn.Malformed | txn.Truncated
	tr.Query, tr.Response = dnsMsg(1, 65535, 'q'), dnsMsg(1, 65535, 'r')
	w := &fakeWriter{}
	l := NewLogger(LoggerOptions{}, enc, w, nil)
	l.Submit(tr)
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := checkBooks(t, l, w); st.Written != 4 {
		t.Fatalf("%+v: a 64 KiB message does not fit the default frame size", st)
	}
}

func TestLoggerShutdownStuck(t *testing.T) {
	enc := NewEncoder(EncoderOptions{Types: TypesClient})
	w := &fakeWriter{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	l := NewLogger(LoggerOptions{}, enc, w, nil)
	l.Start()
	for i := range 10 {
		l.Submit(answeredN(i))
	}
	<-w.entered // stuck writing the first record of transaction 0
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := l.Shutdown(ctx)
	if !errors.Is(err, ErrDrainTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v, want ErrDrainTimeout and context.Canceled", err)
	}
	// Transactions 1..9 were queued: counted at once.
	if st := l.Stats(); st.DroppedShutdown != 9*2 {
		t.Fatalf("dropped_shutdown %d, want 18", st.DroppedShutdown)
	}
	l.Submit(answeredN(100)) // after Shutdown: counted, not queued
	if st := l.Stats(); st.DroppedShutdown != 10*2 {
		t.Fatalf("dropped_shutdown %d after a late Submit, want 20", st.DroppedShutdown)
	}
	close(w.block) // the write in progress completes; its other record is abandoned
	st := checkBooks(t, l, w)
	if st.Written != 1 || st.DroppedShutdown != 21 {
		t.Fatalf("%+v: want 1 written and 21 dropped_shutdown", st)
	}
}

func TestLoggerShutdownIdempotent(t *testing.T) {
	w := &fakeWriter{}
	l := NewLogger(LoggerOptions{}, NewEncoder(EncoderOptions{}), w, nil)
	l.Start()
	l.Submit(txnN(0))
	for range 2 {
		if err := l.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	checkBooks(t, l, w)
}

func TestLoggerRun(t *testing.T) {
	w := &fakeWriter{flushed: make(chan struct{}, 1)}
	l := NewLogger(LoggerOptions{}, NewEncoder(EncoderOptions{}), w, nil)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- l.Run(ctx) }()
	l.Submit(txnN(0))
	<-w.flushed // written and flushed once the queue went idle
	if _, ok, _, _ := w.counts(); ok != 2 {
		t.Fatalf("%d frames written before the idle flush, want 2", ok)
	}
	l.Submit(answeredN(2))
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := checkBooks(t, l, w); st.Written != 4 {
		t.Fatalf("written %d, want 4", st.Written)
	}
}

func TestLoggerSampling(t *testing.T) {
	w := &fakeWriter{}
	l := NewLogger(LoggerOptions{SampleRate: 4}, NewEncoder(EncoderOptions{Types: TypeClientQuery}), w, nil)
	for i := range 100 {
		l.Submit(txnN(i))
	}
	l.Submit(nil)
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := checkBooks(t, l, w)
	if st.Submitted != 101 || st.SampledOut != 75 || st.Produced != 25 || st.Written != 25 {
		t.Fatalf("%+v", st)
	}
}

func TestSubmitAllocs(t *testing.T) {
	enc := NewEncoder(EncoderOptions{Types: TypesAll})
	tr := answeredTCP6()
	t.Run("enqueue", func(t *testing.T) {
		l := NewLogger(LoggerOptions{QueueEntries: 4096}, enc, &fakeWriter{}, nil)
		if a := testing.AllocsPerRun(1000, func() { l.Submit(tr) }); a != 0 {
			t.Fatalf("Submit allocates %.1f times", a)
		}
		if st := l.Stats(); st.DroppedQueueFull != 0 {
			t.Fatalf("queue filled up: %+v", st)
		}
	})
	t.Run("queue full", func(t *testing.T) {
		l := NewLogger(LoggerOptions{QueueEntries: 1}, enc, &fakeWriter{}, nil)
		if a := testing.AllocsPerRun(1000, func() { l.Submit(tr) }); a != 0 {
			t.Fatalf("Submit allocates %.1f times", a)
		}
		if st := l.Stats(); st.DroppedQueueFull == 0 {
			t.Fatalf("queue never full: %+v", st)
		}
	})
	t.Run("with writer", func(t *testing.T) {
		// The whole pipeline in steady state: Submit, encode, write, flush.
		w := &fakeWriter{}
		l := NewLogger(LoggerOptions{}, enc, w, nil)
		l.Start()
		for range 100 {
			l.Submit(tr)
		}
		if a := testing.AllocsPerRun(2000, func() { l.Submit(tr) }); a != 0 {
			t.Fatalf("Submit + writer allocate %.2f times per transaction", a)
		}
		if err := l.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		checkBooks(t, l, w)
	})
}

// TestArenaIntegrity submits transactions of random sizes and pops them in
// random batches without a writer goroutine; every popped slot must still
// hold exactly the bytes that were submitted, so reservations never overlap.
func TestArenaIntegrity(t *testing.T) {
	enc := NewEncoder(EncoderOptions{})
	l := NewLogger(LoggerOptions{QueueEntries: 50, QueueBytes: MinQueueBytes}, enc, &fakeWriter{}, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	var next, checked, lastSeq uint64
	fill := func(seq uint64, n int, salt byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(seq) ^ byte(i) ^ salt
		}
		return b
	}
	for range 8000 {
		if rng.IntN(3) > 0 {
			tr := txnN(0)
			tr.Seq = next
			next++
			tr.Query = fill(tr.Seq, rng.IntN(20000), 'q')
			switch rng.IntN(4) {
			case 0:
				tr.Response = nil
			case 1:
				tr.Response = []byte{}
			default:
				tr.Response = fill(tr.Seq, rng.IntN(30000), 'r')
			}
			before := l.Stats().DroppedQueueFull
			l.Submit(tr)
			if l.Stats().DroppedQueueFull != before {
				// Dropped: make sure there really was no room.
				l.mu.Lock()
				_, ok := l.reserve((len(tr.Query) + len(tr.Response) + 7) &^ 7)
				full := l.count == len(l.slots)
				l.mu.Unlock()
				if ok && !full {
					t.Fatalf("seq %d dropped although it fits", tr.Seq)
				}
			}
			continue
		}
		l.mu.Lock()
		for n := rng.IntN(4); n > 0 && l.count > 0; n-- {
			s := &l.slots[l.head]
			q := l.arena[s.off : s.off+s.qlen]
			r := l.arena[s.off+s.qlen : s.off+s.qlen+s.rlen]
			if s.off < 0 || s.off+s.need > len(l.arena) {
				t.Fatalf("seq %d outside the arena", s.t.Seq)
			}
			if !bytes.Equal(q, fill(s.t.Seq, s.qlen, 'q')) || (s.rlen > 0 && !bytes.Equal(r, fill(s.t.Seq, s.rlen, 'r'))) {
				t.Fatalf("seq %d: bytes overwritten", s.t.Seq)
			}
			if s.t.Seq < lastSeq {
				t.Fatalf("seq %d popped after %d: not FIFO", s.t.Seq, lastSeq)
			}
			lastSeq = s.t.Seq
			checked++
			l.pop()
			if l.count == 0 && (l.head != 0 || l.aHead != 0 || l.aTail != 0) {
				// An empty queue starts again at the front: only the
				// first pages of the rings stay resident at modest rates.
				t.Fatalf("empty queue left at slot %d, arena [%d, %d)", l.head, l.aHead, l.aTail)
			}
		}
		l.mu.Unlock()
	}
	if checked < 1000 {
		t.Fatalf("only %d slots checked", checked)
	}
}

// countingHandler counts Warn records.
type countingHandler struct{ warns atomic.Int64 }

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn {
		h.warns.Add(1)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func BenchmarkSubmit(b *testing.B) {
	enc := NewEncoder(EncoderOptions{Types: TypesAll})
	tr := answeredTCP6()
	w := &fakeWriter{}
	l := NewLogger(LoggerOptions{}, enc, w, nil)
	l.Start()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Submit(tr)
		}
	})
	b.StopTimer()
	if err := l.Shutdown(context.Background()); err != nil {
		b.Fatal(err)
	}
	st := l.Stats()
	b.ReportMetric(float64(st.DroppedQueueFull)/float64(st.Produced), "dropped/record")
}
