package upstream

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/internal/faultinject"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
)

// TCPConfig configures forwarding of the queries that arrived over TCP.
// They go upstream over TCP (RFC 7766 §5: a client that chose TCP gets a
// TCP-sized answer; a truncated UDP answer is relayed to a UDP client as
// is and the client retries over TCP itself).
type TCPConfig struct {
	// Pool is the upstream pool shared with the UDP side: each query's
	// upstream is chosen by its policy and health, and TCP answers,
	// timeouts and connection failures feed the same health state and
	// per-upstream figures. When nil, a first-available pool is built from
	// Upstreams.
	Pool *Pool
	// Upstreams are the servers, used only when Pool is nil.
	Upstreams []netip.AddrPort
	// Timeout bounds each query (from its arrival) and, for a zone
	// transfer, the wait for each next message.
	Timeout time.Duration
	// MaxInflight bounds all TCP queries in flight (≤ 65535).
	MaxInflight int
	// PoolSize is how many connections to each upstream are kept and
	// shared (pipelined) by all clients' queries. Zone transfers get a
	// connection of their own, outside the pool, and so does each client
	// connection talking to a PROXY v2 upstream (tcpdoc.go).
	PoolSize int
	// ConnInflight caps the queries pipelined on one pooled connection.
	ConnInflight int
	// IdleTimeout closes a pooled (or per-client PROXY v2) connection
	// unused this long.
	IdleTimeout time.Duration
	// MaxTransfers caps concurrent zone transfers (each has an upstream
	// connection of its own); one more is dropped (DroppedFull,
	// XFRLimited).
	MaxTransfers      int
	ServfailOnTimeout bool
	Sink              txn.Sink
	Seq               *txn.Seq
	Log               *slog.Logger
}

// Defaults for TCPConfig fields left zero.
const (
	DefaultTCPPoolSize     = 4
	DefaultTCPConnInflight = 100
	DefaultTCPIdleTimeout  = 10 * time.Second
	DefaultTCPMaxInflight  = 4096
	DefaultTCPMaxTransfers = 8
)

// UpCloseReason is why an upstream TCP connection ended.
type UpCloseReason uint8

// Upstream connection close reasons.
const (
	UpCloseIdle       UpCloseReason = iota // pooled, unused for IdleTimeout
	UpCloseEOF                             // the upstream closed it
	UpCloseError                           // read/write error or a frame shorter than a header
	UpCloseXFRDone                         // a zone transfer's own connection, after its last message
	UpCloseTimeout                         // a zone transfer's own connection, after its timeout
	UpCloseShutdown                        // tapproxy stopping
	UpCloseClientGone                      // a PROXY v2 client's own connection, after that client's connection closed
	numUpCloseReasons
)

var upCloseNames = [numUpCloseReasons]string{"idle", "eof", "error", "xfr_done", "timeout", "shutdown", "client_gone"}

func (r UpCloseReason) String() string {
	if r < numUpCloseReasons {
		return upCloseNames[r]
	}
	return "unknown"
}

// UpCloseReasons lists every reason, in counter order.
func UpCloseReasons() []UpCloseReason {
	out := make([]UpCloseReason, numUpCloseReasons)
	for i := range out {
		out[i] = UpCloseReason(i)
	}
	return out
}

// TCPStats counts the fate of every TCP query and upstream message.
// Queries handed in: DroppedFull + SendFailed + ServfailAllDown + Forwarded
// (+ those still being sent). Forwarded: Answered + TimedOut + ReplyFailed +
// UpstreamClosed (+ in flight). Upstream messages: RespReceived =
// RespMatched + RespShort + RespNotResponse + RespUnknownID + RespLate +
// RespQuestionMismatch. Connections: Dialed = ΣConnsClosed + open.
type TCPStats struct {
	Forwarded      atomic.Uint64
	Malformed      atomic.Uint64 // forwarded or not, question did not parse
	DroppedFull    atomic.Uint64 // slot table or every pooled connection full
	SendFailed     atomic.Uint64 // never written upstream (dial/write failed twice)
	Answered       atomic.Uint64 // a zone transfer counts once, when it ends
	TimedOut       atomic.Uint64
	ServfailSent   atomic.Uint64 // of TimedOut
	ReplyFailed    atomic.Uint64 // answer arrived, client connection gone or full
	UpstreamClosed atomic.Uint64 // connection died after the query was sent and the retry failed too
	Retried        atomic.Uint64 // second attempts (after a dial/write failure or a dead connection)
	// ServfailAllDown: answered SERVFAIL at once, nothing sent upstream
	// (every upstream down and --all-down servfail).
	ServfailAllDown atomic.Uint64
	// Failovers: of Retried, those sent to another upstream than the first
	// try. RetriesDenied: second attempts the retry budget refused (the
	// query then ends as SendFailed or UpstreamClosed at once).
	Failovers     atomic.Uint64
	RetriesDenied atomic.Uint64
	XFR           atomic.Uint64 // AXFR/IXFR queries
	XFRMessages   atomic.Uint64 // transfer messages relayed (part of RespMatched)
	XFRLimited    atomic.Uint64 // of DroppedFull: MaxTransfers already running
	// DroppedPanic: taking the query in panicked (a bug); recovered, its
	// slot freed, nothing sent, the connection kept.
	DroppedPanic atomic.Uint64

	RespReceived         atomic.Uint64
	RespMatched          atomic.Uint64
	RespShort            atomic.Uint64 // frame under 12 bytes: the connection is closed
	RespNotResponse      atomic.Uint64
	RespUnknownID        atomic.Uint64
	RespLate             atomic.Uint64
	RespQuestionMismatch atomic.Uint64

	Dialed      atomic.Uint64
	DialFailed  atomic.Uint64
	NoTimestamp atomic.Uint64 // connections where SO_TIMESTAMPNS was refused (ResponseKernel 0)
	ConnsClosed [numUpCloseReasons]atomic.Uint64
}

// Slot states. A slot is owned by exactly one goroutine except while
// pending, when the upstream reader (answer), the sweeper (timeout) or
// whoever kills its connection may take it, under mu.
const (
	tFree        uint8 = iota
	tDispatching       // owned by the goroutine sending it
	tPending           // bound to a connection's ID; waiting for the answer
	tCompleting        // owned by the goroutine that completes it
)

type tslot struct {
	state uint8
	qok   bool
	xfr   bool
	// forwarded: written upstream at least once. writing: the sender is
	// inside its write (the slot may not be freed; the sender frees it if
	// releasePending is set). relaying: an upstream reader is handing a
	// transfer message to the client. orphaned: the connection died while
	// the slot was being written or relayed; the writer/relayer handles it.
	forwarded, writing, releasePending, relaying, orphaned bool
	tries                                                  uint8

	tu       *tcpUp  // the upstream of the current try (holds one of its InFlight)
	uc       *upConn // last connection used (kept for the record after unbinding)
	id       uint16
	deadline int64
	seq      uint64
	client   *listener.TCPConn

	q     dnswire.Question
	query []byte // client's bytes, client's ID
	inl   []byte

	kernelT, readT, sentT int64
	xs                    xfrState
}

// tcpUp is the TCP side's state for one upstream of the pool: its shared
// connections and the dials in progress to it. Under TCPForwarder.mu.
type tcpUp struct {
	u       *Upstream
	pool    []*upConn // live shared connections (never for PROXY v2 upstreams)
	dialing int       // reserved dials for pool
}

// dedKey names a PROXY v2 upstream connection of one client connection.
type dedKey struct {
	client *listener.TCPConn
	up     int
}

// TCPForwarder forwards queries from TCP clients over pooled, pipelined TCP
// connections to the upstream the pool picks for each. Every query gets an
// ID from crypto/rand, unique among the queries in flight on its connection
// (RFC 5452 §9.2), and an answer is accepted only on that connection, with
// that ID, repeating the question (RFC 5452 §9.1, header-only error answers
// excepted). Answers may come in any order. A connection that dies has its
// queries sent once more, to another healthy upstream when there is one
// (within the retry budget); a query is never answered with bytes meant for
// another.
type TCPForwarder struct {
	cfg  TCPConfig
	ups  []*tcpUp // by Upstream.Index
	pool *Pool

	mu      sync.Mutex
	cond    *sync.Cond // a dial finished
	slots   []tslot
	free    []int32
	all     map[*upConn]struct{}
	ded     map[dedKey]*upConn // PROXY v2: one connection per client connection and upstream
	dedDial map[dedKey]bool    // PROXY v2 dials in progress
	xfrs    int                // transfers holding a slot
	closing bool
	rnd     [512]byte
	rndPos  int
	// retryTokens is the retry budget in thousandths of a retry, as for
	// UDP: each query earns 100 (second tries ≤ 10 % of queries), capped at
	// maxRetryTokens (a burst of 100), and a second try costs 1000.
	retryTokens int

	// scratch pools *tscratch for completions off the reader and sweeper
	// loops (servfailAllDown, giveUp).
	scratch sync.Pool

	stats  TCPStats
	panics faultinject.PanicLog
	wg     sync.WaitGroup
	cancel context.CancelFunc
	// fault, set only by tests in this package, sees each query while it
	// is taken in (internal/faultinject); nil otherwise.
	fault func(msg []byte)
}

// NewTCPForwarder builds a forwarder; connections are dialled on demand.
func NewTCPForwarder(cfg TCPConfig) (*TCPForwarder, error) {
	if cfg.Pool == nil && len(cfg.Upstreams) == 0 {
		return nil, errors.New("upstream: no upstream configured")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultTCPMaxInflight
	}
	cfg.MaxInflight = min(cfg.MaxInflight, 65535)
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = DefaultTCPPoolSize
	}
	if cfg.ConnInflight <= 0 {
		cfg.ConnInflight = DefaultTCPConnInflight
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultTCPIdleTimeout
	}
	if cfg.MaxTransfers <= 0 {
		cfg.MaxTransfers = DefaultTCPMaxTransfers
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
	f := &TCPForwarder{cfg: cfg, pool: cfg.Pool, all: make(map[*upConn]struct{}), rndPos: 512,
		ded: make(map[dedKey]*upConn), dedDial: make(map[dedKey]bool), retryTokens: maxRetryTokens,
		slots: make([]tslot, cfg.MaxInflight), free: make([]int32, cfg.MaxInflight)}
	for _, u := range cfg.Pool.Upstreams() {
		f.ups = append(f.ups, &tcpUp{u: u})
	}
	f.cond = sync.NewCond(&f.mu)
	arena := make([]byte, cfg.MaxInflight*slotQueryCap)
	for i := range f.slots {
		f.slots[i].inl = arena[i*slotQueryCap : (i+1)*slotQueryCap : (i+1)*slotQueryCap]
		f.free[i] = int32(cfg.MaxInflight - 1 - i)
	}
	return f, nil
}

// Stats returns the counters.
func (f *TCPForwarder) Stats() *TCPStats { return &f.stats }

// InFlight returns the queries in flight and, of those, the ones not yet
// written upstream.
func (f *TCPForwarder) InFlight() (inflight, unsent int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.slots {
		if sl := &f.slots[i]; sl.state != tFree {
			inflight++
			if !sl.forwarded {
				unsent++
			}
		}
	}
	return inflight, unsent
}

// OpenConns returns the number of open upstream connections.
func (f *TCPForwarder) OpenConns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.all)
}

// Start runs the timeout sweeper until Close.
func (f *TCPForwarder) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.wg.Add(1)
	go func() { defer f.wg.Done(); f.sweepLoop(ctx) }()
}

// Close closes every upstream connection; queries still in flight end as
// UpstreamClosed (SendFailed if never sent). It waits for the forwarder's
// goroutines. Call it after the client side has stopped handing queries in.
func (f *TCPForwarder) Close() {
	f.mu.Lock()
	f.closing = true
	conns := make([]*upConn, 0, len(f.all))
	for uc := range f.all {
		conns = append(conns, uc)
	}
	f.cond.Broadcast()
	f.mu.Unlock()
	if f.cancel != nil {
		f.cancel()
	}
	for _, uc := range conns {
		f.kill(uc, UpCloseShutdown, false)
	}
	f.wg.Wait()
}

func (f *TCPForwarder) rand16Locked() uint16 {
	if f.rndPos+2 > len(f.rnd) {
		_, _ = rand.Read(f.rnd[:])
		f.rndPos = 0
	}
	v := uint16(f.rnd[f.rndPos])<<8 | uint16(f.rnd[f.rndPos+1])
	f.rndPos += 2
	return v
}

// HandleTCPQuery implements listener.TCPQueryHandler: the pool's policy
// picks the query's upstream (when every upstream is down and the all-down
// action is servfail, the client gets SERVFAIL at once), then it is sent.
func (f *TCPForwarder) HandleTCPQuery(c *listener.TCPConn, msg []byte, kernelTime, readTime int64) {
	f.mu.Lock()
	if f.closing || len(f.free) == 0 {
		f.mu.Unlock()
		f.stats.DroppedFull.Add(1)
		c.Finish()
		return
	}
	i := f.free[len(f.free)-1]
	f.free = f.free[:len(f.free)-1]
	sl := &f.slots[i]
	sl.state = tDispatching
	// Flags that other goroutines read under mu (InFlight reads forwarded
	// of every slot) are reset under it.
	sl.forwarded, sl.writing, sl.releasePending, sl.relaying, sl.orphaned = false, false, false, false, false
	sl.tries, sl.uc, sl.id, sl.tu = 0, nil, 0, nil
	f.mu.Unlock()
	u, ok, err := f.prepare(i, c, msg, kernelTime, readTime)
	if !ok {
		return // panicked: counted, slot freed, client told
	}
	if err != nil {
		f.servfailAllDown(i)
		return
	}
	f.mu.Lock()
	if sl.xfr {
		if f.xfrs >= f.cfg.MaxTransfers {
			sl.xfr = false
			f.mu.Unlock()
			f.stats.XFRLimited.Add(1)
			f.stats.DroppedFull.Add(1)
			c.Finish()
			f.release(i)
			return
		}
		f.xfrs++
	}
	f.assignLocked(sl, f.ups[u.Index()])
	f.retryTokens = min(f.retryTokens+100, maxRetryTokens)
	f.mu.Unlock()
	f.send(i)
}

// prepare fills slot i, which the caller owns and which is bound to nothing
// yet, and picks the query's upstream. It runs without mu. A panic here (a
// bug tripped by a hostile query: this is where the query is parsed) is
// recovered per query: the slot is freed, the query counts as DroppedPanic
// (a tcp_handled fate), the client connection is told the query is done and
// goes on serving, and ok is false.
func (f *TCPForwarder) prepare(i int32, c *listener.TCPConn, msg []byte, kernelTime, readTime int64) (u *Upstream, ok bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			f.slots[i].xfr = false // it never held a transfer place
			f.release(i)
			f.stats.DroppedPanic.Add(1)
			c.Finish()
			f.panics.Report(f.cfg.Log, "upstream.tcp.query", v)
			u, ok, err = nil, false, nil
		}
	}()
	sl := &f.slots[i]
	// The rest is read only by whoever owns the slot, and the slot is ours
	// until it is bound (under mu): fill it without the lock.
	sl.client = c
	sl.kernelT, sl.readT, sl.sentT = kernelTime, readTime, 0
	sl.deadline = readTime + int64(f.cfg.Timeout)
	sl.seq = f.cfg.Seq.Next()
	if len(msg) <= len(sl.inl) {
		sl.query = append(sl.inl[:0], msg...)
	} else {
		sl.query = append([]byte(nil), msg...)
	}
	sl.qok = dnswire.ParseQuestion(msg, &sl.q) == nil
	sl.xfr = sl.qok && (sl.q.Type == typeAXFR || sl.q.Type == typeIXFR)
	if !sl.qok {
		f.stats.Malformed.Add(1)
	}
	if sl.xfr {
		f.stats.XFR.Add(1)
		sl.xs.reset(sl.q.Type == typeIXFR)
	}
	if f.fault != nil {
		f.fault(msg)
	}
	var qname []byte
	if sl.qok {
		qname = sl.q.NameBytes()
	}
	u, err = f.pool.Pick(qname)
	return u, true, err
}

// assignLocked makes tu the upstream of slot sl's current try: the query
// counts in its Queries and, until it ends or moves, its InFlight.
func (f *TCPForwarder) assignLocked(sl *tslot, tu *tcpUp) {
	sl.tu = tu
	tu.u.InFlight.Add(1)
	tu.u.Queries.Add(1)
}

// servfailAllDown answers an owned slot SERVFAIL at once: every upstream is
// down and the all-down action says so. Nothing goes upstream.
func (f *TCPForwarder) servfailAllDown(i int32) {
	sl := &f.slots[i]
	sl.xfr = false // it never held a transfer place
	f.stats.ServfailAllDown.Add(1)
	sc := f.getScratch()
	tx := &sc.tx
	f.fillTx(tx, sl, txn.ServfailAllDown)
	tx.UpstreamSent = 0
	b := sc.errorReply(sl, dnswire.RcodeServFail)
	if sent, err := sl.client.Send(b); err == nil {
		tx.Response, tx.ReplySent = b, sent
	}
	f.cfg.Sink.Submit(tx)
	f.putScratch(sc)
	sl.client.Finish()
	f.release(i)
}

// maxErrReply is the room for a reply tapproxy makes itself (SERVFAIL):
// the header and one question, whose name takes at most 256 octets in
// place (255, or labels and a final pointer) plus type and class. Longer
// cannot happen; append would still be correct, only allocating.
const maxErrReply = 512

// tscratch is the record and reply buffer of a completion that tapproxy
// answers or logs outside the reader and sweeper loops (every upstream
// down, a query given up). Those paths run on any goroutine, so scratch is
// pooled: an outage costs no allocation per query. Sink.Submit and
// TCPConn.Send do not retain what they are given, so it goes back to the
// pool as soon as both have returned.
type tscratch struct {
	tx  txn.Transaction
	buf [maxErrReply]byte
}

// errorReply builds the reply with rcode to slot sl's query in sc.buf:
// header and question (when it parsed), as dnswire.AppendErrorReply does.
func (sc *tscratch) errorReply(sl *tslot, rcode uint8) []byte {
	var qp *dnswire.Question
	if sl.qok {
		qp = &sl.q
	}
	return dnswire.AppendErrorReply(sc.buf[:0], sl.query, qp, rcode)
}

func (f *TCPForwarder) getScratch() *tscratch {
	if sc, ok := f.scratch.Get().(*tscratch); ok {
		return sc
	}
	return new(tscratch)
}

// putScratch drops the record's references to query and reply bytes and
// pools sc.
func (f *TCPForwarder) putScratch(sc *tscratch) {
	sc.tx = txn.Transaction{}
	f.scratch.Put(sc)
}

// secondTryLocked decides where slot sl's second try goes, or refuses it
// (false) when the retry budget is spent, so that a dead upstream cannot
// double the load on the others. The try goes to another healthy upstream
// when the pool has one (a failover, counted), else to the same upstream on
// a fresh connection (the connection may simply have been closed by the
// server while idle: RFC 7766 §6.2.3 allows it).
func (f *TCPForwarder) secondTryLocked(sl *tslot) bool {
	if f.retryTokens < 1000 {
		f.stats.RetriesDenied.Add(1)
		return false
	}
	f.retryTokens -= 1000
	f.stats.Retried.Add(1)
	var qname []byte
	if sl.qok {
		qname = sl.q.NameBytes()
	}
	if alt, err := f.pool.PickExcept(qname, sl.tu.u); err == nil {
		sl.tu.u.InFlight.Add(-1)
		f.assignLocked(sl, f.ups[alt.Index()])
		f.stats.Failovers.Add(1)
	}
	return true
}

// giveUp reasons.
const (
	giveUpFailed = iota // no connection would take it
	giveUpFull          // every pooled connection at ConnInflight
)

// send writes slot i (tDispatching, owned by the caller) to a connection to
// its upstream, dialling one when needed. A query gets two tries in all: a
// failed dial or write, or a connection that dies before the answer, costs
// one, and the second goes to another healthy upstream when there is one.
func (f *TCPForwarder) send(i int32) {
	sl := &f.slots[i]
	for {
		f.mu.Lock()
		now := time.Now().UnixNano()
		if f.closing || sl.tries >= 2 || now >= sl.deadline || (sl.tries == 1 && !f.secondTryLocked(sl)) {
			f.mu.Unlock()
			f.giveUp(i, giveUpFailed)
			return
		}
		sl.tries++
		tu := sl.tu
		var uc *upConn
		reserved := false // this attempt holds a dial reservation
		ded := !sl.xfr && tu.u.ProxyV2
		var key dedKey
		if !sl.xfr {
			full := false
			if ded {
				key = dedKey{client: sl.client, up: tu.u.index}
				uc, reserved, full = f.pickDedicatedLocked(key)
			} else {
				uc, reserved, full = f.pickPooledLocked(tu)
			}
			if full {
				why := giveUpFull
				if f.closing {
					why = giveUpFailed
				}
				f.mu.Unlock()
				f.giveUp(i, why)
				return
			}
		}
		if uc == nil {
			f.mu.Unlock()
			var err error
			uc, err = f.dial(tu, sl.client, sl.deadline, sl.xfr)
			f.mu.Lock()
			if reserved {
				if ded {
					delete(f.dedDial, key)
				} else {
					tu.dialing--
				}
				f.cond.Broadcast()
			}
			if err != nil {
				f.mu.Unlock()
				f.pool.Failure(tu.u, isTimeout(err))
				continue
			}
			if f.closing {
				f.mu.Unlock()
				uc.close()
				f.stats.ConnsClosed[UpCloseShutdown].Add(1)
				f.giveUp(i, giveUpFailed)
				return
			}
			f.all[uc] = struct{}{}
			switch {
			case ded:
				uc.owner = key
				f.ded[key] = uc
			case !sl.xfr:
				tu.pool = append(tu.pool, uc)
			}
			f.wg.Add(1)
			go func() { defer f.wg.Done(); f.readLoop(uc) }()
		}
		id := f.newIDLocked(uc)
		sl.state, sl.uc, sl.id = tPending, uc, id
		uc.byID[id] = uint16(i + 1)
		uc.inflight++
		uc.lastUsed = now
		sl.writing = true
		sl.sentT = time.Now().UnixNano()
		f.mu.Unlock()

		err := uc.write(sl.query, id, f.cfg.Timeout)

		f.mu.Lock()
		sl.writing = false
		// Answered while we wrote: the upstream had the query even if the
		// write then reported an error.
		answered := sl.state == tCompleting || sl.releasePending
		if (err == nil || answered) && !sl.forwarded {
			sl.forwarded = true
			f.stats.Forwarded.Add(1)
		}
		switch {
		case sl.releasePending:
			// Answered (or expired) while we wrote; the completer left
			// the freeing to us.
			sl.releasePending = false
			f.freeLocked(i)
			f.mu.Unlock()
			return
		case sl.state == tCompleting:
			f.mu.Unlock() // its completer frees it
			return
		case sl.orphaned && sl.relaying:
			// The connection died while its reader relays part of a
			// transfer: the reader sees orphaned and ends the slot.
			f.mu.Unlock()
			return
		case sl.orphaned:
			sl.orphaned = false // the connection died under us
			midway := sl.xfr && sl.xs.msgs > 0
			f.mu.Unlock()
			if midway {
				// Part of the transfer reached the client while we
				// wrote: it cannot be restarted (as in retry).
				f.giveUp(i, giveUpFailed)
				return
			}
			continue
		case err == nil:
			f.mu.Unlock() // pending: the reader, sweeper or killer takes it from here
			return
		}
		f.unbindLocked(i, false)
		sl.state = tDispatching
		f.mu.Unlock()
		f.kill(uc, UpCloseError, true)
	}
}
