package upstream

import (
	"context"
	"net/netip"
	"time"

	"github.com/tapproxy/tapproxy/listener"
)

// Source-port rotation (Config.PortRotation; RFC 5452 §9.2, §10).
//
// A logical upstream socket (usock) is what pickSocket chooses and what an
// upstream ID is unique on (table.byID). It owns physSlots physical sockets
// (psock), one UDP socket each at a time: the active one carries its new
// queries; after PortRotation queries the spare takes over and the old one
// is retired. A retired socket is still read until every query sent from it
// is answered or timed out (RFC 5452 §9.1: an answer is accepted only on the
// port its query left from), then closed, and its reader goroutine opens a
// fresh socket on a new random port in its place: the next spare. A spare
// that is not ready when a rotation is due (its predecessor still drains,
// or its open failed) defers the rotation; the active socket carries on
// and each such query is counted (PortRotationsDeferred).
//
// Spares are opened in the background by their reader goroutine, not by
// the client-socket worker at rotation time: an open is about ten syscalls
// (socket, setsockopt ×4, bind, connect, getsockname, epoll_ctl, getrandom),
// tens of microseconds that would otherwise stall a whole batch of client
// queries. The price is one more open socket per logical socket, and a
// rotation on the hot path is a state change under mu.
//
// Every physical socket has a reader goroutine for the worker's lifetime
// (not one per rotation), which keeps its 2 MiB receive batch and rebinds
// its listener.Reader to each new socket, so a rotation allocates only what
// opening a socket does.

// physSlots is the number of physical sockets per logical one when ports
// rotate: the active one and one spare (which, between rotations, is the
// retired socket draining). More would let rotations outpace a slow
// upstream's answers, at one more socket and reader each.
const physSlots = 2

// psock states, guarded by Worker.mu.
const (
	psEmpty   uint8 = iota // no socket: its reader is opening one
	psReady                // open and read, never used: the spare
	psActive               // carries its logical socket's new queries
	psRetired              // replaced: read until its queries are done
	psClosing              // drained: its reader closes it and opens another
)

// usock is one logical upstream socket.
type usock struct {
	up       *Upstream
	upstream netip.AddrPort
	// phys are its physical sockets (indexes into Worker.phys); cur is
	// the active one. Guarded by mu.
	phys []int
	cur  int
}

// psock is one physical socket slot: a UDP socket, replaced by a fresh one
// on a new port each time it has drained.
type psock struct {
	sock int // its logical socket (index into Worker.socks)

	// Guarded by mu.
	conn    *listener.Conn
	local   netip.AddrPort
	state   uint8
	carried int // queries sent on conn

	// The client-socket worker goroutine's outgoing batch: out leaves
	// through outConn, the socket its queries were bound to (a retired
	// socket may have closed, and its slot reopened, before the batch is
	// written: then the write fails, it never leaves from a new port). w
	// is rebound to each new socket rather than reallocated.
	w       *listener.Writer
	wConn   *listener.Conn
	out     []listener.Packet
	outConn *listener.Conn
	// heads holds PROXY v2 headers for one outgoing batch.
	heads []byte

	// Failover re-sends; guarded by mu.
	fw     *listener.Writer
	fwConn *listener.Conn
	fout   []listener.Packet
}

// dial opens an upstream socket: from a random port of the ephemeral range
// when ports rotate, else from a kernel-chosen one.
func (w *Worker) dial(ctx context.Context, addr netip.AddrPort) (*listener.Conn, error) {
	if w.cfg.PortRotation <= 0 {
		return listener.DialUDP(ctx, addr, w.cfg.Socket)
	}
	return dialRandom(ctx, addr, w.cfg.Socket, w.ports, &w.stats.PortBindRetries, &w.stats.PortBindFallbacks)
}

// bindSocket binds slot i to a fresh ID on logical socket si, sent from its
// active physical socket, rotating first when that socket has carried
// PortRotation queries. Called with mu held; nothing here panics.
func (w *Worker) bindSocket(i int32, si int) (*psock, uint16) {
	ls := w.socks[si]
	if n := w.cfg.PortRotation; n > 0 && w.phys[ls.cur].carried >= n {
		w.rotateLocked(ls)
	}
	id := w.freeID(si)
	w.tab.bind(i, si, ls.cur, id)
	ps := w.phys[ls.cur]
	ps.carried++
	return ps, id
}

// rotateLocked makes ls's ready spare active and retires the current
// socket, or counts a deferral when no spare is ready. Called with mu held.
func (w *Worker) rotateLocked(ls *usock) {
	for _, p := range ls.phys {
		ps := w.phys[p]
		if ps.state != psReady {
			continue
		}
		old := w.phys[ls.cur]
		old.state = psRetired
		if w.tab.pin[ls.cur] == 0 {
			w.drainedLocked(old)
		}
		ps.state, ps.carried = psActive, 0
		ls.cur = p
		w.stats.PortRotations.Add(1)
		return
	}
	w.stats.PortRotationsDeferred.Add(1)
}

// detach is table.detach, and closes a retired socket whose last query this
// was. Called with mu held.
func (w *Worker) detach(i int32, timedOut bool) {
	p := w.tab.slots[i].phys
	w.tab.detach(i, timedOut)
	if w.tab.pin[p] == 0 && int(p) < len(w.phys) && w.phys[p].state == psRetired {
		w.drainedLocked(w.phys[p])
	}
}

// drainedLocked marks a retired socket with nothing in flight for closing
// and wakes its reader (a read deadline in the past), which closes it and
// opens the next spare. Called with mu held.
func (w *Worker) drainedLocked(ps *psock) {
	ps.state = psClosing
	if ps.conn != nil {
		_ = ps.conn.Unblock()
	}
}

// isClosing reports whether ps's reader should close its socket.
func (w *Worker) isClosing(ps *psock) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return ps.state == psClosing
}

// openSpare opens a fresh socket for physical slot p on a new random port
// and makes it the spare of its logical socket. A failed open (out of file
// descriptors, say) is counted, logged at a limited rate and retried with
// backoff; meanwhile rotations of that logical socket are deferred. It
// returns nil when ctx is done or the worker closed.
func (w *Worker) openSpare(ctx context.Context, p int) *listener.Conn {
	ps := w.phys[p]
	ls := w.socks[ps.sock]
	backoff := 50 * time.Millisecond
	var lastLog time.Time
	for {
		c, err := w.dial(ctx, ls.upstream)
		if err == nil {
			local := c.LocalAddr()
			// Registered before any query can leave from it.
			g := w.cfg.Loop
			if g != nil {
				g.add(local)
			}
			w.mu.Lock()
			if w.closed || ctx.Err() != nil {
				w.mu.Unlock()
				if g != nil {
					g.remove(local)
				}
				_ = c.Close()
				return nil
			}
			ps.conn, ps.local, ps.state, ps.carried = c, local, psReady, 0
			// Late marks belong to the port that closed.
			*w.tab.late[p] = [1024]uint64{}
			if c.Features().DropCounter {
				w.dropCounted[ls.up.index] = true
			}
			w.mu.Unlock()
			if w.spareReady != nil {
				w.spareReady()
			}
			return c
		}
		w.stats.PortOpenErrors.Add(1)
		if time.Since(lastLog) > 5*time.Second {
			w.cfg.Log.Warn("opening an upstream socket for a new source port", "upstream", ls.upstream, "err", err)
			lastLog = time.Now()
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// closeDrained closes physical slot p's drained socket c, keeping its
// kernel drop count in the totals.
func (w *Worker) closeDrained(p int, c *listener.Conn) {
	ps := w.phys[p]
	w.mu.Lock()
	if ps.conn != c { // Close took it already
		w.mu.Unlock()
		return
	}
	w.closedDrops[w.socks[ps.sock].up.index] += uint64(c.KernelDrops())
	local := ps.local
	ps.conn, ps.state = nil, psEmpty
	w.mu.Unlock()
	if g := w.cfg.Loop; g != nil {
		g.remove(local)
	}
	_ = c.Close()
}

// Sockets returns the upstream sockets open now (for start-up reports).
// With port rotation the set changes as the worker runs; drop counts of
// closed sockets are kept by KernelDrops.
func (w *Worker) Sockets() []*listener.Conn {
	w.mu.Lock()
	defer w.mu.Unlock()
	var cs []*listener.Conn
	for _, ps := range w.phys {
		if ps.conn != nil {
			cs = append(cs, ps.conn)
		}
	}
	return cs
}

// UpstreamDrops is the kernel receive-queue drop count (SO_RXQ_OVFL) of a
// worker's sockets to one upstream.
type UpstreamDrops struct {
	Upstream netip.AddrPort
	Drops    uint64
	// Counted: the kernel accepted SO_RXQ_OVFL on these sockets.
	Counted bool
}

// KernelDrops returns, per upstream in pool order, the drops summed over
// every socket this worker has had to it, closed ones included: a rotated
// port does not take its drops with it.
func (w *Worker) KernelDrops() []UpstreamDrops {
	ups := w.cfg.Pool.Upstreams()
	out := make([]UpstreamDrops, len(ups))
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, u := range ups {
		out[i] = UpstreamDrops{Upstream: u.Addr, Drops: w.closedDrops[i], Counted: w.dropCounted[i]}
	}
	for _, ps := range w.phys {
		if ps.conn != nil {
			out[w.socks[ps.sock].up.index].Drops += uint64(ps.conn.KernelDrops())
		}
	}
	return out
}

// PortRotation returns the queries per source port (0: fixed ports) and
// the range random ports are drawn from, with the reason when the kernel's
// range could not be read and the default is used.
func (w *Worker) PortRotation() (queries int, lo, hi uint16, err error) {
	return w.cfg.PortRotation, w.ports.lo, w.ports.hi, w.portsErr
}
