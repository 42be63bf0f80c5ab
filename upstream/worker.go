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
	// SocketsPerUpstream is how many upstream sockets, each on its own
	// random source port, this worker spreads queries over.
	SocketsPerUpstream int
	// PortRotation is how many queries a socket carries before its source
	// port is replaced by a fresh one drawn with crypto/rand from the
	// kernel's ephemeral range (rotate.go). RFC 5452 §9.2, §10: an
	// off-path forger must guess the port as well as the ID, and a port
	// it learned or scanned for stays useful only that long. 0 keeps each
	// socket's kernel-chosen port for the worker's lifetime.
	PortRotation int
	// ServfailOnTimeout answers SERVFAIL when the upstream stays silent;
	// by default the client gets nothing, as if the upstream were silent.
	ServfailOnTimeout bool
	// Socket holds buffer sizes for upstream sockets.
	Socket listener.Options
	Sink   txn.Sink
	Seq    *txn.Seq
	Log    *slog.Logger

	// procRoot, set only by tests in this package, is the root the
	// ephemeral port range is read under ("/" when empty).
	procRoot string
}

// Defaults for Config fields left zero (PortRotation excepted: zero means
// fixed ports; DefaultPortRotation is what the serve command uses).
const (
	DefaultTimeout            = 2 * time.Second
	DefaultMaxInflight        = 4096
	DefaultSocketsPerUpstream = 4
	// DefaultPortRotation: a new source port every 256 queries per
	// socket. A rotation is about 15 syscalls (socket, setsockopt ×3,
	// getsockopt ×4, bind, connect, getsockname, getpeername, epoll_ctl
	// ×2, close), about 45 µs on a small VM (BenchmarkRotationSocket),
	// and 33 allocations (TestSteadyStateNoAllocs in internal/server):
	// 0.18 µs and 0.13 allocations per query at 256. The whole cost is
	// larger: at 20 000 qps on one CPU, rotation at 256 took 7 % of the
	// proxy's CPU, most of it the runtime's sysmon thread, which the net
	// package's blocking-style syscalls wake and which then polls every
	// 20 µs for a while (bench/RESULTS.md, session 5). Blind spoofing odds
	// depend on how many ports are open, not on this; it bounds how many
	// queries a port that was learned or scanned for stays useful.
	DefaultPortRotation = 256
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
	// ServfailSendFailed: of SendFailed, those answered with SERVFAIL
	// (ServfailOnTimeout: the client gets an answer whenever tapproxy
	// cannot get one, also when the upstream socket refused the send).
	ServfailSendFailed atomic.Uint64
	ReplyFailed        atomic.Uint64
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

	// CompletePanic (informational): completing queries whose fate was
	// settled panicked (a bug) while relaying the answer, updating health,
	// logging, expiring, failing over or answering SERVFAIL at once;
	// recovered per batch, every fate still counted once and every slot
	// freed once; the dnstap records of that batch may be missing.
	CompletePanic atomic.Uint64

	// Source-port rotation (Config.PortRotation), informational.
	// PortRotations: sockets replaced by one on a fresh port.
	// PortRotationsDeferred: queries sent on a socket past its rotation
	// point because the spare was not ready (the previous port still had
	// queries in flight, or opening failed). PortBindRetries: random ports
	// found in use, each followed by a new draw. PortBindFallbacks:
	// sockets left to the kernel's port choice after maxBindTries ports in
	// use. PortOpenErrors: failed attempts to open a spare socket.
	PortRotations         atomic.Uint64
	PortRotationsDeferred atomic.Uint64
	PortBindRetries       atomic.Uint64
	PortBindFallbacks     atomic.Uint64
	PortOpenErrors        atomic.Uint64
}

// Worker forwards the queries of one client socket. HandleQueries runs on
// the client socket's worker goroutine; each physical upstream socket slot
// has one reader goroutine (which also opens its next socket when ports
// rotate); one sweeper goroutine expires queries. All share the table
// under mu, taken once per batch.
type Worker struct {
	cfg    Config
	client *listener.Conn
	// socks are the logical upstream sockets, phys the physical ones
	// (rotate.go); both sets are fixed at NewWorker.
	socks []*usock
	phys  []*psock
	// ranges[u] is the [start, end) of upstream u's sockets in socks.
	ranges [][2]int
	// batchSock[u] is the logical socket the current HandleQueries batch
	// sends upstream u's queries from (-1: none chosen yet); under mu.
	batchSock []int
	// ports is the range random source ports are drawn from; portsErr
	// says why it is the default.
	ports    portRange
	portsErr error

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
	// closed: Close was called; readers open no more sockets. closedDrops
	// and dropCounted (per upstream, pool order) keep the kernel drop
	// counts of closed sockets. Guarded by mu.
	closed      bool
	closedDrops []uint64
	dropCounted []bool

	rnd      [512]byte
	rndPos   int
	failed   []int32
	failKept []int32
	tx       txn.Transaction

	stats Stats
	// Recovered panics are reported per loop, so one loop's flood cannot
	// hide another's.
	panicsQ, panicsR, panicsC faultinject.PanicLog
	wg                        sync.WaitGroup
	// faultQuery and faultResp, set only by tests in this package, see
	// each query while it is taken in (slot allocated, mu held) and each
	// upstream datagram before it is classified; faultComplete sees each
	// query being completed after its fate is counted, stage naming the
	// path: "reply-batch" (before the answers are written to clients),
	// "reply", "expire-batch", "expire", "sendfail", "answernow-build",
	// "answernow", "failover" (internal/faultinject).
	faultQuery, faultResp func(data []byte)
	faultComplete         func(stage string, data []byte)
	// spareReady, set only by tests in this package, is called each time
	// a spare socket has been opened and is ready (rotate.go), so tests
	// can wait for rotations instead of sleeping.
	spareReady func()
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
	if cfg.PortRotation < 0 {
		cfg.PortRotation = 0
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
		failKept: make([]int32, 0, listener.BatchSize),
		imm:      listener.NewBatch(listener.BatchSize, slotQueryCap), immW: client.NewWriter(listener.BatchSize),
		immIdx: make([]int, 0, listener.BatchSize), immWhy: make([]txn.Outcome, 0, listener.BatchSize),
		retryTokens: maxRetryTokens}
	root := cfg.procRoot
	if root == "" {
		root = "/"
	}
	slots := 1
	if cfg.PortRotation > 0 {
		w.ports, w.portsErr = readPortRange(root)
		slots = physSlots
	}
	ups := cfg.Pool.Upstreams()
	w.closedDrops, w.dropCounted = make([]uint64, len(ups)), make([]bool, len(ups))
	for _, u := range ups {
		start := len(w.socks)
		for i := 0; i < cfg.SocketsPerUpstream; i++ {
			si := len(w.socks)
			ls := &usock{up: u, upstream: u.Addr}
			w.socks = append(w.socks, ls)
			for j := 0; j < slots; j++ {
				ps := &psock{sock: si, out: make([]listener.Packet, 0, listener.BatchSize)}
				if u.ProxyV2 {
					ps.heads = make([]byte, listener.BatchSize*MaxProxyV2Header)
				}
				ls.phys = append(ls.phys, len(w.phys))
				w.phys = append(w.phys, ps)
			}
			// The first socket is opened now, so errors surface at
			// start-up; spares are opened by their readers (rotate.go).
			c, err := w.dial(ctx, u.Addr)
			if err != nil {
				w.Close()
				return nil, err
			}
			ls.cur = ls.phys[0]
			ps := w.phys[ls.cur]
			ps.conn, ps.local, ps.state = c, c.LocalAddr(), psActive
			if c.Features().DropCounter {
				w.dropCounted[u.index] = true
			}
		}
		w.ranges = append(w.ranges, [2]int{start, len(w.socks)})
	}
	w.tab = newTable(cfg.MaxInflight, len(w.socks), len(w.phys))
	w.batchSock = make([]int, len(w.ranges))
	return w, nil
}

// Stats returns the worker's counters.
func (w *Worker) Stats() *Stats { return &w.stats }

// InFlight returns the number of queries waiting for an answer.
func (w *Worker) InFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tab.inflight()
}

// Start launches the upstream readers and the timeout sweeper; they run
// until ctx is done.
func (w *Worker) Start(ctx context.Context) {
	for p := range w.phys {
		w.wg.Add(1)
		go func() { defer w.wg.Done(); w.readLoop(ctx, p) }()
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

// Close closes the upstream sockets; readers still running open no more.
func (w *Worker) Close() {
	w.mu.Lock()
	w.closed = true
	var cs []*listener.Conn
	var locals []netip.AddrPort
	for _, ps := range w.phys {
		if ps.conn == nil {
			continue
		}
		w.closedDrops[w.socks[ps.sock].up.index] += uint64(ps.conn.KernelDrops())
		cs, locals = append(cs, ps.conn), append(locals, ps.local)
		ps.conn, ps.state = nil, psEmpty
	}
	w.mu.Unlock()
	for i, c := range cs {
		if g := w.cfg.Loop; g != nil {
			g.remove(locals[i])
		}
		_ = c.Close()
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
	for _, s := range w.phys {
		s.out = s.out[:0]
	}
	w.immIdx, w.immWhy = w.immIdx[:0], w.immWhy[:0]
	now := time.Now().UnixNano()
	deadline := now + int64(w.cfg.Timeout)
	w.mu.Lock()
	for u := range w.batchSock {
		w.batchSock[u] = -1
	}
	for k, p := range pkts {
		w.admitLocked(k, p, now, deadline, readTime)
	}
	w.mu.Unlock()

	w.failed = w.failed[:0]
	for _, s := range w.phys {
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
		nfail := len(s.out)
		if c := s.outConn; c != nil {
			if s.w == nil {
				s.w = c.NewWriter(listener.BatchSize)
			} else if s.wConn != c {
				s.w.Rebind(c)
			}
			s.wConn = c
			nfail, _ = s.w.Write(s.out)
		} else {
			for k := range s.out {
				s.out[k].N = -1
			}
		}
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
					w.detach(i, false)
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
	// One random socket per upstream per batch, not per query: a batch
	// then leaves in one sendmmsg per upstream and its answers come back
	// on one socket, read and relayed in one batch each. With a socket
	// per query, the 4 default sockets split every batch four ways: at
	// 20 000 qps that was 2.2 × the sendmmsg and 1.6 × the recvmmsg calls
	// of one socket, and 6-17 % more CPU (bench/RESULTS.md). Each query's
	// port is as random as before; blind spoofing's odds depend on the
	// ports and IDs in flight, not on how queries spread over them.
	si := w.batchSock[u.index]
	if si < 0 {
		si = w.pickSocket(u.index)
		w.batchSock[u.index] = si
	}
	s, id := w.bindSocket(i, si)
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
	s.outConn = s.conn
	s.out = append(s.out, out)
}

// pickSocket returns a random logical socket of upstream u. Called with mu
// held.
func (w *Worker) pickSocket(u int) int {
	r := w.ranges[u]
	if n := r[1] - r[0]; n > 1 {
		return r[0] + int(w.rand16())%n
	}
	return r[0]
}

// freeID returns a random ID not in flight on logical socket si. Called with
// mu held.
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

// recoverComplete, deferred by a completion path, recovers a panic there
// (a bug: the fates it settles are counted before anything that can
// panic) and reports it at a limited rate.
func (w *Worker) recoverComplete(where string) {
	if v := recover(); v != nil {
		w.stats.CompletePanic.Add(1)
		w.panicsC.Report(w.cfg.Log, where, v)
	}
}

// answerNow sends SERVFAIL for the queries collected in immIdx and
// logs them; their fates were counted when they were taken in, so a panic
// here (recovered) only loses replies or records. The ID in pkts is still
// the client's (nothing was rewritten for these).
func (w *Worker) answerNow(pkts []*listener.Packet, readTime int64) {
	defer w.recoverComplete("upstream.udp.answernow")
	built := true
	for k := range w.immIdx {
		built = w.buildImmediate(k, pkts[w.immIdx[k]]) && built
	}
	if m := len(w.immIdx); built {
		_, _ = w.immW.Write(w.imm.Pkts[:m])
	} else {
		// Rare (a recovered panic): send the ones built, one by one.
		for k := range m {
			if w.imm.Pkts[k].N > 0 {
				_, _ = w.immW.Write(w.imm.Pkts[k : k+1])
			}
		}
	}
	sent := time.Now().UnixNano()
	for k := range w.immIdx {
		w.logImmediate(k, pkts[w.immIdx[k]], readTime, sent)
	}
}

// buildImmediate builds the SERVFAIL for immediate answer k; false when
// that panicked (recovered; the answer is left empty and not sent).
func (w *Worker) buildImmediate(k int, p *listener.Packet) (ok bool) {
	r := &w.imm.Pkts[k]
	r.N = 0
	defer func() {
		if v := recover(); v != nil {
			w.stats.CompletePanic.Add(1)
			w.panicsC.Report(w.cfg.Log, "upstream.udp.answernow", v)
		}
	}()
	if w.faultComplete != nil {
		w.faultComplete("answernow-build", p.Data())
	}
	var qp *dnswire.Question
	if dnswire.ParseQuestion(p.Data(), &w.immQ) == nil && w.immQ.End <= len(r.Buf) {
		qp = &w.immQ
	}
	b := dnswire.AppendErrorReply(r.Buf[:0], p.Data(), qp, dnswire.RcodeServFail)
	r.N, r.Peer, r.Local, r.IfIndex = len(b), p.Peer, p.Local, p.IfIndex
	return true
}

// logImmediate submits immediate answer k's transaction.
func (w *Worker) logImmediate(k int, p *listener.Packet, readTime, sent int64) {
	defer w.recoverComplete("upstream.udp.answernow")
	if w.faultComplete != nil {
		w.faultComplete("answernow", p.Data())
	}
	r := &w.imm.Pkts[k]
	w.tx = txn.Transaction{Seq: w.cfg.Seq.Next(), Transport: txn.UDP, Outcome: w.immWhy[k],
		Client: p.Peer, Local: listener.LocalAddrPort(w.client, p), Query: p.Data(),
		QueryKernel: p.KernelTime, QueryRead: readTime}
	if r.N > 0 {
		w.tx.Response, w.tx.ReplySent = r.Buf[:r.N], sent
	}
	w.cfg.Sink.Submit(&w.tx)
}

// failSends accounts for queries the upstream socket refused to send. A
// panic is recovered for the whole batch: each query it owns is counted
// SendFailed once and its slot freed once.
func (w *Worker) failSends() {
	kept := w.failKept[:0]
	done, locked, released := 0, false, false
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		w.stats.CompletePanic.Add(1)
		w.panicsC.Report(w.cfg.Log, "upstream.udp.sendfail", v)
		if !locked {
			w.mu.Lock()
		}
		// Taking ownership may have stopped half way: finish it.
		for _, i := range w.failed {
			if w.tab.slots[i].state == slotPending {
				w.detach(i, false)
				kept = append(kept, i)
			}
		}
		for _, i := range kept[done:] {
			w.socks[w.tab.slots[i].sock].up.InFlight.Add(-1)
			w.stats.SendFailed.Add(1)
		}
		if !released {
			for _, i := range kept {
				w.tab.release(i)
			}
		}
		w.mu.Unlock()
		w.failKept = kept[:0]
	}()
	w.mu.Lock()
	locked = true
	for _, i := range w.failed {
		// A forged answer could have matched the unsent query already;
		// then the reader owns the slot and has accounted for it.
		if w.tab.slots[i].state == slotPending {
			kept = append(kept, i)
			w.detach(i, false)
		}
	}
	w.mu.Unlock()
	locked = false
	// With ServfailOnTimeout the client is told at once: the upstream
	// will never see this query. The replies are built and sent before
	// any fate is counted, so a panic here leaves the fates to the
	// recovery above, counted once.
	sent := int64(0)
	if w.cfg.ServfailOnTimeout && len(kept) > 0 {
		w.servfails(kept, w.imm.Pkts)
		_, _ = w.immW.Write(w.imm.Pkts[:len(kept)])
		sent = time.Now().UnixNano()
	}
	for k, i := range kept {
		var reply *listener.Packet
		if sent != 0 && w.imm.Pkts[k].N > 0 {
			reply = &w.imm.Pkts[k]
		}
		w.finishSendFailed(i, reply, sent)
		done++
	}
	w.mu.Lock()
	locked, released = true, true
	for _, i := range kept {
		w.tab.release(i)
	}
	w.mu.Unlock()
	w.failKept = kept[:0]
}

// servfails builds in out[k] the SERVFAIL reply to slot slots[k]'s client:
// the header and, when it parsed and fits, the question (RFC 1035 §4.1.1).
func (w *Worker) servfails(slots []int32, out []listener.Packet) {
	for k, i := range slots {
		sl := &w.tab.slots[i]
		r := &out[k]
		var qp *dnswire.Question
		if sl.qok && sl.q.End <= len(r.Buf) {
			qp = &sl.q
		}
		b := dnswire.AppendErrorReply(r.Buf[:0], sl.query, qp, dnswire.RcodeServFail)
		r.N, r.Peer, r.Local, r.IfIndex = len(b), sl.client, sl.local.Addr(), sl.ifindex
	}
}

// finishSendFailed counts slot i's fate (and the SERVFAIL reply it got,
// if any), then updates health and logs it.
func (w *Worker) finishSendFailed(i int32, reply *listener.Packet, sent int64) {
	sl := &w.tab.slots[i]
	u := w.socks[sl.sock].up
	u.InFlight.Add(-1)
	w.stats.SendFailed.Add(1)
	if reply != nil {
		w.stats.ServfailSendFailed.Add(1)
	}
	defer w.recoverComplete("upstream.udp.sendfail")
	if w.faultComplete != nil {
		w.faultComplete("sendfail", sl.query)
	}
	w.cfg.Pool.Failure(u, false)
	w.fillTx(sl, txn.SendFailed)
	w.tx.UpstreamSent = 0
	if reply != nil {
		w.tx.Response, w.tx.ReplySent = reply.Buf[:reply.N], sent
	}
	w.cfg.Sink.Submit(&w.tx)
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

// readBuffers are one reader goroutine's batch and scratch space, kept
// across the sockets it reads in turn.
type readBuffers struct {
	batch   *listener.Batch
	cw      *listener.Writer
	replies []listener.Packet
	matched []int32
	lens    []int
	kts     []int64
	q       dnswire.Question
	tx      txn.Transaction
}

// readLoop reads answers on physical socket slot p, matches them (RFC 5452
// §9.1) and relays them to clients in batches. When ports rotate, it closes
// its socket once retired and drained, and opens the next one (rotate.go).
func (w *Worker) readLoop(ctx context.Context, p int) {
	ps := w.phys[p]
	b := &readBuffers{batch: listener.NewBatch(listener.BatchSize, listener.MaxDatagram),
		cw:      w.client.NewWriter(listener.BatchSize),
		replies: make([]listener.Packet, 0, listener.BatchSize), matched: make([]int32, 0, listener.BatchSize),
		lens: make([]int, 0, listener.BatchSize), kts: make([]int64, 0, listener.BatchSize)}
	var r *listener.Reader
	// Built once per slot, not per socket or batch. A batch read as ctx
	// ends is still classified and relayed. Stopping once the socket is
	// closing matters when datagrams keep arriving (a flood of forgeries
	// at a retired port): the reader would otherwise never wait, and so
	// never see the deadline that tells it to close the socket.
	onBatch := func(n int) bool {
		w.readBatch(p, n, b)
		return ctx.Err() == nil && !w.isClosing(ps)
	}
	for {
		w.mu.Lock()
		c, closed := ps.conn, w.closed
		w.mu.Unlock()
		if closed || ctx.Err() != nil {
			return
		}
		if c == nil {
			if c = w.openSpare(ctx, p); c == nil {
				return
			}
		}
		if r == nil {
			r = c.NewReader(b.batch)
		} else {
			r.Rebind(c)
		}
		if !w.readConn(ctx, p, c, r, onBatch) {
			return
		}
		// Empty the drained socket before closing it: what arrived after
		// its last query was done (late answers, forgeries) is counted
		// like any other datagram, not discarded with the socket. Bounded,
		// so a flood cannot keep a retired port open.
		for range maxCloseReads {
			n, err := r.ReadNow()
			if err != nil || n == 0 {
				break
			}
			w.readBatch(p, n, b)
		}
		w.closeDrained(p, c)
	}
}

// maxCloseReads bounds the batches read from a drained socket before it
// is closed.
const maxCloseReads = 16

// readConn reads socket c of slot p until ctx is done or the socket is
// closed (false), or until it has drained after being retired (true).
func (w *Worker) readConn(ctx context.Context, p int, c *listener.Conn, r *listener.Reader, onBatch func(int) bool) bool {
	ps := w.phys[p]
	s := w.socks[ps.sock]
	stop := context.AfterFunc(ctx, func() { _ = c.Unblock() })
	defer stop()
	var lastErr time.Time
	for {
		err := r.ReadLoop(onBatch)
		if ctx.Err() != nil {
			return false
		}
		if err == nil && w.isClosing(ps) {
			return true // onBatch stopped: drained while datagrams kept coming
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return false
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Unblock: ctx (handled above) or drained.
				if w.isClosing(ps) {
					return true
				}
				continue
			}
			// ECONNREFUSED from an ICMP port unreachable, and other
			// transient errors: counted, logged at a limited rate.
			w.stats.RespReadErrors.Add(1)
			if errors.Is(err, syscall.ECONNREFUSED) {
				w.cfg.Pool.Failure(s.up, false)
				w.failover(p)
				continue
			}
			if time.Since(lastErr) > 5*time.Second {
				w.cfg.Log.Warn("reading upstream socket", "upstream", s.upstream, "local", c.LocalAddr(), "err", err)
				lastErr = time.Now()
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// readBatch classifies the n datagrams read on slot p, relays the answers
// to their clients and completes their queries. A panic after
// classification (a bug) is recovered for the batch: each matched query
// still gets exactly one fate (answered when its reply was written,
// reply_failed otherwise), its upstream's in-flight gauge goes down once,
// its slot is freed once, and the reader goes on.
func (w *Worker) readBatch(p, n int, b *readBuffers) {
	ps := w.phys[p]
	s := w.socks[ps.sock]
	readT := time.Now().UnixNano()
	w.stats.RespReceived.Add(uint64(n))
	b.replies, b.matched, b.lens, b.kts = b.replies[:0], b.matched[:0], b.lens[:0], b.kts[:0]
	k, done := 0, 0 // datagrams classified; matched queries completed
	locked, classifying, wrote, released := false, true, false, false
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		w.stats.CompletePanic.Add(1)
		w.panicsC.Report(w.cfg.Log, "upstream.udp.reply", v)
		if classifying && k < n {
			// Datagram k was counted by classify; the rest never were.
			w.stats.RespPanic.Add(uint64(n - k - 1))
		}
		if !locked {
			w.mu.Lock()
		}
		for j := done; j < len(b.matched); j++ {
			i := b.matched[j]
			if w.tab.slots[i].state == slotPending {
				w.detach(i, false)
			}
			s.up.InFlight.Add(-1)
			if wrote && j < len(b.replies) && b.replies[j].N >= 0 {
				w.stats.Answered.Add(1)
			} else {
				w.stats.ReplyFailed.Add(1)
			}
		}
		if !released {
			for _, i := range b.matched {
				w.tab.release(i)
			}
		}
		w.mu.Unlock()
	}()
	w.mu.Lock()
	locked = true
	for ; k < n; k++ {
		pk := &b.batch.Pkts[k]
		i := w.classifySafe(p, pk, &b.q)
		if i < 0 {
			continue
		}
		// Owned from here: listed before it is detached, so a panic
		// cannot leak it.
		b.matched = append(b.matched, i)
		sl := &w.tab.slots[i]
		w.detach(i, false)
		data := pk.Data()
		// Restore the client's ID: the only byte change on the way
		// back.
		data[0], data[1] = sl.query[0], sl.query[1]
		b.replies = append(b.replies, listener.Packet{Buf: pk.Buf, N: pk.N, Peer: sl.client, Local: sl.local.Addr(), IfIndex: sl.ifindex})
		b.lens = append(b.lens, pk.N)
		b.kts = append(b.kts, pk.KernelTime)
	}
	classifying = false
	w.mu.Unlock()
	locked = false
	if len(b.replies) == 0 {
		return
	}
	if w.faultComplete != nil {
		w.faultComplete("reply-batch", b.replies[0].Data())
	}
	_, _ = b.cw.Write(b.replies)
	wrote = true
	sent := time.Now().UnixNano()
	for j, i := range b.matched {
		w.finishAnswer(s, i, &b.replies[j], b.lens[j], b.kts[j], readT, sent, &b.tx)
		done++
	}
	w.mu.Lock()
	locked, released = true, true
	for _, i := range b.matched {
		w.tab.release(i)
	}
	w.mu.Unlock()
}

// finishAnswer counts matched query i's fate first (so a panic after it
// neither loses nor doubles it), then updates the upstream's health and
// logs the transaction; a panic there is recovered.
func (w *Worker) finishAnswer(s *usock, i int32, reply *listener.Packet, n int, kt, readT, sent int64, tx *txn.Transaction) {
	sl := &w.tab.slots[i]
	s.up.InFlight.Add(-1)
	o := txn.Answered
	if reply.N < 0 {
		o = txn.ReplyFailed
		w.stats.ReplyFailed.Add(1)
	} else {
		w.stats.Answered.Add(1)
	}
	defer w.recoverComplete("upstream.udp.reply")
	if w.faultComplete != nil {
		w.faultComplete("reply", sl.query)
	}
	rtt := kt - sl.sentT
	if kt == 0 {
		rtt = readT - sl.sentT
	}
	w.cfg.Pool.Success(s.up, time.Duration(rtt))
	fillTx(tx, sl, s.upstream, o)
	tx.Response = reply.Buf[:n]
	tx.ResponseKernel, tx.ResponseRead = kt, readT
	if o == txn.Answered {
		tx.ReplySent = sent
	}
	if h, _ := dnswire.ParseHeader(tx.Response); h.TC() {
		tx.Flags |= txn.Truncated
	}
	w.cfg.Sink.Submit(tx)
}

// classifySafe is classify with a panic (a bug tripped by a hostile
// datagram) recovered per datagram, mu still held by the caller: the
// datagram counts as RespPanic and is dropped. classify counts a fate only
// as its last step, so a recovered datagram is counted once.
func (w *Worker) classifySafe(p int, pk *listener.Packet, q *dnswire.Question) (i int32) {
	defer func() {
		if v := recover(); v != nil {
			w.stats.RespPanic.Add(1)
			w.panicsR.Report(w.cfg.Log, "upstream.udp.response", v)
			i = -1
		}
	}()
	if w.faultResp != nil {
		w.faultResp(pk.Data())
	}
	return w.classify(p, pk, q)
}

// classify decides whether pk is an acceptable answer on physical socket
// p and returns its slot, or counts the reason and returns -1. Called with
// mu held. RFC 5452 §9.1: the answer must come from the address and port
// the query went to, to the port it left from, carry its ID, and repeat
// its question; a header-only answer with an error rcode is accepted
// (servers send FORMERR/NOTIMP/REFUSED without a question), and so is any
// answer to a query whose own question did not parse (paired on ID and
// addresses alone).
func (w *Worker) classify(p int, pk *listener.Packet, q *dnswire.Question) int32 {
	si := w.phys[p].sock
	s := w.socks[si]
	data := pk.Data()
	if pk.N < dnswire.HeaderLen || pk.Truncated {
		w.stats.RespShort.Add(1)
		return -1
	}
	if pk.Peer.Addr().Unmap() != s.upstream.Addr().Unmap() || pk.Peer.Port() != s.upstream.Port() {
		w.stats.RespWrongSource.Add(1)
		return -1
	}
	h, _ := dnswire.ParseHeader(data)
	if !h.QR() {
		w.stats.RespNotResponse.Add(1)
		return -1
	}
	i := w.tab.lookup(si, p, h.ID)
	if i < 0 {
		if w.tab.takeLate(p, h.ID) {
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
		expired = w.sweep(time.Now().UnixNano(), expired[:0], cw, out, &tx)
	}
}

// sweep expires the queries whose deadline is before now. A panic (a bug)
// is recovered for the sweep: each expired query still counts as timed out
// once, its upstream's in-flight gauge goes down once, its slot is freed
// once, and the sweeper goes on.
func (w *Worker) sweep(now int64, expired []int32, cw *listener.Writer, out *listener.Batch, tx *txn.Transaction) []int32 {
	done, locked, released := 0, false, false
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		w.stats.CompletePanic.Add(1)
		w.panicsC.Report(w.cfg.Log, "upstream.udp.expire", v)
		if !locked {
			w.mu.Lock()
		}
		for _, i := range expired[done:] {
			sl := &w.tab.slots[i]
			if sl.state == slotPending {
				w.detach(i, true)
			}
			w.socks[sl.sock].up.InFlight.Add(-1)
			w.stats.TimedOut.Add(1)
		}
		if !released {
			for _, i := range expired {
				w.tab.release(i)
			}
		}
		w.mu.Unlock()
	}()
	w.mu.Lock()
	locked = true
	for i := range w.tab.slots {
		sl := &w.tab.slots[i]
		if sl.state == slotPending && sl.deadline <= now {
			expired = append(expired, int32(i))
			w.detach(int32(i), true)
		}
	}
	w.mu.Unlock()
	locked = false
	for start := 0; start < len(expired); start += listener.BatchSize {
		chunk := expired[start:min(start+listener.BatchSize, len(expired))]
		w.expire(chunk, cw, out, tx, &done)
	}
	if len(expired) > 0 {
		w.mu.Lock()
		locked, released = true, true
		for _, i := range expired {
			w.tab.release(i)
		}
		w.mu.Unlock()
	}
	return expired
}

// expire answers (SERVFAIL, when configured) and accounts for timed-out
// slots, advancing *done past each one whose fate is counted.
func (w *Worker) expire(chunk []int32, cw *listener.Writer, out *listener.Batch, tx *txn.Transaction, done *int) {
	if w.faultComplete != nil {
		w.faultComplete("expire-batch", w.tab.slots[chunk[0]].query)
	}
	if w.cfg.ServfailOnTimeout {
		w.servfails(chunk, out.Pkts)
		_, _ = cw.Write(out.Pkts[:len(chunk)])
	}
	sent := time.Now().UnixNano()
	for k, i := range chunk {
		var reply *listener.Packet
		if w.cfg.ServfailOnTimeout && out.Pkts[k].N > 0 {
			reply = &out.Pkts[k]
		}
		w.finishTimeout(i, reply, sent, tx)
		*done++
	}
}

// finishTimeout counts timed-out slot i's fate first, then updates health
// and logs it; a panic there is recovered.
func (w *Worker) finishTimeout(i int32, reply *listener.Packet, sent int64, tx *txn.Transaction) {
	sl := &w.tab.slots[i]
	s := w.socks[sl.sock]
	s.up.InFlight.Add(-1)
	w.stats.TimedOut.Add(1)
	if reply != nil {
		w.stats.ServfailSent.Add(1)
	}
	defer w.recoverComplete("upstream.udp.expire")
	if w.faultComplete != nil {
		w.faultComplete("expire", sl.query)
	}
	w.cfg.Pool.Failure(s.up, true)
	fillTx(tx, sl, s.upstream, txn.TimedOut)
	if reply != nil {
		tx.Outcome = txn.TimedOutServfail
		tx.Response = reply.Buf[:reply.N]
		tx.ReplySent = sent
	}
	w.cfg.Sink.Submit(tx)
}
