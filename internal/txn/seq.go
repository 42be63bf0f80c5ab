package txn

import "sync/atomic"

// Seq hands out transaction sequence numbers, unique within the process and
// starting at 1, so a collector sees gaps (loss) and duplicates (replay).
type Seq struct{ n atomic.Uint64 }

// Next returns the next sequence number.
func (s *Seq) Next() uint64 { return s.n.Add(1) }
