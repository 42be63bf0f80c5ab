package listener

import (
	"runtime"
	"testing"
)

// TestBigBatchOffHeap: a receive batch of 64 × 64 KiB buffers is mapped
// outside the Go heap (it must not raise the collector's goal, see
// allocBlock), yet behaves like any slice: zeroed, writable, each buffer
// its own, with its capacity capped so appends cannot run into the next.
func TestBigBatchOffHeap(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b := NewBatch(BatchSize, MaxDatagram)
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 1<<20 {
		t.Errorf("a %d MiB batch grew the Go heap by %d bytes", BatchSize*MaxDatagram>>20, grew)
	}
	for i := range b.Pkts {
		buf := b.Pkts[i].Buf
		if len(buf) != MaxDatagram || cap(buf) != MaxDatagram {
			t.Fatalf("packet %d: len %d cap %d", i, len(buf), cap(buf))
		}
		if buf[0] != 0 || buf[MaxDatagram-1] != 0 {
			t.Fatalf("packet %d: not zeroed", i)
		}
		buf[0], buf[MaxDatagram-1] = byte(i), byte(i)
	}
	for i := range b.Pkts {
		if buf := b.Pkts[i].Buf; buf[0] != byte(i) || buf[MaxDatagram-1] != byte(i) {
			t.Fatalf("packet %d: buffers overlap", i)
		}
	}
	// Small batches stay ordinary heap slices.
	s := NewBatch(4, 512)
	if len(s.Pkts[3].Buf) != 512 || cap(s.Pkts[3].Buf) != 512 {
		t.Fatalf("small batch: len %d cap %d", len(s.Pkts[3].Buf), cap(s.Pkts[3].Buf))
	}
}
