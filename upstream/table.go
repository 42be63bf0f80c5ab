package upstream

import (
	"net/netip"

	"github.com/tapproxy/tapproxy/internal/dnswire"
)

// slotQueryCap is the query bytes kept inline per slot. Client queries are
// almost always below it (a query with EDNS and a cookie is ~60 bytes); a
// longer one costs one allocation.
const slotQueryCap = 512

const (
	slotFree uint8 = iota
	slotPending
	slotCompleting // matched or timed out; owned by one goroutine until freed
)

type slot struct {
	state   uint8
	qok     bool   // the query's question parsed: answers must repeat it
	retried bool   // already failed over once
	sock    uint16 // index into Worker.socks
	id      uint16 // upstream-leg ID

	deadline int64
	seq      uint64

	client  netip.AddrPort
	local   netip.AddrPort // address the query arrived on (reply source)
	ifindex uint32

	q     dnswire.Question
	query []byte // the client's bytes, verbatim
	inl   []byte // this slot's inline storage, slotQueryCap bytes

	kernelT, readT, sentT int64
	upLocal               netip.AddrPort
}

// table is a worker's bounded in-flight table. byID maps, per upstream
// socket, an upstream ID to slot index+1 (0: free), so lookup is O(1) and
// nothing is allocated. late remembers, per socket, IDs that timed out and
// have not been reused, so a late answer is told apart from a forged one.
type table struct {
	slots []slot
	free  []int32
	byID  []*[65536]uint16
	late  []*[1024]uint64
}

func newTable(capacity, socks int) *table {
	t := &table{slots: make([]slot, capacity), free: make([]int32, capacity)}
	arena := make([]byte, capacity*slotQueryCap)
	for i := range t.slots {
		t.slots[i].inl = arena[i*slotQueryCap : (i+1)*slotQueryCap : (i+1)*slotQueryCap]
		t.free[i] = int32(capacity - 1 - i)
	}
	for i := 0; i < socks; i++ {
		t.byID = append(t.byID, new([65536]uint16))
		t.late = append(t.late, new([1024]uint64))
	}
	return t
}

func (t *table) inflight() int { return len(t.slots) - len(t.free) }

// alloc takes a free slot, or returns -1 when the table is full.
func (t *table) alloc() int32 {
	if len(t.free) == 0 {
		return -1
	}
	i := t.free[len(t.free)-1]
	t.free = t.free[:len(t.free)-1]
	return i
}

// bind assigns upstream ID id on socket sock to slot i.
func (t *table) bind(i int32, sock int, id uint16) {
	s := &t.slots[i]
	s.sock, s.id, s.state = uint16(sock), id, slotPending
	t.byID[sock][id] = uint16(i + 1)
	t.late[sock][id>>6] &^= 1 << (id & 63)
}

// idFree reports whether id is unused on sock.
func (t *table) idFree(sock int, id uint16) bool { return t.byID[sock][id] == 0 }

// lookup returns the pending slot for id on sock, or -1.
func (t *table) lookup(sock int, id uint16) int32 {
	v := t.byID[sock][id]
	if v == 0 {
		return -1
	}
	return int32(v) - 1
}

// detach removes slot i's ID mapping and marks it completing; timedOut
// remembers the ID as late.
func (t *table) detach(i int32, timedOut bool) {
	s := &t.slots[i]
	t.byID[s.sock][s.id] = 0
	if timedOut {
		t.late[s.sock][s.id>>6] |= 1 << (s.id & 63)
	}
	s.state = slotCompleting
}

// takeLate reports and clears whether id on sock timed out recently.
func (t *table) takeLate(sock int, id uint16) bool {
	w := &t.late[sock][id>>6]
	bit := uint64(1) << (id & 63)
	if *w&bit == 0 {
		return false
	}
	*w &^= bit
	return true
}

// release returns slot i to the free list.
func (t *table) release(i int32) {
	s := &t.slots[i]
	s.state = slotFree
	s.query = nil
	t.free = append(t.free, i)
}
