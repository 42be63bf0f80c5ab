package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
)

// upConn is one TCP connection to an upstream: pooled and shared, a zone
// transfer's own, or (PROXY v2 upstreams) one client connection's own. Its
// reader goroutine reads answers; queries are written by the goroutine that
// sends them, one at a time under wmu.
type upConn struct {
	nc     *net.TCPConn
	sr     *listener.StampReader
	tu     *tcpUp
	remote netip.AddrPort
	local  netip.AddrPort
	xfr    bool
	// owner is set for a PROXY v2 connection: the one client connection
	// (and upstream) it serves, named in its header. Set once under
	// TCPForwarder.mu before the connection is shared.
	owner dedKey

	// Under TCPForwarder.mu.
	dead     bool
	inflight int
	lastUsed int64
	byID     *[65536]uint16 // upstream ID → slot index + 1
	late     *[1024]uint64  // IDs that timed out and were not reused

	wmu  sync.Mutex
	wbuf []byte // 2-byte length + largest message

	// The reader goroutine's own record and scratch question.
	tx txn.Transaction
	q  dnswire.Question
}

func (uc *upConn) close() { _ = uc.nc.Close() }

func (uc *upConn) isLate(id uint16) bool { return uc.late[id>>6]&(1<<(id&63)) != 0 }

func (uc *upConn) takeLate(id uint16) bool {
	if !uc.isLate(id) {
		return false
	}
	uc.late[id>>6] &^= 1 << (id & 63)
	return true
}

// write sends one framed query with the upstream ID in place of the
// client's, in a single write (one segment for small queries).
func (uc *upConn) write(query []byte, id uint16, timeout time.Duration) error {
	uc.wmu.Lock()
	defer uc.wmu.Unlock()
	n := len(query)
	b := uc.wbuf[:2+n]
	b[0], b[1] = byte(n>>8), byte(n)
	copy(b[2:], query)
	dnswire.SetID(b[2:], id)
	_ = uc.nc.SetWriteDeadline(time.Now().Add(timeout))
	_, err := uc.nc.Write(b)
	return err
}

// dial opens a connection to tu (bounded by the query's deadline). For a
// PROXY v2 upstream it first writes the header naming client (haproxy
// proxy-protocol.txt §2.2, command PROXY, STREAM): once, at the start, so
// the connection can carry that client's queries only.
func (f *TCPForwarder) dial(tu *tcpUp, client *listener.TCPConn, deadline int64, xfr bool) (*upConn, error) {
	ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, deadline))
	defer cancel()
	nc, ts, err := listener.DialTCP(ctx, tu.u.Addr)
	if err != nil {
		f.stats.DialFailed.Add(1)
		return nil, err
	}
	f.stats.Dialed.Add(1)
	if !ts {
		f.stats.NoTimestamp.Add(1)
	}
	sr, err := listener.NewStampReader(nc)
	if err != nil {
		_ = nc.Close()
		f.stats.ConnsClosed[UpCloseError].Add(1)
		return nil, err
	}
	if tu.u.ProxyV2 {
		hdr := AppendProxyV2(make([]byte, 0, MaxProxyV2Header), client.RemoteAddr(), client.LocalAddr(), true)
		_ = nc.SetWriteDeadline(time.Unix(0, deadline))
		if _, err := nc.Write(hdr); err != nil {
			_ = nc.Close()
			f.stats.ConnsClosed[UpCloseError].Add(1)
			return nil, err
		}
	}
	la := nc.LocalAddr().(*net.TCPAddr).AddrPort()
	return &upConn{nc: nc, sr: sr, tu: tu, remote: tu.u.Addr, local: netip.AddrPortFrom(la.Addr().Unmap(), la.Port()), xfr: xfr,
		lastUsed: time.Now().UnixNano(), byID: new([65536]uint16), late: new([1024]uint64),
		wbuf: make([]byte, 2+65535)}, nil
}

// isTimeout reports whether a dial failed on the query's deadline (a silent
// upstream) rather than fast (refused, unreachable).
func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}

// pickLocked returns the least loaded pooled connection to tu with room, or
// reserves a dial (dial=true) when tu's pool has room, or neither when
// every connection is at ConnInflight.
func (f *TCPForwarder) pickLocked(tu *tcpUp) (uc *upConn, dial bool) {
	for _, c := range tu.pool {
		if c.inflight < f.cfg.ConnInflight && (uc == nil || c.inflight < uc.inflight) {
			uc = c
		}
	}
	if uc != nil {
		return uc, false
	}
	if len(tu.pool)+tu.dialing < f.cfg.PoolSize {
		tu.dialing++
		return nil, true
	}
	return nil, false
}

// pickPooledLocked is pickLocked, waiting while every connection is full
// but a dial in progress will add one; full reports that none will take the
// query.
func (f *TCPForwarder) pickPooledLocked(tu *tcpUp) (uc *upConn, dial, full bool) {
	for {
		uc, dial = f.pickLocked(tu)
		if uc != nil || dial {
			return uc, dial, false
		}
		if tu.dialing == 0 || f.closing {
			return nil, false, true
		}
		f.cond.Wait()
	}
}

// pickDedicatedLocked returns the client's own connection to a PROXY v2
// upstream, or reserves its dial (waiting while another goroutine dials
// it); full reports that it is at ConnInflight (or the forwarder closing).
func (f *TCPForwarder) pickDedicatedLocked(key dedKey) (uc *upConn, dial, full bool) {
	for {
		if f.closing {
			return nil, false, true
		}
		if uc = f.ded[key]; uc != nil {
			if uc.inflight < f.cfg.ConnInflight {
				return uc, false, false
			}
			return nil, false, true
		}
		if !f.dedDial[key] {
			f.dedDial[key] = true
			return nil, true, false
		}
		f.cond.Wait()
	}
}

// newIDLocked picks a random ID free on uc, avoiding IDs whose query timed
// out recently so a late answer cannot meet a new query with the same ID
// (its question would differ, but the late answer is then told apart).
func (f *TCPForwarder) newIDLocked(uc *upConn) uint16 {
	id := f.rand16Locked()
	for tries := 0; uc.byID[id] != 0 || (tries < 16 && uc.isLate(id)); tries++ {
		if tries < 16 {
			id = f.rand16Locked()
		} else {
			id++ // at most ConnInflight IDs are taken: this ends
		}
	}
	uc.late[id>>6] &^= 1 << (id & 63)
	return id
}

// unbindLocked removes slot i's ID from its connection; timedOut remembers
// the ID as late.
func (f *TCPForwarder) unbindLocked(i int32, timedOut bool) {
	sl := &f.slots[i]
	uc := sl.uc
	if uc.byID[sl.id] == uint16(i+1) {
		uc.byID[sl.id] = 0
		uc.inflight--
		uc.lastUsed = time.Now().UnixNano()
	}
	if timedOut {
		uc.late[sl.id>>6] |= 1 << (sl.id & 63)
	}
}

func (f *TCPForwarder) freeLocked(i int32) {
	sl := &f.slots[i]
	if sl.xfr {
		f.xfrs--
	}
	if sl.tu != nil {
		sl.tu.u.InFlight.Add(-1)
		sl.tu = nil
	}
	sl.state, sl.xfr = tFree, false
	sl.query, sl.client, sl.uc = nil, nil, nil
	f.free = append(f.free, i)
}

// release frees a completed slot, or leaves that to its sender when the
// sender is still inside its write.
func (f *TCPForwarder) release(i int32) {
	f.mu.Lock()
	if sl := &f.slots[i]; sl.writing {
		sl.releasePending = true
	} else {
		f.freeLocked(i)
	}
	f.mu.Unlock()
}

func (f *TCPForwarder) markDeadLocked(uc *upConn, reason UpCloseReason) {
	uc.dead = true
	switch {
	case uc.owner.client != nil:
		if f.ded[uc.owner] == uc {
			delete(f.ded, uc.owner)
		}
	case !uc.xfr:
		p := uc.tu.pool
		for k, c := range p {
			if c == uc {
				uc.tu.pool = append(p[:k], p[k+1:]...)
				break
			}
		}
	}
	delete(f.all, uc)
	f.stats.ConnsClosed[reason].Add(1)
	f.cond.Broadcast()
}

// retire closes a connection that has nothing left to do.
func (f *TCPForwarder) retire(uc *upConn, reason UpCloseReason) {
	f.mu.Lock()
	dead := uc.dead
	if !dead {
		f.markDeadLocked(uc, reason)
	}
	f.mu.Unlock()
	if !dead {
		uc.close()
	}
}

// kill ends a connection that failed and sends its queries once more
// elsewhere. Slots being written or relayed by another goroutine are left
// to it (orphaned). The upstream is charged one fast failure (passive
// health) when failed is set (a write failed) or when the connection ended
// on its own (EOF, reset, a bad frame) with queries in flight: an idle
// connection that the server closes is no failure.
func (f *TCPForwarder) kill(uc *upConn, reason UpCloseReason, failed bool) {
	f.mu.Lock()
	if uc.dead {
		f.mu.Unlock()
		return
	}
	failed = failed || ((reason == UpCloseEOF || reason == UpCloseError) && uc.inflight > 0)
	f.markDeadLocked(uc, reason)
	var orphans []int32
	for i := range f.slots {
		if uc.inflight == 0 {
			break
		}
		sl := &f.slots[i]
		if sl.state != tPending || sl.uc != uc {
			continue
		}
		f.unbindLocked(int32(i), false)
		sl.state = tDispatching
		if sl.writing || sl.relaying {
			sl.orphaned = true
			continue
		}
		orphans = append(orphans, int32(i))
	}
	f.mu.Unlock()
	uc.close()
	if failed {
		f.pool.Failure(uc.tu.u, false)
	}
	for _, i := range orphans {
		f.retry(i)
	}
}

// retry sends an orphaned query again, unless part of a zone transfer
// already reached the client (a transfer cannot be restarted midway).
func (f *TCPForwarder) retry(i int32) {
	if sl := &f.slots[i]; sl.xfr && sl.xs.msgs > 0 {
		f.giveUp(i, giveUpFailed)
		return
	}
	f.send(i)
}

// giveUp ends an owned (tDispatching) slot that will not be sent again.
func (f *TCPForwarder) giveUp(i int32, why int) {
	sl := &f.slots[i]
	var o txn.Outcome
	switch {
	case !sl.forwarded && why == giveUpFull:
		f.stats.DroppedFull.Add(1)
		sl.client.Finish()
		f.release(i)
		return
	case !sl.forwarded:
		f.stats.SendFailed.Add(1)
		o = txn.SendFailed
	case time.Now().UnixNano() >= sl.deadline:
		sc := f.getScratch()
		f.expire(i, sc)
		f.putScratch(sc)
		return
	default:
		f.stats.UpstreamClosed.Add(1)
		o = txn.UpstreamClosed
		if sl.xfr && sl.xs.msgs > 0 {
			sl.client.Abort()
		}
	}
	sc := f.getScratch()
	tx := &sc.tx
	f.fillTx(tx, sl, o)
	if o == txn.SendFailed {
		tx.UpstreamSent = 0
	}
	f.cfg.Sink.Submit(tx)
	f.putScratch(sc)
	sl.client.Finish()
	f.release(i)
}

// expire ends an owned slot whose deadline passed: SERVFAIL when
// configured (never in the middle of a transfer: the client already has
// part of it and is told by the connection closing instead). The record
// and the SERVFAIL are built in sc, which the caller owns.
func (f *TCPForwarder) expire(i int32, sc *tscratch) {
	sl := &f.slots[i]
	f.stats.TimedOut.Add(1)
	if sl.tu != nil {
		f.pool.Failure(sl.tu.u, true)
	}
	tx := &sc.tx
	f.fillTx(tx, sl, txn.TimedOut)
	switch {
	case sl.xfr && sl.xs.msgs > 0:
		sl.client.Abort()
	case f.cfg.ServfailOnTimeout:
		b := sc.errorReply(sl, dnswire.RcodeServFail)
		if sent, err := sl.client.Send(b); err == nil {
			f.stats.ServfailSent.Add(1)
			tx.Outcome = txn.TimedOutServfail
			tx.Response, tx.ReplySent = b, sent
		}
	}
	f.cfg.Sink.Submit(tx)
	sl.client.Finish()
	f.release(i)
}

func (f *TCPForwarder) fillTx(t *txn.Transaction, sl *tslot, o txn.Outcome) {
	*t = txn.Transaction{Seq: sl.seq, Transport: txn.TCP, Outcome: o,
		Client: sl.client.RemoteAddr(), Local: sl.client.LocalAddr(),
		Query: sl.query, QueryKernel: sl.kernelT, QueryRead: sl.readT, UpstreamSent: sl.sentT}
	switch {
	case sl.uc != nil:
		t.Upstream, t.UpstreamLocal, t.UpstreamID = sl.uc.remote, sl.uc.local, sl.id
	case sl.tu != nil:
		t.Upstream = sl.tu.u.Addr
	}
	if !sl.qok {
		t.Flags |= txn.Malformed
	}
}

// readLoop reads framed answers until the connection ends.
func (f *TCPForwarder) readLoop(uc *upConn) {
	buf := make([]byte, 65535)
	var hdr [2]byte
	for {
		_, err := uc.sr.ReadFull(hdr[:])
		if err == nil {
			n := int(hdr[0])<<8 | int(hdr[1])
			if n < dnswire.HeaderLen {
				// The stream cannot be trusted past a frame that is
				// no DNS message: close it, retry its queries.
				f.stats.RespReceived.Add(1)
				f.stats.RespShort.Add(1)
				f.kill(uc, UpCloseError, false)
				return
			}
			var kt int64
			if kt, err = uc.sr.ReadFull(buf[:n]); err == nil {
				if !f.onAnswer(uc, buf[:n], kt, time.Now().UnixNano()) {
					return
				}
				continue
			}
		}
		reason := UpCloseError
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			reason = UpCloseEOF
		}
		f.kill(uc, reason, false) // a no-op when it was closed on purpose
		return
	}
}

// onAnswer matches one upstream message and relays it. It returns false
// when the connection is done (a transfer's own connection after its last
// message).
func (f *TCPForwarder) onAnswer(uc *upConn, msg []byte, kt, readT int64) bool {
	f.stats.RespReceived.Add(1)
	h, _ := dnswire.ParseHeader(msg)
	if !h.QR() {
		f.stats.RespNotResponse.Add(1)
		return true
	}
	qerr := dnswire.ParseQuestion(msg, &uc.q)
	f.mu.Lock()
	v := uc.byID[h.ID]
	if v == 0 {
		if uc.takeLate(h.ID) {
			f.stats.RespLate.Add(1)
		} else {
			f.stats.RespUnknownID.Add(1)
		}
		f.mu.Unlock()
		return true
	}
	i := int32(v - 1)
	sl := &f.slots[i]
	if sl.qok {
		// RFC 5452 §9.1; a transfer's later messages may leave the
		// question out (RFC 5936 §2.2.1).
		first := !sl.xfr || sl.xs.msgs == 0
		switch {
		case qerr == nil && uc.q.Equal(&sl.q):
		case h.QDCount == 0 && (!first || dnswire.IsErrorRcode(h.Rcode())):
		default:
			f.stats.RespQuestionMismatch.Add(1)
			f.mu.Unlock()
			return true
		}
	}
	f.stats.RespMatched.Add(1)
	firstMsg := !sl.xfr || sl.xs.msgs == 0
	last := true
	if sl.xfr {
		f.stats.XFRMessages.Add(1)
		last = sl.xs.scan(msg)
	}
	if last {
		f.unbindLocked(i, false)
		sl.state = tCompleting
	} else {
		sl.relaying = true
		sl.deadline = readT + int64(f.cfg.Timeout)
	}
	client := sl.client
	f.mu.Unlock()
	if firstMsg {
		// Passive health: an acceptable answer, with the time from the
		// query's write to the kernel stamp of the answer's last segment.
		rtt := kt - sl.sentT
		if kt == 0 {
			rtt = readT - sl.sentT
		}
		f.pool.Success(uc.tu.u, time.Duration(rtt))
	}

	// Restore the client's ID: the only byte changed on the way back.
	msg[0], msg[1] = sl.query[0], sl.query[1]
	var sent int64
	var err error
	if sl.xfr {
		sent, err = client.SendWait(msg)
	} else {
		sent, err = client.Send(msg)
	}
	o := txn.Answered
	if err != nil {
		o = txn.ReplyFailed
	}
	tx := &uc.tx
	f.fillTx(tx, sl, o)
	tx.Response = msg
	tx.ResponseKernel, tx.ResponseRead = kt, readT
	if err == nil {
		tx.ReplySent = sent
	}
	if h.TC() {
		tx.Flags |= txn.Truncated
	}
	f.cfg.Sink.Submit(tx)

	if !last {
		f.mu.Lock()
		sl.relaying = false
		orphaned := sl.orphaned
		sl.orphaned = false
		if err == nil && !orphaned {
			f.mu.Unlock()
			return true
		}
		if !orphaned {
			f.unbindLocked(i, false)
		}
		sl.state = tCompleting
		f.mu.Unlock()
		if err != nil {
			f.stats.ReplyFailed.Add(1) // the client went away mid-transfer
		} else {
			f.stats.UpstreamClosed.Add(1)
			client.Abort()
		}
		client.Finish()
		f.release(i)
		f.retire(uc, UpCloseXFRDone)
		return false
	}
	if err != nil {
		f.stats.ReplyFailed.Add(1)
	} else {
		f.stats.Answered.Add(1)
	}
	client.Finish()
	f.release(i)
	if uc.xfr {
		f.retire(uc, UpCloseXFRDone)
		return false
	}
	return true
}

// sweepLoop expires queries past their deadline and closes pooled
// connections idle for IdleTimeout. A scan per tick avoids a timer per
// query.
func (f *TCPForwarder) sweepLoop(ctx context.Context) {
	tick := min(max(f.cfg.Timeout/20, 5*time.Millisecond), 100*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	var expired []int32
	var closing []*upConn
	sc := new(tscratch) // this goroutine's own: timeouts allocate nothing
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		expired, closing = expired[:0], closing[:0]
		f.mu.Lock()
		for i := range f.slots {
			sl := &f.slots[i]
			if sl.state != tPending || sl.writing || sl.relaying || sl.deadline > now {
				continue
			}
			f.unbindLocked(int32(i), true)
			sl.state = tCompleting
			expired = append(expired, int32(i))
			if sl.uc.xfr && !sl.uc.dead {
				f.markDeadLocked(sl.uc, UpCloseTimeout)
				closing = append(closing, sl.uc)
			}
		}
		for _, tu := range f.ups {
			for k := 0; k < len(tu.pool); k++ {
				uc := tu.pool[k]
				if uc.inflight == 0 && now-uc.lastUsed >= int64(f.cfg.IdleTimeout) {
					f.markDeadLocked(uc, UpCloseIdle)
					closing = append(closing, uc)
					k--
				}
			}
		}
		// A PROXY v2 connection serves one client connection: it goes
		// when that client's connection has closed, or idles out, once
		// nothing is in flight on it.
		for _, uc := range f.ded {
			switch {
			case uc.inflight > 0:
			case uc.owner.client.Closed():
				f.markDeadLocked(uc, UpCloseClientGone)
				closing = append(closing, uc)
			case now-uc.lastUsed >= int64(f.cfg.IdleTimeout):
				f.markDeadLocked(uc, UpCloseIdle)
				closing = append(closing, uc)
			}
		}
		f.mu.Unlock()
		for _, uc := range closing {
			uc.close()
		}
		for _, i := range expired {
			f.expire(i, sc)
			sc.tx = txn.Transaction{}
		}
	}
}
