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
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
)

// TCPConfig configures forwarding of the queries that arrived over TCP.
// They go upstream over TCP (RFC 7766 §5: a client that chose TCP gets a
// TCP-sized answer; a truncated UDP answer is relayed to a UDP client as
// is and the client retries over TCP itself).
type TCPConfig struct {
	// Upstreams are the servers; the first is used, as for UDP.
	Upstreams []netip.AddrPort
	// Timeout bounds each query (from its arrival) and, for a zone
	// transfer, the wait for each next message.
	Timeout time.Duration
	// MaxInflight bounds all TCP queries in flight (≤ 65535).
	MaxInflight int
	// PoolSize is how many connections to the upstream are kept and
	// shared (pipelined) by all clients' queries. Zone transfers get a
	// connection of their own, outside the pool.
	PoolSize int
	// ConnInflight caps the queries pipelined on one pooled connection.
	ConnInflight int
	// IdleTimeout closes a pooled connection unused this long.
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
	UpCloseIdle     UpCloseReason = iota // pooled, unused for IdleTimeout
	UpCloseEOF                           // the upstream closed it
	UpCloseError                         // read/write error or a frame shorter than a header
	UpCloseXFRDone                       // a zone transfer's own connection, after its last message
	UpCloseTimeout                       // a zone transfer's own connection, after its timeout
	UpCloseShutdown                      // tapproxy stopping
	numUpCloseReasons
)

var upCloseNames = [numUpCloseReasons]string{"idle", "eof", "error", "xfr_done", "timeout", "shutdown"}

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
// Queries handed in: DroppedFull + SendFailed + Forwarded (+ those still
// being sent). Forwarded: Answered + TimedOut + ReplyFailed +
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
	XFR            atomic.Uint64 // AXFR/IXFR queries
	XFRMessages    atomic.Uint64 // transfer messages relayed (part of RespMatched)
	XFRLimited     atomic.Uint64 // of DroppedFull: MaxTransfers already running

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

// TCPForwarder forwards queries from TCP clients over pooled, pipelined TCP
// connections to the upstream. Every query gets an ID from crypto/rand,
// unique among the queries in flight on its connection (RFC 5452 §9.2), and
// an answer is accepted only on that connection, with that ID, repeating the
// question (RFC 5452 §9.1, header-only error answers excepted). Answers may
// come in any order. A connection that dies has its queries sent once more
// on another; a query is never answered with bytes meant for another.
type TCPForwarder struct {
	cfg TCPConfig
	up  netip.AddrPort

	mu      sync.Mutex
	cond    *sync.Cond // a dial finished
	slots   []tslot
	free    []int32
	pool    []*upConn // live pooled connections
	all     map[*upConn]struct{}
	dialing int
	xfrs    int // transfers holding a slot
	closing bool
	rnd     [512]byte
	rndPos  int

	stats  TCPStats
	wg     sync.WaitGroup
	cancel context.CancelFunc
}

// NewTCPForwarder builds a forwarder; connections are dialled on demand.
func NewTCPForwarder(cfg TCPConfig) (*TCPForwarder, error) {
	if len(cfg.Upstreams) == 0 {
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
	f := &TCPForwarder{cfg: cfg, up: cfg.Upstreams[0], all: make(map[*upConn]struct{}), rndPos: 512,
		slots: make([]tslot, cfg.MaxInflight), free: make([]int32, cfg.MaxInflight)}
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
		f.kill(uc, UpCloseShutdown)
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

// HandleTCPQuery implements listener.TCPQueryHandler.
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
	sl.tries, sl.uc, sl.id = 0, nil, 0
	f.mu.Unlock()
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
		f.mu.Lock()
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
		f.mu.Unlock()
	}
	f.send(i)
}

// giveUp reasons.
const (
	giveUpFailed = iota // no connection would take it
	giveUpFull          // every pooled connection at ConnInflight
)

// send writes slot i (tDispatching, owned by the caller) to a connection,
// dialling one when needed. A query gets two tries in all: a failed dial or
// write, or a connection that dies before the answer, costs one.
func (f *TCPForwarder) send(i int32) {
	sl := &f.slots[i]
	for {
		f.mu.Lock()
		now := time.Now().UnixNano()
		if f.closing || sl.tries >= 2 || now >= sl.deadline {
			f.mu.Unlock()
			f.giveUp(i, giveUpFailed)
			return
		}
		sl.tries++
		if sl.tries == 2 {
			f.stats.Retried.Add(1)
		}
		var uc *upConn
		reserved := false // this attempt holds one of PoolSize dial reservations
		if !sl.xfr {
			for {
				uc, reserved = f.pickLocked()
				if uc != nil || reserved || f.dialing == 0 || f.closing {
					break
				}
				f.cond.Wait() // every connection full, but a dial in progress will add one
			}
			if uc == nil && !reserved {
				closing := f.closing
				f.mu.Unlock()
				if closing {
					f.giveUp(i, giveUpFailed)
				} else {
					f.giveUp(i, giveUpFull)
				}
				return
			}
		}
		if uc == nil {
			f.mu.Unlock()
			var err error
			uc, err = f.dial(sl.deadline, sl.xfr)
			f.mu.Lock()
			if reserved {
				f.dialing--
				f.cond.Broadcast()
			}
			if err != nil {
				f.mu.Unlock()
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
			if !sl.xfr {
				f.pool = append(f.pool, uc)
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
		case sl.orphaned:
			sl.orphaned = false // the connection died under us: try again
			f.mu.Unlock()
			continue
		case err == nil:
			f.mu.Unlock() // pending: the reader, sweeper or killer takes it from here
			return
		}
		f.unbindLocked(i, false)
		sl.state = tDispatching
		f.mu.Unlock()
		f.kill(uc, UpCloseError)
	}
}
