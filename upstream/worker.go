package upstream

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/internal/faultinject"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
)

// Config configures forwarding for one client socket's worker.
type Config struct {
	// Upstreams are the servers, used when Pool is nil (a pool with the
	// default policy, first-available, is built from them).
	Upstreams []netip.AddrPort
	// Pool is the shared upstream pool (selection policy and health).
	Pool *Pool
	// Loop, when set, holds every upstream socket's local address: a query
	// from one of them is tapproxy talking to itself.
	Loop *LoopGuard
	// Timeout is how long a query waits for an acceptable answer.
	Timeout time.Duration
	// MaxInflight bounds this worker's in-flight table (< 65536).
	MaxInflight int
	// SocketsPerUpstream is how many upstream sockets (each with its own
	// kernel-chosen random source port) this worker spreads queries over.
	SocketsPerUpstream int
	// ServfailOnTimeout answers SERVFAIL when the upstream stays silent;
	// by default the client gets nothing, as if the upstream were silent.
	ServfailOnTimeout bool
	// Socket holds buffer sizes for upstream sockets.
	Socket listener.Options
	Sink   txn.Sink
	Seq    *txn.Seq
	Log    *slog.Logger
}

// Defaults for Config fields left zero.
const (
	DefaultTimeout            = 2 * time.Second
	DefaultMaxInflight        = 4096
	DefaultSocketsPerUpstream = 4
)

// Stats counts what happens to forwarded queries and to every datagram read
// on upstream sockets. For queries handed in: Forwarded + DroppedFull +
// SendFailed + ServfailAllDown + LoopDetected + DroppedPanic; for forwarded
// ones: Answered + TimedOut + ReplyFailed + in flight. For upstream
// datagrams: RespReceived = RespMatched + RespShort + RespNotResponse +
// RespWrongSource + RespUnknownID + RespLate + RespQuestionMismatch +
// RespPanic.
type Stats struct {
	Forwarded    atomic.Uint64
	Malformed    atomic.Uint64 // forwarded queries whose question did not parse (a flag, not a fate)
	DroppedFull  atomic.Uint64 // in-flight table full
	SendFailed   atomic.Uint64
	Answered     atomic.Uint64
	TimedOut     atomic.Uint64
	ServfailSent atomic.Uint64 // of TimedOut, those answered with SERVFAIL
	ReplyFailed  atomic.Uint64
	// Answered at once with SERVFAIL, nothing sent upstream.
	ServfailAllDown atomic.Uint64
	LoopDetected    atomic.Uint64
	// DroppedPanic: taking the query in panicked (a bug); recovered,
	// its slot freed, nothing sent, logged at a limited rate.
	DroppedPanic atomic.Uint64
	// Failovers: queries re-sent to another upstream after a fast failure
	// (ICMP unreachable); RetriesDenied: those the retry budget refused.
	Failovers     atomic.Uint64
	RetriesDenied atomic.Uint64

	RespReceived         atomic.Uint64
	RespMatched          atomic.Uint64
	RespShort            atomic.Uint64
	RespNotResponse      atomic.Uint64
	RespWrongSource      atomic.Uint64
	RespUnknownID        atomic.Uint64
	RespLate             atomic.Uint64
	RespQuestionMismatch atomic.Uint64
	// RespPanic: classifying the datagram panicked (a bug); recovered and
	// dropped, the query it might answer stays in flight.
	RespPanic atomic.Uint64
	// RespShort includes datagrams larger than the receive buffer
	// (impossible for UDP/IP; kept so such a fate is never silent).
	RespReadErrors atomic.Uint64 // socket errors (ICMP unreachable → ECONNREFUSED)
}

type usock struct {
	conn     *listener.Conn
	up       *Upstream
	upstream netip.AddrPort
	local    netip.AddrPort
	w        *listener.Writer // used by the client-socket worker goroutine only
	out      []listener.Packet
	// heads holds PROXY v2 headers for one outgoing batch.
	heads []byte
	// fw and fout carry failover re-sends; guarded by Worker.mu.
	fw   *listener.Writer
	fout []listener.Packet
}

// Worker forwards the queries of one client socket. HandleQueries runs on
// the client socket's worker goroutine; each upstream socket has one reader
// goroutine; one sweeper goroutine expires queries. All share the table
// under mu, taken once per batch.
type Worker struct {
	cfg    Config
	client *listener.Conn
	socks  []*usock
	// ranges[u] is the [start, end) of upstream u's sockets in socks.
	ranges [][2]int

	// Immediate SERVFAIL answers (all down, loop) built on the
	// client-socket worker goroutine.
	imm    *listener.Batch
	immW   *listener.Writer
	immIdx []int
	immWhy []txn.Outcome
	immQ   dnswire.Question
	// retryTokens is the failover budget in thousandths of a retry: each
	// forwarded query earns 100 (retries ≤ 10 % of traffic), capped at
	// maxRetryTokens (a burst of 100). Guarded by mu.
	retryTokens int
	foBatch     *listener.Batch

	mu  sync.Mutex
	tab *table

	rnd    [512]byte
	rndPos int
	failed []int32
	tx     txn.Transaction

	stats Stats
	// Recovered panics are reported per loop, so one loop's flood cannot
	// hide another's.
	panicsQ, panicsR faultinject.PanicLog
	wg               sync.WaitGroup
	// faultQuery and faultResp, set only by tests in this package, see
	// each query while it is taken in (slot allocated, mu held) and each
	// upstream datagram before it is classified (internal/faultinject).
	faultQuery, faultResp func(data []byte)
}

// NewWorker opens the upstream sockets for one client socket.
func NewWorker(ctx context.Context, cfg Config, client *listener.Conn) (*Worker, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("upstream: no upstream configured")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	if cfg.MaxInflight > 65535 {
		return nil, fmt.Errorf("upstream: max in-flight %d above 65535", cfg.MaxInflight)
	}
	if cfg.SocketsPerUpstream <= 0 {
		cfg.SocketsPerUpstream = DefaultSocketsPerUpstream
	}
	if cfg.Sink == nil {
		cfg.Sink = txn.Discard{}
	}
	if cfg.Seq == nil {
		cfg.Seq = new(txn.Seq)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Pool == nil {
		var err error
		if cfg.Pool, err = NewPool(SpecsFrom(cfg.Upstreams), FirstAvailable, HealthConfig{}, cfg.Log); err != nil {
			return nil, err
		}
	}
	w := &Worker{cfg: cfg, client: client, rndPos: 512, failed: make([]int32, 0, listener.BatchSize),
		imm: listener.NewBatch(listener.BatchSize, slotQueryCap), immW: client.NewWriter(listener.BatchSize),
		immIdx: make([]int, 0, listener.BatchSize), immWhy: make([]txn.Outcome, 0, listener.BatchSize),
		retryTokens: maxRetryTokens}
	for _, u := range cfg.Pool.Upstreams() {
		start := len(w.socks)
		for i := 0; i < cfg.SocketsPerUpstream; i++ {
			c, err := listener.DialUDP(ctx, u.Addr, cfg.Socket)
			if err != nil {
				w.Close()
				return nil, err
			}
			us := &usock{conn: c, up: u, upstream: u.Addr, local: c.LocalAddr(),
				w: c.NewWriter(listener.BatchSize), out: make([]listener.Packet, 0, listener.BatchSize)}
			if u.ProxyV2 {
				us.heads = make([]byte, listener.BatchSize*MaxProxyV2Header)
			}
			w.socks = append(w.socks, us)
		}
		w.ranges = append(w.ranges, [2]int{start, len(w.socks)})
	}
	w.tab = newTable(cfg.MaxInflight, len(w.socks))
	return w, nil
}

// Stats returns the worker's counters.
func (w *Worker) Stats() *Stats { return &w.stats }

// Sockets returns the upstream sockets (for start-up reports and drop
// counters).
func (w *Worker) Sockets() []*listener.Conn {
	cs := make([]*listener.Conn, len(w.socks))
	for i, s := range w.socks {
		cs[i] = s.conn
	}
	return cs
}

// InFlight returns the number of queries waiting for an answer.
func (w *Worker) InFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tab.inflight()
}

// Start launches the upstream readers and the timeout sweeper; they run
// until ctx is done.
func (w *Worker) Start(ctx context.Context) {
	for i := range w.socks {
		w.wg.Add(1)
		go func() { defer w.wg.Done(); w.readLoop(ctx, i) }()
	}
	w.wg.Add(1)
	go func() { defer w.wg.Done(); w.sweepLoop(ctx) }()
}

// Drain waits until no query is in flight or ctx is done.
func (w *Worker) Drain(ctx context.Context) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for w.InFlight() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Wait waits for the goroutines started by Start to exit.
func (w *Worker) Wait() { w.wg.Wait() }

// Close closes the upstream sockets.
func (w *Worker) Close() {
	for _, s := range w.socks {
		s.conn.Close()
	}
}

// rand16 returns 16 bits from crypto/rand, buffered so the per-query cost
// is a copy, not a syscall (RFC 5452 §9.2: IDs must be unpredictable).
func (w *Worker) rand16() uint16 {
	if w.rndPos+2 > len(w.rnd) {
		_, _ = rand.Read(w.rnd[:]) // never fails since Go 1.24
		w.rndPos = 0
	}
	v := uint16(w.rnd[w.rndPos])<<8 | uint16(w.rnd[w.rndPos+1])
	w.rndPos += 2
	return v
}

// maxRetryTokens caps the failover budget (100 retries' worth).
const maxRetryTokens = 100_000

// HandleQueries implements listener.QueryHandler: each query gets a slot,
// an upstream chosen by the pool's policy, a random socket of that upstream
// and a fresh ID unique on that socket, and is sent upstream. The query's ID
// is rewritten in place in the client's receive buffer; the slot keeps the
// original bytes.
func (w *Worker) HandleQueries(pkts []*listener.Packet, readTime int64) {
	for _, s := range w.socks {
		s.out = s.out[:0]
	}
	w.immIdx, w.immWhy = w.immIdx[:0], w.immWhy[:0]
	now := time.Now().UnixNano()
	deadline := now + int64(w.cfg.Timeout)
	w.mu.Lock()
	for k, p := range pkts {
		w.admitLocked(k, p, now, deadline, readTime)
	}
	w.mu.Unlock()

	w.failed = w.failed[:0]
	for _, s := range w.socks {
		if len(s.out) == 0 {
			continue
		}
		// UpstreamSent is taken right before this socket's sendmmsg, not
		// at the start of the batch, so the logged upstream RTT does not
		// include tapproxy's own work on the rest of the batch. Set under
		// mu: a reader goroutine reads it after matching the answer.
		sent := time.Now().UnixNano()
		w.mu.Lock()
		for k := range s.out {
			w.tab.slots[s.out[k].IfIndex].sentT = sent
		}
		w.mu.Unlock()
		nfail, _ := s.w.Write(s.out)
		w.stats.Forwarded.Add(uint64(len(s.out) - nfail))
		for k := range s.out {
			if s.out[k].N < 0 {
				w.failed = append(w.failed, int32(s.out[k].IfIndex))
			}
		}
	}
	if len(w.failed) > 0 {
		w.failSends()
	}
	if len(w.immIdx) > 0 {
		w.answerNow(pkts, readTime)
	}
}

// admitLocked takes query k in: a slot, an upstream, a socket, a fresh ID,
// and a place in that socket's outgoing batch (or an immediate SERVFAIL, or
// a drop). Called with mu held. A panic (a bug tripped by hostile input) is
// recovered here, per query, with mu still held by the caller: the slot, if
// one was taken, is unbound and freed, and the query counts as DroppedPanic.
// Appending to an outgoing batch and counting the upstream's in-flight
// query are the last steps, so a recovered query is never also sent.
func (w *Worker) admitLocked(k int, p *listener.Packet, now, deadline, readTime int64) {
	i := int32(-1)
	defer func() {
		if v := recover(); v != nil {
			if i >= 0 {
				if w.tab.slots[i].state == slotPending {
					w.tab.detach(i, false)
				}
				w.tab.release(i)
			}
			w.stats.DroppedPanic.Add(1)
			w.panicsQ.Report(w.cfg.Log, "upstream.udp.query", v)
		}
	}()
	if w.cfg.Loop != nil && w.cfg.Loop.Has(p.Peer) {
		// Our own upstream socket asked us: forwarding would loop
		// until the in-flight tables fill. Answer SERVFAIL once.
		w.stats.LoopDetected.Add(1)
		w.immIdx, w.immWhy = append(w.immIdx, k), append(w.immWhy, txn.ServfailLoop)
		return
	}
	i = w.tab.alloc()
	if i < 0 {
		w.stats.DroppedFull.Add(1)
		return
	}
	sl := &w.tab.slots[i]
	data := p.Data()
	sl.qok = dnswire.ParseQuestion(data, &sl.q) == nil
	if w.faultQuery != nil {
		w.faultQuery(data)
	}
	var qname []byte
	if sl.qok {
		qname = sl.q.NameBytes()
	}
	u, err := w.cfg.Pool.Pick(qname)
	if err != nil {
		w.tab.release(i)
		i = -1
		w.stats.ServfailAllDown.Add(1)
		w.immIdx, w.immWhy = append(w.immIdx, k), append(w.immWhy, txn.ServfailAllDown)
		return
	}
	if len(data) <= len(sl.inl) {
		sl.query = append(sl.inl[:0], data...)
	} else {
		sl.query = append([]byte(nil), data...)
	}
	si := w.pickSocket(u.index)
	id := w.freeID(si)
	w.tab.bind(i, si, id)
	s := w.socks[si]
	sl.retried = false
	sl.seq = w.cfg.Seq.Next()
	sl.deadline = deadline
	sl.client = p.Peer
	sl.local = listener.LocalAddrPort(w.client, p)
	sl.ifindex = p.IfIndex
	sl.kernelT, sl.readT, sl.sentT = p.KernelTime, readTime, now
	sl.upLocal = s.local
	out := listener.Packet{Buf: p.Buf, N: p.N}
	if s.heads != nil {
		n := len(s.out)
		out.Head = AppendProxyV2(s.heads[n*MaxProxyV2Header:n*MaxProxyV2Header], sl.client, sl.local, false)
	}
	// Remember which slot this outgoing packet belongs to through
	// its IfIndex field, unused on connected sockets.
	out.IfIndex = uint32(i)
	// Nothing below can panic: the query is now committed.
	if !sl.qok {
		w.stats.Malformed.Add(1)
	}
	u.InFlight.Add(1)
	u.Queries.Add(1)
	w.retryTokens = min(w.retryTokens+100, maxRetryTokens)
	dnswire.SetID(data, id)
	s.out = append(s.out, out)
}

// pickSocket returns a random socket of upstream u. Called with mu held.
func (w *Worker) pickSocket(u int) int {
	r := w.ranges[u]
	if n := r[1] - r[0]; n > 1 {
		return r[0] + int(w.rand16())%n
	}
	return r[0]
}

// freeID returns a random ID not in flight on socket si. Called with mu
// held.
func (w *Worker) freeID(si int) uint16 {
	id := w.rand16()
	for tries := 0; !w.tab.idFree(si, id); tries++ {
		if tries < 8 {
			id = w.rand16()
		} else {
			id++ // the table is far smaller than the ID space
		}
	}
	return id
}

// answerNow sends SERVFAIL for the queries collected in immIdx and
// accounts for them. The ID in pkts is still the client's (nothing was
// rewritten for these).
func (w *Worker) answerNow(pkts []*listener.Packet, readTime int64) {
	for k, pi := range w.immIdx {
		p := pkts[pi]
		r := &w.imm.Pkts[k]
		var qp *dnswire.Question
		if dnswire.ParseQuestion(p.Data(), &w.immQ) == nil && w.immQ.End <= len(r.Buf) {
			qp = &w.immQ
		}
		b := dnswire.AppendErrorReply(r.Buf[:0], p.Data(), qp, dnswire.RcodeServFail)
		r.N, r.Peer, r.Local, r.IfIndex = len(b), p.Peer, p.Local, p.IfIndex
	}
	m := len(w.immIdx)
	_, _ = w.immW.Write(w.imm.Pkts[:m])
	sent := time.Now().UnixNano()
	for k, pi := range w.immIdx {
		p := pkts[pi]
		r := &w.imm.Pkts[k]
		w.tx = txn.Transaction{Seq: w.cfg.Seq.Next(), Transport: txn.UDP, Outcome: w.immWhy[k],
			Client: p.Peer, Local: listener.LocalAddrPort(w.client, p), Query: p.Data(),
			QueryKernel: p.KernelTime, QueryRead: readTime}
		if r.N > 0 {
			w.tx.Response, w.tx.ReplySent = r.Buf[:r.N], sent
		}
		w.cfg.Sink.Submit(&w.tx)
	}
}

// failSends accounts for queries the upstream socket refused to send.
func (w *Worker) failSends() {
	w.mu.Lock()
	kept := w.failed[:0]
	for _, i := range w.failed {
		// A forged answer could have matched the unsent query already;
		// then the reader owns the slot and has accounted for it.
		if w.tab.slots[i].state == slotPending {
			w.tab.detach(i, false)
			kept = append(kept, i)
		}
	}
	w.failed = kept
	w.mu.Unlock()
	for _, i := range w.failed {
		sl := &w.tab.slots[i]
		u := w.socks[sl.sock].up
		u.InFlight.Add(-1)
		w.cfg.Pool.Failure(u, false)
		w.stats.SendFailed.Add(1)
		w.fillTx(sl, txn.SendFailed)
		w.tx.UpstreamSent = 0
		w.cfg.Sink.Submit(&w.tx)
	}
	w.mu.Lock()
	for _, i := range w.failed {
		w.tab.release(i)
	}
	w.mu.Unlock()
}

// fillTx fills w.tx (or another) from a slot being completed.
func fillTx(t *txn.Transaction, sl *slot, up netip.AddrPort, o txn.Outcome) {
	*t = txn.Transaction{
		Seq: sl.seq, Transport: txn.UDP, Outcome: o,
		Client: sl.client, Local: sl.local,
		Upstream: up, UpstreamLocal: sl.upLocal, UpstreamID: sl.id,
		Query:       sl.query,
		QueryKernel: sl.kernelT, QueryRead: sl.readT, UpstreamSent: sl.sentT,
	}
	if !sl.qok {
		t.Flags |= txn.Malformed
	}
}

func (w *Worker) fillTx(sl *slot, o txn.Outcome) {
	fillTx(&w.tx, sl, w.socks[sl.sock].upstream, o)
}

// readLoop reads answers on upstream socket si, matches them (RFC 5452
// §9.1) and relays them to clients in batches.
func (w *Worker) readLoop(ctx context.Context, si int) {
	s := w.socks[si]
	batch := listener.NewBatch(listener.BatchSize, listener.MaxDatagram)
	r := s.conn.NewReader(batch)
	cw := w.client.NewWriter(listener.BatchSize)
	replies := make([]listener.Packet, 0, listener.BatchSize)
	matched := make([]int32, 0, listener.BatchSize)
	lens := make([]int, 0, listener.BatchSize)
	kts := make([]int64, 0, listener.BatchSize)
	var q dnswire.Question
	var tx txn.Transaction
	stop := context.AfterFunc(ctx, func() { _ = s.conn.Unblock() })
	defer stop()
	var lastErr time.Time
	for {
		n, err := r.Read()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			// ECONNREFUSED from an ICMP port unreachable, and other
			// transient errors: counted, logged at a limited rate.
			w.stats.RespReadErrors.Add(1)
			if errors.Is(err, syscall.ECONNREFUSED) {
				w.cfg.Pool.Failure(s.up, false)
				w.failover(si)
				continue
			}
			if time.Since(lastErr) > 5*time.Second {
				w.cfg.Log.Warn("reading upstream socket", "upstream", s.upstream, "local", s.local, "err", err)
				lastErr = time.Now()
			}
			time.Sleep(time.Millisecond)
			continue
		}
		readT := time.Now().UnixNano()
		w.stats.RespReceived.Add(uint64(n))
		replies, matched, lens, kts = replies[:0], matched[:0], lens[:0], kts[:0]
		w.mu.Lock()
		for k := 0; k < n; k++ {
			p := &batch.Pkts[k]
			i := w.classifySafe(si, p, &q)
			if i < 0 {
				continue
			}
			sl := &w.tab.slots[i]
			w.tab.detach(i, false)
			data := p.Data()
			// Restore the client's ID: the only byte change on the way
			// back.
			data[0], data[1] = sl.query[0], sl.query[1]
			replies = append(replies, listener.Packet{Buf: p.Buf, N: p.N, Peer: sl.client, Local: sl.local.Addr(), IfIndex: sl.ifindex})
			matched = append(matched, i)
			lens = append(lens, p.N)
			kts = append(kts, p.KernelTime)
		}
		w.mu.Unlock()
		if len(replies) == 0 {
			continue
		}
		_, _ = cw.Write(replies)
		sent := time.Now().UnixNano()
		for k, i := range matched {
			sl := &w.tab.slots[i]
			s.up.InFlight.Add(-1)
			rtt := kts[k] - sl.sentT
			if kts[k] == 0 {
				rtt = readT - sl.sentT
			}
			w.cfg.Pool.Success(s.up, time.Duration(rtt))
			o := txn.Answered
			if replies[k].N < 0 {
				o = txn.ReplyFailed
				w.stats.ReplyFailed.Add(1)
			} else {
				w.stats.Answered.Add(1)
			}
			fillTx(&tx, sl, s.upstream, o)
			tx.Response = replies[k].Buf[:lens[k]]
			tx.ResponseKernel, tx.ResponseRead = kts[k], readT
			if o == txn.Answered {
				tx.ReplySent = sent
			}
			if h, _ := dnswire.ParseHeader(tx.Response); h.TC() {
				tx.Flags |= txn.Truncated
			}
			w.cfg.Sink.Submit(&tx)
		}
		w.mu.Lock()
		for _, i := range matched {
			w.tab.release(i)
		}
		w.mu.Unlock()
	}
}

// classifySafe is classify with a panic (a bug tripped by a hostile
// datagram) recovered per datagram, mu still held by the caller: the
// datagram counts as RespPanic and is dropped. classify counts a fate only
// as its last step, so a recovered datagram is counted once.
func (w *Worker) classifySafe(si int, p *listener.Packet, q *dnswire.Question) (i int32) {
	defer func() {
		if v := recover(); v != nil {
			w.stats.RespPanic.Add(1)
			w.panicsR.Report(w.cfg.Log, "upstream.udp.response", v)
			i = -1
		}
	}()
	if w.faultResp != nil {
		w.faultResp(p.Data())
	}
	return w.classify(si, p, q)
}

// classify decides whether p is an acceptable answer on socket si and
// returns its slot, or counts the reason and returns -1. Called with mu
// held. RFC 5452 §9.1: the answer must come from the address and port the
// query went to, carry its ID, and repeat its question; a header-only answer
// with an error rcode is accepted (servers send FORMERR/NOTIMP/REFUSED
// without a question), and so is any answer to a query whose own question
// did not parse (paired on ID and addresses alone).
func (w *Worker) classify(si int, p *listener.Packet, q *dnswire.Question) int32 {
	s := w.socks[si]
	data := p.Data()
	if p.N < dnswire.HeaderLen || p.Truncated {
		w.stats.RespShort.Add(1)
		return -1
	}
	if p.Peer.Addr().Unmap() != s.upstream.Addr().Unmap() || p.Peer.Port() != s.upstream.Port() {
		w.stats.RespWrongSource.Add(1)
		return -1
	}
	h, _ := dnswire.ParseHeader(data)
	if !h.QR() {
		w.stats.RespNotResponse.Add(1)
		return -1
	}
	i := w.tab.lookup(si, h.ID)
	if i < 0 {
		if w.tab.takeLate(si, h.ID) {
			w.stats.RespLate.Add(1)
		} else {
			w.stats.RespUnknownID.Add(1)
		}
		return -1
	}
	sl := &w.tab.slots[i]
	if sl.qok {
		err := dnswire.ParseQuestion(data, q)
		switch {
		case err == nil && q.Equal(&sl.q):
		case h.QDCount == 0 && dnswire.IsErrorRcode(h.Rcode()):
		default:
			w.stats.RespQuestionMismatch.Add(1)
			return -1
		}
	}
	w.stats.RespMatched.Add(1)
	return i
}

// sweepLoop expires queries whose deadline passed. A full scan every tick
// is O(MaxInflight) and cheap; it avoids per-query timers.
func (w *Worker) sweepLoop(ctx context.Context) {
	tick := w.cfg.Timeout / 20
	tick = min(max(tick, 5*time.Millisecond), 100*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	expired := make([]int32, 0, len(w.tab.slots))
	var tx txn.Transaction
	cw := w.client.NewWriter(listener.BatchSize)
	out := listener.NewBatch(listener.BatchSize, slotQueryCap)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		expired = expired[:0]
		w.mu.Lock()
		for i := range w.tab.slots {
			sl := &w.tab.slots[i]
			if sl.state == slotPending && sl.deadline <= now {
				w.tab.detach(int32(i), true)
				expired = append(expired, int32(i))
			}
		}
		w.mu.Unlock()
		for start := 0; start < len(expired); start += listener.BatchSize {
			chunk := expired[start:min(start+listener.BatchSize, len(expired))]
			w.expire(chunk, cw, out, &tx)
		}
		if len(expired) > 0 {
			w.mu.Lock()
			for _, i := range expired {
				w.tab.release(i)
			}
			w.mu.Unlock()
		}
	}
}

// expire answers (SERVFAIL, when configured) and accounts for timed-out
// slots.
func (w *Worker) expire(chunk []int32, cw *listener.Writer, out *listener.Batch, tx *txn.Transaction) {
	m := 0
	if w.cfg.ServfailOnTimeout {
		for _, i := range chunk {
			sl := &w.tab.slots[i]
			r := &out.Pkts[m]
			var qp *dnswire.Question
			if sl.qok && sl.q.End <= len(r.Buf) {
				qp = &sl.q
			}
			b := dnswire.AppendErrorReply(r.Buf[:0], sl.query, qp, dnswire.RcodeServFail)
			r.N, r.Peer, r.Local, r.IfIndex = len(b), sl.client, sl.local.Addr(), sl.ifindex
			m++
		}
		_, _ = cw.Write(out.Pkts[:m])
	}
	sent := time.Now().UnixNano()
	for k, i := range chunk {
		sl := &w.tab.slots[i]
		u := w.socks[sl.sock].up
		u.InFlight.Add(-1)
		w.cfg.Pool.Failure(u, true)
		w.stats.TimedOut.Add(1)
		fillTx(tx, sl, w.socks[sl.sock].upstream, txn.TimedOut)
		if w.cfg.ServfailOnTimeout && out.Pkts[k].N > 0 {
			w.stats.ServfailSent.Add(1)
			tx.Outcome = txn.TimedOutServfail
			tx.Response = out.Pkts[k].Buf[:out.Pkts[k].N]
			tx.ReplySent = sent
		}
		w.cfg.Sink.Submit(tx)
	}
}
