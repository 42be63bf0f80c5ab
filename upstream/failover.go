package upstream

import (
	"net/netip"
	"time"

	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/listener"
)

// LoopGuard holds the local addresses of every upstream socket of the
// process. A query arriving from one of them is tapproxy forwarding to
// itself. It is read-only once built.
type LoopGuard struct{ set map[netip.AddrPort]struct{} }

// NewLoopGuard builds a guard from the workers' upstream sockets.
func NewLoopGuard(workers []*Worker) *LoopGuard {
	g := &LoopGuard{set: map[netip.AddrPort]struct{}{}}
	for _, w := range workers {
		for _, s := range w.socks {
			g.set[s.local] = struct{}{}
		}
	}
	return g
}

// Has reports whether ap is one of our upstream sockets.
func (g *LoopGuard) Has(ap netip.AddrPort) bool {
	_, ok := g.set[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())]
	return ok
}

// SetLoopGuard installs g; call before Start.
func (w *Worker) SetLoopGuard(g *LoopGuard) { w.cfg.Loop = g }

// failover re-sends, to another healthy upstream, the queries in flight on
// socket si after it reported ECONNREFUSED (an ICMP port unreachable: the
// upstream is not listening). Each query fails over at most once and only
// while the retry budget lasts, so a dead upstream cannot cause a retry
// storm; the rest wait for their deadline. The deadline is not extended.
func (w *Worker) failover(si int) {
	from := w.socks[si].up
	w.mu.Lock()
	if w.foBatch == nil {
		w.foBatch = listener.NewBatch(listener.BatchSize, listener.MaxDatagram)
	}
	for _, s := range w.socks {
		s.fout = s.fout[:0]
	}
	now := time.Now().UnixNano()
	n := 0
	for i := range w.tab.slots {
		sl := &w.tab.slots[i]
		if sl.state != slotPending || int(sl.sock) != si || sl.retried || n == len(w.foBatch.Pkts) {
			continue
		}
		if w.retryTokens < 1000 {
			w.stats.RetriesDenied.Add(1)
			continue
		}
		var qname []byte
		if sl.qok {
			qname = sl.q.NameBytes()
		}
		u, err := w.cfg.Pool.PickExcept(qname, from)
		if err != nil {
			continue // nowhere better to go: wait for the deadline
		}
		w.retryTokens -= 1000
		w.tab.detach(int32(i), false)
		nsi := w.pickSocket(u.index)
		id := w.freeID(nsi)
		w.tab.bind(int32(i), nsi, id)
		sl.retried, sl.sentT = true, now
		ns := w.socks[nsi]
		sl.upLocal = ns.local
		from.InFlight.Add(-1)
		u.InFlight.Add(1)
		u.Queries.Add(1)
		p := &w.foBatch.Pkts[n]
		n++
		p.N = copy(p.Buf, sl.query)
		dnswire.SetID(p.Buf, id)
		out := listener.Packet{Buf: p.Buf, N: p.N, IfIndex: uint32(i)}
		if ns.heads != nil {
			out.Head = AppendProxyV2(nil, sl.client, sl.local, false) // rare path
		}
		ns.fout = append(ns.fout, out)
		w.stats.Failovers.Add(1)
	}
	// The failover writers are shared by every reader goroutine: send
	// while holding mu. A failed re-send simply waits for its deadline.
	for _, s := range w.socks {
		if len(s.fout) > 0 {
			if s.fw == nil {
				s.fw = s.conn.NewWriter(listener.BatchSize)
			}
			_, _ = s.fw.Write(s.fout)
			s.fout = s.fout[:0]
		}
	}
	w.mu.Unlock()
}
