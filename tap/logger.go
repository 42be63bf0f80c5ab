package tap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tapproxy/tapproxy/internal/faultinject"
	"github.com/tapproxy/tapproxy/internal/txn"
)

// Defaults and limits of LoggerOptions.
const (
	DefaultQueueEntries = 8192
	DefaultQueueBytes   = 4 << 20
	// MinQueueBytes is the smallest byte bound: it holds one transaction
	// with a 64 KiB query and a 64 KiB response (the largest DNS messages,
	// RFC 1035 §4.2.2), so such a transaction is never too large to queue.
	MinQueueBytes = 256 << 10
	// DefaultMaxFrameSize is the largest frame written by default: a 64 KiB
	// DNS message plus 4 KiB for identity, version, the annotation and the
	// protobuf framing (about 400 bytes when identity and version are short).
	// It stays under golang-dnstap's 96 KiB reader limit.
	DefaultMaxFrameSize = 64<<10 + 4<<10
	DefaultFlush        = 100 * time.Millisecond
	DefaultSummary      = 5 * time.Second
	DefaultDrainTimeout = 5 * time.Second

	// Backoff after a failed WriteFrame: the next frame is tried after
	// minBackoff, doubling on each consecutive failure up to maxBackoff.
	minBackoff = 10 * time.Millisecond
	maxBackoff = time.Second
)

// LoggerOptions configure a Logger. Zero values mean the defaults.
type LoggerOptions struct {
	// QueueEntries bounds the queued transactions (default 8192).
	QueueEntries int
	// QueueBytes bounds the queued DNS message bytes (default 4 MiB: about 200 ms of
	// traffic at 100 000 qps, and RSS that a router can afford;
	// raised to MinQueueBytes if below). The whole arena is allocated
	// up front so Submit never allocates.
	QueueBytes int
	// MaxFrameSize: a record whose serialized Dnstap message is longer is
	// not written and is counted as dropped_too_large (default
	// DefaultMaxFrameSize). There is no truncated fallback: dnstap messages
	// are verbatim or absent.
	MaxFrameSize int
	// SampleRate logs one transaction in N (those with Seq%N == 0);
	// 0 and 1 log all.
	SampleRate uint64
	// FlushInterval is the longest time written frames wait for a Flush
	// while the queue stays busy (default 100 ms). The writer also flushes
	// whenever the queue becomes empty.
	FlushInterval time.Duration
	// SummaryInterval is how often, at most, a line about drops is logged
	// (default 5 s).
	SummaryInterval time.Duration
	// DrainTimeout bounds the drain when Run's context ends (default 5 s).
	DrainTimeout time.Duration
}

// Stats are the Logger's counters. Records are dnstap messages (frames).
// Once the writer has finished (Done is closed),
//
//	Produced == Written + DroppedQueueFull + DroppedTooLarge + DroppedWriteError + DroppedShutdown + DroppedPanic
//
// Before that the difference is the records queued or being written.
type Stats struct {
	Submitted  uint64 // transactions passed to Submit
	SampledOut uint64 // transactions skipped by sampling: no records produced
	Produced   uint64 // records produced by the transactions that were not sampled out

	Written           uint64 // records accepted by FrameWriter.WriteFrame
	DroppedQueueFull  uint64 // dropped_queue_full: the queue had no entry or byte room
	DroppedTooLarge   uint64 // dropped_too_large: frame above MaxFrameSize
	DroppedWriteError uint64 // dropped_write_error: WriteFrame failed (not retried)
	DroppedShutdown   uint64 // dropped_shutdown: still queued when the drain deadline passed, or submitted after Shutdown
	DroppedPanic      uint64 // dropped_panic: encoding the transaction panicked (a bug); recovered, logged at a limited rate

	Flushes     uint64 // successful FrameWriter.Flush calls
	FlushErrors uint64 // failed Flush calls (frames the FrameWriter loses then are its to count)
}

// Dropped returns the sum of the dropped_* counters.
func (s Stats) Dropped() uint64 {
	return s.DroppedQueueFull + s.DroppedTooLarge + s.DroppedWriteError + s.DroppedShutdown + s.DroppedPanic
}

// ErrDrainTimeout is wrapped by Shutdown's error when its context ended
// before the queue was written out.
var ErrDrainTimeout = errors.New("tap: dnstap queue not drained before deadline")

// slot is one queued transaction. Its Query and Response bytes live in the
// arena at [off, off+qlen) and [off+qlen, off+qlen+rlen).
type slot struct {
	t       txn.Transaction // Query and Response are nil here
	off     int
	need    int // arena bytes reserved (qlen+rlen rounded up to 8)
	qlen    int
	rlen    int
	hasResp bool
	records uint8
}

// Logger is a txn.Sink that queues transactions and writes them as dnstap
// frames from one writer goroutine. Submit never blocks and never allocates
// in steady state.
type Logger struct {
	enc      *Encoder
	w        FrameWriter
	log      *slog.Logger
	sample   atomic.Uint64
	maxFrame int
	flushInt time.Duration
	sumInt   time.Duration
	drainTO  time.Duration

	mu    sync.Mutex
	slots []slot // ring: count entries from head
	head  int
	count int
	// arena is a byte ring used in FIFO order: entries are contiguous, and
	// an entry that does not fit before the end starts again at 0 (the
	// tail end is wasted until the ring wraps back).
	arena   []byte
	aHead   int  // start of the oldest entry's bytes
	aTail   int  // end of the newest entry's bytes
	wrapped bool // newest entries lie in [0, aTail), oldest in [aHead, len)
	closed  bool // Shutdown began: Submit counts dropped_shutdown
	waiting bool // the writer sleeps on wake
	// lingering: the writer was woken for a first record and lets a batch
	// gather for Linger; urgent is the queue length that cuts that short.
	lingering bool
	urgent    int
	inHand    bool // the writer is encoding the head slot
	abandon   bool // the drain deadline passed

	wake        chan struct{} // capacity 1
	abandonCh   chan struct{} // closed when abandon is set
	done        chan struct{} // closed after w.Close when the writer exits
	startOnce   sync.Once
	abandonOnce sync.Once
	closeErr    error // w.Close's result, written before done is closed

	submitted, sampledOut, produced                   atomic.Uint64
	written, dQueueFull, dTooLarge, dWriteErr, dShutd atomic.Uint64
	dPanic, flushes, flushErrs                        atomic.Uint64
	panics                                            faultinject.PanicLog
	// fault, set only by tests in this package, runs in the writer
	// goroutine before each transaction is encoded (internal/faultinject).
	fault func(t *txn.Transaction)
}

// NewLogger returns a Logger that encodes with enc and writes to w. It
// starts nothing: call Start or Run.
func NewLogger(opts LoggerOptions, enc *Encoder, w FrameWriter, log *slog.Logger) *Logger {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.QueueEntries <= 0 {
		opts.QueueEntries = DefaultQueueEntries
	}
	if opts.QueueBytes == 0 {
		opts.QueueBytes = DefaultQueueBytes
	}
	if opts.QueueBytes < MinQueueBytes {
		log.Warn("dnstap queue byte bound raised to the minimum", "requested", opts.QueueBytes, "used", MinQueueBytes)
		opts.QueueBytes = MinQueueBytes
	}
	if opts.MaxFrameSize <= 0 {
		opts.MaxFrameSize = DefaultMaxFrameSize
	}
	if opts.SampleRate == 0 {
		opts.SampleRate = 1
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = DefaultFlush
	}
	if opts.SummaryInterval <= 0 {
		opts.SummaryInterval = DefaultSummary
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	l := &Logger{
		enc:       enc,
		w:         w,
		log:       log,
		maxFrame:  opts.MaxFrameSize,
		flushInt:  opts.FlushInterval,
		urgent:    max(1, min(opts.QueueEntries/8, 256)),
		sumInt:    opts.SummaryInterval,
		drainTO:   opts.DrainTimeout,
		slots:     make([]slot, opts.QueueEntries),
		arena:     make([]byte, opts.QueueBytes&^7),
		wake:      make(chan struct{}, 1),
		abandonCh: make(chan struct{}),
		done:      make(chan struct{}),
	}
	l.sample.Store(opts.SampleRate)
	return l
}

// SetSampleRate changes the 1-in-N sampling at run time (SIGHUP reload);
// 0 and 1 log every transaction.
func (l *Logger) SetSampleRate(n uint64) { l.sample.Store(max(n, 1)) }

// Stats returns a snapshot of the counters (each read atomically).
func (l *Logger) Stats() Stats {
	return Stats{
		Submitted:         l.submitted.Load(),
		SampledOut:        l.sampledOut.Load(),
		Produced:          l.produced.Load(),
		Written:           l.written.Load(),
		DroppedQueueFull:  l.dQueueFull.Load(),
		DroppedTooLarge:   l.dTooLarge.Load(),
		DroppedWriteError: l.dWriteErr.Load(),
		DroppedShutdown:   l.dShutd.Load(),
		DroppedPanic:      l.dPanic.Load(),
		Flushes:           l.flushes.Load(),
		FlushErrors:       l.flushErrs.Load(),
	}
}

// Submit implements txn.Sink: it copies t's fixed fields and its Query and
// Response bytes into the queue, or counts the records as dropped. It never
// blocks (one short critical section) and does not retain t.
func (l *Logger) Submit(t *txn.Transaction) {
	l.submitted.Add(1)
	if t == nil {
		return
	}
	if n := l.sample.Load(); n > 1 && t.Seq%n != 0 {
		l.sampledOut.Add(1)
		return
	}
	n := l.enc.Records(t)
	if n == 0 {
		return
	}
	l.produced.Add(uint64(n))
	qlen, rlen := len(t.Query), len(t.Response)
	need := (qlen + rlen + 7) &^ 7

	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.dShutd.Add(uint64(n))
		return
	}
	if need > len(l.arena) {
		l.mu.Unlock()
		l.dTooLarge.Add(uint64(n))
		return
	}
	off, ok := l.reserve(need)
	if !ok || l.count == len(l.slots) {
		l.mu.Unlock()
		l.dQueueFull.Add(uint64(n))
		return
	}
	copy(l.arena[off:], t.Query)
	copy(l.arena[off+qlen:], t.Response)
	i := l.head + l.count
	if i >= len(l.slots) {
		i -= len(l.slots)
	}
	s := &l.slots[i]
	s.t = *t
	s.t.Query, s.t.Response = nil, nil
	s.off, s.need, s.qlen, s.rlen = off, need, qlen, rlen
	s.hasResp = t.Response != nil
	s.records = uint8(n)
	l.commit(off, need)
	l.count++
	// Wake the writer for the first record after it went idle, and during
	// its linger only once a batch has built up (a wake-up per record
	// would cost a goroutine switch and a write(2) per DNS transaction).
	wake := l.waiting || (l.lingering && l.count >= l.urgent)
	if wake {
		l.waiting, l.lingering = false, false
	}
	l.mu.Unlock()
	if wake {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// reserve finds need contiguous arena bytes after the newest entry; commit
// records them. Both run under mu.
func (l *Logger) reserve(need int) (int, bool) {
	switch {
	case l.count == 0:
		return 0, true // the arena is empty and was reset to 0
	case l.wrapped:
		if l.aTail+need <= l.aHead {
			return l.aTail, true
		}
	case l.aTail+need <= len(l.arena):
		return l.aTail, true
	case need <= l.aHead:
		return 0, true
	}
	return 0, false
}

func (l *Logger) commit(off, need int) {
	if l.count == 0 {
		l.aHead, l.wrapped = off, false
	} else if off < l.aTail {
		l.wrapped = true
	}
	l.aTail = off + need
}

// pop releases the head slot. Runs under mu.
func (l *Logger) pop() {
	old := l.slots[l.head].off
	l.slots[l.head].t = txn.Transaction{} // drop address zone references
	l.head++
	if l.head == len(l.slots) {
		l.head = 0
	}
	l.count--
	if l.count == 0 {
		// An empty queue starts again at the front of both rings, so at
		// moderate rates (the writer empties the queue every few ms) only
		// their first pages are ever touched: the slot ring alone is
		// 2.3 MiB at the default 8192 entries, resident once cycled.
		l.head = 0
		l.aHead, l.aTail, l.wrapped = 0, 0, false
		return
	}
	next := l.slots[l.head].off
	if next < old {
		l.wrapped = false // the oldest entry is now in the part that wrapped to 0
	}
	l.aHead = next
}

// Start starts the writer goroutine; later calls do nothing.
func (l *Logger) Start() {
	l.startOnce.Do(func() { go l.writeLoop() })
}

// Done is closed when the writer goroutine has finished: the queue is
// drained or abandoned and the FrameWriter is closed. Stats are final then.
func (l *Logger) Done() <-chan struct{} { return l.done }

// Run starts the writer, waits for ctx to end, then shuts down with a drain
// bounded by LoggerOptions.DrainTimeout.
func (l *Logger) Run(ctx context.Context) error {
	l.Start()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.drainTO)
	defer cancel()
	return l.Shutdown(sctx)
}

// Shutdown stops accepting transactions (later Submits count
// dropped_shutdown), lets the writer drain the queue, flush and Close the
// FrameWriter, and returns Close's error. If ctx ends first, the records
// still queued are counted dropped_shutdown, the writer gives up after the
// WriteFrame in progress (bounded by the FrameWriter's deadlines), closes the
// FrameWriter and closes Done; Shutdown returns at once with ErrDrainTimeout.
func (l *Logger) Shutdown(ctx context.Context) error {
	l.Start()
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	select {
	case <-l.done:
		return l.closeErr
	case <-ctx.Done():
		select {
		case <-l.done: // both ready: the drain did finish
			return l.closeErr
		default:
		}
	}
	l.mu.Lock()
	l.abandon = true
	var n uint64
	keep := 0
	if l.inHand {
		keep = 1 // the writer owns the head slot and accounts for it
	}
	for l.count > keep {
		i := l.head + l.count - 1
		if i >= len(l.slots) {
			i -= len(l.slots)
		}
		n += uint64(l.slots[i].records)
		l.slots[i].t = txn.Transaction{}
		l.count--
	}
	if l.count == 1 {
		s := &l.slots[l.head]
		l.aHead, l.aTail, l.wrapped = s.off, s.off+s.need, false
	} else {
		l.aHead, l.aTail, l.wrapped = 0, 0, false
	}
	l.mu.Unlock()
	l.dShutd.Add(n)
	l.abandonOnce.Do(func() { close(l.abandonCh) })
	return fmt.Errorf("%w (%d records dropped): %w", ErrDrainTimeout, n, ctx.Err())
}

// dropTotals is what the last drop summary reported.
type dropTotals struct {
	queueFull, tooLarge, writeErr, shutdown, panicked, flushErr uint64
}

func (l *Logger) dropTotals() dropTotals {
	return dropTotals{l.dQueueFull.Load(), l.dTooLarge.Load(), l.dWriteErr.Load(), l.dShutd.Load(), l.dPanic.Load(), l.flushErrs.Load()}
}

// writer is the state of the writer goroutine.
type writer struct {
	l         *Logger
	buf       []byte
	ends      []int
	t         txn.Transaction
	dirty     bool // frames written since the last Flush
	lastFlush time.Time
	backoff   time.Duration
	timer     *time.Timer
	lastErr   error // last WriteFrame or Flush error, for the summary
	reported  dropTotals
	lastSum   time.Time
}

func (l *Logger) writeLoop() {
	now := time.Now()
	wr := &writer{
		l:         l,
		buf:       make([]byte, 0, 4*l.maxFrame),
		ends:      make([]int, 0, 4),
		lastFlush: now,
		lastSum:   now,
		timer:     time.NewTimer(time.Hour),
	}
	wr.timer.Stop()
	abandoned := wr.loop()
	if !abandoned && wr.dirty {
		wr.flush()
	}
	l.closeErr = l.w.Close()
	wr.summary(time.Now(), true)
	st := l.Stats()
	l.log.Info("dnstap writer stopped", "produced", st.Produced, "written", st.Written,
		"dropped_queue_full", st.DroppedQueueFull, "dropped_too_large", st.DroppedTooLarge,
		"dropped_write_error", st.DroppedWriteError, "dropped_shutdown", st.DroppedShutdown,
		"dropped_panic", st.DroppedPanic, "sampled_out", st.SampledOut, "close_error", l.closeErr)
	close(l.done)
}

// loop runs until the queue is empty after Shutdown (false) or the drain
// was abandoned (true).
func (wr *writer) loop() bool {
	l := wr.l
	for {
		l.mu.Lock()
		if l.abandon {
			l.mu.Unlock()
			return true
		}
		if l.count == 0 {
			if l.closed {
				l.mu.Unlock()
				return false
			}
			l.waiting = true
			l.mu.Unlock()
			wr.idle()
			continue
		}
		s := &l.slots[l.head]
		wr.t = s.t
		wr.t.Query = l.arena[s.off : s.off+s.qlen : s.off+s.qlen]
		if s.hasResp {
			r := s.off + s.qlen
			wr.t.Response = l.arena[r : r+s.rlen : r+s.rlen]
		}
		want := int(s.records)
		l.inHand = true
		l.mu.Unlock()

		// The slot's arena bytes stay reserved until pop, and Submit only
		// writes unreserved bytes, so reading them unlocked is safe.
		ok := wr.encode()
		wr.t = txn.Transaction{}

		l.mu.Lock()
		l.pop()
		l.inHand = false
		l.mu.Unlock()

		if !ok {
			l.dPanic.Add(uint64(want))
		} else if len(wr.ends) != want {
			// Records and EncodeTransaction disagree: a bug, but keep the
			// books balanced rather than lose track of records.
			l.log.Error("dnstap encoder produced an unexpected record count", "want", want, "got", len(wr.ends))
			if len(wr.ends) > want {
				l.produced.Add(uint64(len(wr.ends) - want))
			} else {
				l.dTooLarge.Add(uint64(want - len(wr.ends)))
			}
		}
		wr.writeFrames()
		now := time.Now()
		if wr.dirty && now.Sub(wr.lastFlush) >= l.flushInt {
			wr.flush()
		}
		wr.summary(now, false)
	}
}

// encode encodes wr.t into buf and ends. A panic while encoding (a bug
// tripped by a hostile message) is recovered here, per transaction, so the
// writer goroutine and dnstap output go on: nothing of the transaction is
// written and ok is false (the caller counts its records dropped_panic).
// No lock is held while encoding, so recovering leaves none held.
func (wr *writer) encode() (ok bool) {
	l := wr.l
	defer func() {
		if v := recover(); v != nil {
			wr.buf, wr.ends = wr.buf[:0], wr.ends[:0]
			l.panics.Report(l.log, "tap.encode", v)
			ok = false
		}
	}()
	if l.fault != nil {
		l.fault(&wr.t)
	}
	wr.buf, wr.ends = l.enc.EncodeTransaction(wr.buf[:0], wr.ends[:0], &wr.t)
	return true
}

// writeFrames writes the frames in buf, counting each one's fate once.
func (wr *writer) writeFrames() {
	l := wr.l
	start := 0
	for i, end := range wr.ends {
		frame := wr.buf[start:end]
		start = end
		if wr.abandoned() {
			l.dShutd.Add(uint64(len(wr.ends) - i))
			return
		}
		if len(frame) > l.maxFrame {
			l.dTooLarge.Add(1)
			continue
		}
		if err := l.w.WriteFrame(frame); err != nil {
			l.dWriteErr.Add(1)
			wr.lastErr = err
			wr.sleepBackoff()
			continue
		}
		l.written.Add(1)
		wr.backoff = 0
		wr.dirty = true
	}
}

func (wr *writer) abandoned() bool {
	select {
	case <-wr.l.abandonCh:
		return true
	default:
		return false
	}
}

// sleepBackoff waits after a write error so that a failing destination does
// not turn the writer into a busy loop; the queue absorbs (or drops, as
// queue_full) what arrives meanwhile.
func (wr *writer) sleepBackoff() {
	if wr.backoff == 0 {
		wr.backoff = minBackoff
	} else if wr.backoff < maxBackoff {
		wr.backoff = min(2*wr.backoff, maxBackoff)
	}
	wr.timer.Reset(wr.backoff)
	select {
	case <-wr.timer.C:
	case <-wr.l.abandonCh:
		wr.timer.Stop()
	}
}

func (wr *writer) flush() {
	wr.lastFlush = time.Now()
	wr.dirty = false
	if err := wr.l.w.Flush(); err != nil {
		wr.l.flushErrs.Add(1)
		wr.lastErr = err
		return
	}
	wr.l.flushes.Add(1)
}

// idle runs when the queue is empty: flush what was written, then sleep
// until a Submit wakes the writer, Shutdown, or a pending drop summary is due.
func (wr *writer) idle() {
	l := wr.l
	now := time.Now()
	if wr.dirty && now.Sub(wr.lastFlush) >= l.flushInt {
		wr.flush()
	}
	wr.summary(now, false)
	// Wake at least every maintenanceInterval even when nothing happens:
	// the FrameWriter does its housekeeping in Flush (age rotation, a
	// SIGHUP reopen, picking up a collector that came back), and an idle
	// proxy must still carry those out. Written frames are flushed within
	// FlushInterval.
	wait := maintenanceInterval
	if wr.dirty {
		wait = min(wait, wr.lastFlush.Add(l.flushInt).Sub(now))
	}
	if l.dropTotals() != wr.reported {
		wait = min(wait, wr.lastSum.Add(l.sumInt).Sub(now))
	}
	wr.timer.Reset(max(wait, time.Millisecond))
	woken := false
	select {
	case <-l.wake:
		woken = true
	case <-l.abandonCh:
	case <-wr.timer.C:
		if time.Since(wr.lastFlush) >= maintenanceInterval {
			wr.flush()
		}
	}
	wr.timer.Stop()
	if !woken {
		return
	}
	// Linger: let records gather so one wake-up and one write carry many
	// (cut short when the queue reaches urgent, or at shutdown).
	l.mu.Lock()
	if l.closed || l.count >= l.urgent {
		l.mu.Unlock()
		return
	}
	l.lingering = true
	l.mu.Unlock()
	wr.timer.Reset(linger)
	select {
	case <-l.wake:
	case <-l.abandonCh:
	case <-wr.timer.C:
	}
	wr.timer.Stop()
	l.mu.Lock()
	l.lingering = false
	l.mu.Unlock()
}

// linger is how long the writer lets records gather after the first one
// arrives at an idle queue: at most this much is added to logging latency,
// never to DNS.
const linger = 5 * time.Millisecond

// maintenanceInterval is how often an idle writer still calls Flush.
const maintenanceInterval = time.Second

// summary logs one line about the drops since the last line, at most once
// per SummaryInterval (or now when final), never one line per drop.
func (wr *writer) summary(now time.Time, final bool) {
	l := wr.l
	if !final && now.Sub(wr.lastSum) < l.sumInt {
		return
	}
	cur := l.dropTotals()
	if cur == wr.reported {
		return
	}
	p := wr.reported
	wr.reported, wr.lastSum = cur, now
	args := []any{
		"dropped_queue_full", cur.queueFull - p.queueFull,
		"dropped_too_large", cur.tooLarge - p.tooLarge,
		"dropped_write_error", cur.writeErr - p.writeErr,
		"dropped_shutdown", cur.shutdown - p.shutdown,
		"dropped_panic", cur.panicked - p.panicked,
		"flush_errors", cur.flushErr - p.flushErr,
	}
	if wr.lastErr != nil {
		args = append(args, "last_error", wr.lastErr.Error())
	}
	l.log.Warn("dnstap records dropped", args...)
}
