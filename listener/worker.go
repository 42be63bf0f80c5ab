package listener

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/internal/faultinject"
	"github.com/tapproxy/tapproxy/internal/txn"
)

// BatchSize is how many datagrams one recvmmsg/sendmmsg moves at most.
const BatchSize = 32

// QueryHandler takes the queries of one read that passed the header and ACL
// checks. It must not retain pkts or their buffers after it returns, and it
// may rewrite the bytes in place (the upstream leg's ID).
type QueryHandler interface {
	HandleQueries(pkts []*Packet, readTime int64)
}

// Stats counts the fate of every datagram read on a client socket. Each
// datagram lands in exactly one of DroppedShort, DroppedQR, RefusedACL,
// DroppedACL, DroppedPanic, or Handled (passed to the QueryHandler, which
// counts on).
type Stats struct {
	Received     atomic.Uint64
	DroppedShort atomic.Uint64 // shorter than the 12-byte header
	DroppedQR    atomic.Uint64 // QR=1: a response sent to a server port (reflection)
	RefusedACL   atomic.Uint64
	DroppedACL   atomic.Uint64
	// DroppedPanic: sorting the datagram panicked (a bug); recovered,
	// dropped, logged at a limited rate.
	DroppedPanic atomic.Uint64
	Handled      atomic.Uint64
}

// WorkerConfig configures a client-socket worker.
type WorkerConfig struct {
	ACL *ACL
	// ACLAction is stored into ACL (ACL.SetAction), which every worker
	// reads per packet, so a reload can change both at once.
	ACLAction ACLAction
	Sink      txn.Sink
	Seq       *txn.Seq
	Log       *slog.Logger
}

// Worker reads one client socket in batches and hands queries on. It is the
// only reader of its socket: one fixed goroutine per SO_REUSEPORT socket.
type Worker struct {
	conn     *Conn
	cfg      WorkerConfig
	h        QueryHandler
	batch    *Batch
	reader   *Reader
	accepted []*Packet
	// REFUSED replies for ACL rejects are built here and sent in one batch.
	refuse  *Batch
	refuseW *Writer
	refIdx  []int
	q       dnswire.Question
	tx      txn.Transaction
	stats   Stats
	panics  faultinject.PanicLog
	// fault, set only by tests in this package, runs before each datagram
	// is sorted (see internal/faultinject); nil otherwise.
	fault func()
}

// NewWorker builds the worker for conn.
func NewWorker(conn *Conn, cfg WorkerConfig, h QueryHandler) *Worker {
	if cfg.ACL == nil {
		cfg.ACL = AllowAll()
	}
	cfg.ACL.SetAction(cfg.ACLAction)
	if cfg.Sink == nil {
		cfg.Sink = txn.Discard{}
	}
	if cfg.Seq == nil {
		cfg.Seq = new(txn.Seq)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	w := &Worker{conn: conn, cfg: cfg, h: h,
		batch:    NewBatch(BatchSize, MaxDatagram),
		accepted: make([]*Packet, 0, BatchSize),
		refuse:   NewBatch(BatchSize, 512),
		refuseW:  conn.NewWriter(BatchSize),
		refIdx:   make([]int, 0, BatchSize),
	}
	w.reader = conn.NewReader(w.batch)
	return w
}

// Stats returns the worker's counters.
func (w *Worker) Stats() *Stats { return &w.stats }

// Conn returns the worker's socket.
func (w *Worker) Conn() *Conn { return w.conn }

// Run reads until ctx is done. It does not close the socket: replies to
// in-flight queries still leave through it during shutdown.
func (w *Worker) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = w.conn.Unblock() })
	defer stop()
	var lastErr time.Time
	// One closure per Run, not per batch. A batch read as ctx ends is
	// still handled: its datagrams are counted and forwarded like any other.
	onBatch := func(n int) bool {
		w.handle(n, time.Now().UnixNano())
		return ctx.Err() == nil
	}
	for {
		err := w.reader.ReadLoop(onBatch)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Transient socket errors (ENOBUFS, ICMP-reported errors)
			// must not spin the CPU or flood the log.
			if time.Since(lastErr) > 5*time.Second {
				w.cfg.Log.Warn("reading client socket", "addr", w.conn.LocalAddr(), "err", err)
				lastErr = time.Now()
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func (w *Worker) handle(n int, readTime int64) {
	w.accepted = w.accepted[:0]
	w.refIdx = w.refIdx[:0]
	w.stats.Received.Add(uint64(n))
	for i := 0; i < n; i++ {
		w.admit(i)
	}
	if len(w.accepted) > 0 {
		w.stats.Handled.Add(uint64(len(w.accepted)))
		w.h.HandleQueries(w.accepted, readTime)
	}
	if len(w.refIdx) > 0 {
		w.sendRefused(readTime)
	}
}

// admit sorts datagram i of the batch into exactly one fate. A panic while
// doing so (a bug tripped by hostile input) is recovered here, per datagram,
// so that the rest of the batch and the worker go on; the datagram then
// counts as DroppedPanic. Appending to accepted or refIdx is the last step,
// so a recovered datagram is never also handed on.
func (w *Worker) admit(i int) {
	defer func() {
		if v := recover(); v != nil {
			w.stats.DroppedPanic.Add(1)
			w.panics.Report(w.cfg.Log, "listener.udp", v)
		}
	}()
	if w.fault != nil {
		w.fault()
	}
	p := &w.batch.Pkts[i]
	if p.N < dnswire.HeaderLen {
		w.stats.DroppedShort.Add(1)
		return
	}
	h, _ := dnswire.ParseHeader(p.Data())
	if h.QR() {
		// Never forward or answer responses: they are either
		// misdirected or a reflection attempt.
		w.stats.DroppedQR.Add(1)
		return
	}
	if !w.cfg.ACL.Allowed(p.Peer.Addr()) {
		if w.cfg.ACL.Action() == ACLDrop {
			w.stats.DroppedACL.Add(1)
			return
		}
		w.stats.RefusedACL.Add(1)
		w.refIdx = append(w.refIdx, i)
		return
	}
	w.accepted = append(w.accepted, p)
}

// sendRefused answers ACL rejects with REFUSED: header and question only,
// never larger than the query.
func (w *Worker) sendRefused(readTime int64) {
	for k, i := range w.refIdx {
		p := &w.batch.Pkts[i]
		r := &w.refuse.Pkts[k]
		var qp *dnswire.Question
		if dnswire.ParseQuestion(p.Data(), &w.q) == nil && w.q.End <= len(r.Buf) {
			qp = &w.q
		}
		out := dnswire.AppendErrorReply(r.Buf[:0], p.Data(), qp, dnswire.RcodeRefused)
		r.N = len(out)
		r.Peer, r.Local, r.IfIndex = p.Peer, p.Local, p.IfIndex
	}
	m := len(w.refIdx)
	_, _ = w.refuseW.Write(w.refuse.Pkts[:m])
	sent := time.Now().UnixNano()
	for k, i := range w.refIdx {
		p := &w.batch.Pkts[i]
		r := &w.refuse.Pkts[k]
		t := &w.tx
		*t = txn.Transaction{Seq: w.cfg.Seq.Next(), Transport: txn.UDP, Outcome: txn.Refused,
			Client: p.Peer, Query: p.Data(), QueryKernel: p.KernelTime, QueryRead: readTime}
		t.Local = localAddrPort(w.conn, p)
		if r.N > 0 {
			t.Response = r.Buf[:r.N]
			t.ReplySent = sent
		}
		w.cfg.Sink.Submit(t)
	}
}
