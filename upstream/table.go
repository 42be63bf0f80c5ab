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
	sock    uint16 // logical socket: index into Worker.socks
	phys    uint16 // physical socket the query left from: index into Worker.phys
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

// table is a worker's bounded in-flight table. byID maps, per logical
// upstream socket, an upstream ID to slot index+1 (0: free), so lookup is
// O(1) and nothing is allocated; an ID is unique across the physical
// sockets of its logical one (the socket carrying new queries and the one
// it replaced, still draining), so the tables keep their size however often
// ports rotate. late remembers, per physical socket, IDs that timed out and
// have not been reused, so a late answer is told apart from a forged one;
// pin counts each physical socket's pending queries (it closes when a
// replaced one reaches 0).
type table struct {
	slots []slot
	free  []int32
	byID  []*[65536]uint16
	late  []*[1024]uint64
	pin   []int32
}

func newTable(capacity, socks, phys int) *table {
	t := &table{slots: make([]slot, capacity), free: make([]int32, capacity), pin: make([]int32, phys)}
	arena := make([]byte, capacity*slotQueryCap)
	for i := range t.slots {
		t.slots[i].inl = arena[i*slotQueryCap : (i+1)*slotQueryCap : (i+1)*slotQueryCap]
		t.free[i] = int32(capacity - 1 - i)
	}
	for i := 0; i < socks; i++ {
		t.byID = append(t.byID, new([65536]uint16))
	}
	for i := 0; i < phys; i++ {
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

// bind assigns upstream ID id on logical socket sock, sent from physical
// socket phys, to slot i.
func (t *table) bind(i int32, sock, phys int, id uint16) {
	s := &t.slots[i]
	s.sock, s.phys, s.id, s.state = uint16(sock), uint16(phys), id, slotPending
	t.byID[sock][id] = uint16(i + 1)
	t.late[phys][id>>6] &^= 1 << (id & 63)
	t.pin[phys]++
}

// idFree reports whether id is unused on logical socket sock.
func (t *table) idFree(sock int, id uint16) bool { return t.byID[sock][id] == 0 }

// lookup returns the pending slot for id on logical socket sock whose query
// left from physical socket phys, or -1: an answer must arrive on the port
// its query left from (RFC 5452 §9.1).
func (t *table) lookup(sock, phys int, id uint16) int32 {
	v := t.byID[sock][id]
	if v == 0 || t.slots[v-1].phys != uint16(phys) {
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
		t.late[s.phys][s.id>>6] |= 1 << (s.id & 63)
	}
	t.pin[s.phys]--
	s.state = slotCompleting
}

// takeLate reports and clears whether id on physical socket phys timed out
// recently.
func (t *table) takeLate(phys int, id uint16) bool {
	w := &t.late[phys][id>>6]
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
