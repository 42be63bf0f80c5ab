package upstream

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/listener"
)

// LoopGuard holds the local addresses of every open upstream socket of the
// process. A query arriving from one of them is tapproxy forwarding to
// itself. Workers add and remove sockets as source ports rotate; it is safe
// for concurrent use.
type LoopGuard struct {
	// ports counts our open sockets per local port: a lock-free first
	// test, since almost every query comes from a port none of ours has.
	ports [65536]atomic.Uint32
	mu    sync.RWMutex
	set   map[netip.AddrPort]int
}

// NewLoopGuard builds a guard from the workers' upstream sockets. Install
// it in each with SetLoopGuard before Start, so the sockets they open later
// are added and the ones they close removed.
func NewLoopGuard(workers []*Worker) *LoopGuard {
	g := &LoopGuard{set: map[netip.AddrPort]int{}}
	for _, w := range workers {
		w.mu.Lock()
		for _, ps := range w.phys {
			if ps.conn != nil {
				g.add(ps.local)
			}
		}
		w.mu.Unlock()
	}
	return g
}

func loopKey(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (g *LoopGuard) add(ap netip.AddrPort) {
	ap = loopKey(ap)
	g.mu.Lock()
	g.set[ap]++
	g.ports[ap.Port()].Add(1)
	g.mu.Unlock()
}

func (g *LoopGuard) remove(ap netip.AddrPort) {
	ap = loopKey(ap)
	g.mu.Lock()
	if n := g.set[ap]; n > 0 {
		if n == 1 {
			delete(g.set, ap)
		} else {
			g.set[ap] = n - 1
		}
		g.ports[ap.Port()].Add(^uint32(0))
	}
	g.mu.Unlock()
}

// Has reports whether ap is one of our open upstream sockets.
func (g *LoopGuard) Has(ap netip.AddrPort) bool {
	if g.ports[ap.Port()].Load() == 0 {
		return false
	}
	ap = loopKey(ap)
	g.mu.RLock()
	_, ok := g.set[ap]
	g.mu.RUnlock()
	return ok
}

// SetLoopGuard installs g; call before Start.
func (w *Worker) SetLoopGuard(g *LoopGuard) { w.cfg.Loop = g }

// failover re-sends, to another healthy upstream, the queries in flight on
// physical socket p after it reported ECONNREFUSED (an ICMP port
// unreachable: the upstream is not listening). Each query fails over at
// most once and only while the retry budget lasts, so a dead upstream
// cannot cause a retry storm; the rest wait for their deadline. The
// deadline is not extended. A panic (a bug) is recovered per query, before
// the query is moved (it then waits for its deadline where it was), and
// for the sends.
func (w *Worker) failover(p int) {
	from := w.socks[w.phys[p].sock].up
	w.mu.Lock()
	defer w.mu.Unlock()
	defer w.recoverComplete("upstream.udp.failover") // runs before the unlock
	if w.foBatch == nil {
		w.foBatch = listener.NewBatch(listener.BatchSize, listener.MaxDatagram)
	}
	for _, s := range w.phys {
		s.fout = s.fout[:0]
	}
	now := time.Now().UnixNano()
	n := 0
	for i := range w.tab.slots {
		sl := &w.tab.slots[i]
		if sl.state != slotPending || int(sl.phys) != p || sl.retried || n == len(w.foBatch.Pkts) {
			continue
		}
		if w.retryTokens < 1000 {
			w.stats.RetriesDenied.Add(1)
			continue
		}
		if w.failoverOne(int32(i), from, &w.foBatch.Pkts[n], now) {
			n++
		}
	}
	// The failover writers are shared by every reader goroutine: send
	// while holding mu. A failed re-send simply waits for its deadline.
	for _, s := range w.phys {
		if len(s.fout) == 0 {
			continue
		}
		if c := s.conn; c != nil {
			if s.fw == nil {
				s.fw = c.NewWriter(listener.BatchSize)
			} else if s.fwConn != c {
				s.fw.Rebind(c)
			}
			s.fwConn = c
			_, _ = s.fw.Write(s.fout)
		}
		s.fout = s.fout[:0]
	}
}

// failoverOne moves pending slot i to another upstream and queues its
// re-send in buf; false when there is nowhere better to go or preparing it
// panicked (recovered: the slot stays where it was, marked as retried so
// the same bug is not tripped at every ICMP error, and waits for its
// deadline). Called with mu held.
func (w *Worker) failoverOne(i int32, from *Upstream, buf *listener.Packet, now int64) (moved bool) {
	sl := &w.tab.slots[i]
	defer func() {
		if v := recover(); v != nil {
			sl.retried = true
			w.stats.CompletePanic.Add(1)
			w.panicsC.Report(w.cfg.Log, "upstream.udp.failover", v)
			moved = false
		}
	}()
	var qname []byte
	if sl.qok {
		qname = sl.q.NameBytes()
	}
	u, err := w.cfg.Pool.PickExcept(qname, from)
	if err != nil {
		return false // nowhere better to go: wait for the deadline
	}
	if w.faultComplete != nil {
		w.faultComplete("failover", sl.query)
	}
	// Build the datagram before touching the slot.
	buf.N = copy(buf.Buf, sl.query)
	var head []byte
	if u.ProxyV2 {
		head = AppendProxyV2(nil, sl.client, sl.local, false) // rare path
	}
	nsi := w.pickSocket(u.index)
	// Commit: nothing below can panic.
	w.retryTokens -= 1000
	w.detach(i, false)
	ns, id := w.bindSocket(i, nsi)
	dnswire.SetID(buf.Buf, id)
	sl.retried, sl.sentT = true, now
	sl.upLocal = ns.local
	from.InFlight.Add(-1)
	u.InFlight.Add(1)
	u.Queries.Add(1)
	ns.fout = append(ns.fout, listener.Packet{Buf: buf.Buf, N: buf.N, IfIndex: uint32(i), Head: head})
	w.stats.Failovers.Add(1)
	return true
}
