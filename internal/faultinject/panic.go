package faultinject

import (
	"log/slog"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// ReportInterval is the least time between two logged panics of one
// PanicLog; the ones in between are counted and the next line says how many.
const ReportInterval = 5 * time.Second

// PanicLog reports recovered panics at a limited rate, with the stack, so
// that hostile input that trips a bug on every packet cannot flood the log.
// The zero value is ready; it is safe for concurrent use.
type PanicLog struct {
	last       atomic.Int64 // unix nanoseconds of the last report
	suppressed atomic.Uint64
}

// Report logs v (the value recover returned) at error level with where (the
// loop that recovered) and the stack, unless a report was made less than
// ReportInterval ago. It must be called from the deferred function that
// recovered, so that the stack still shows the panicking frames.
func (p *PanicLog) Report(log *slog.Logger, where string, v any) {
	now := time.Now().UnixNano()
	last := p.last.Load()
	if last != 0 && now-last < int64(ReportInterval) || !p.last.CompareAndSwap(last, now) {
		p.suppressed.Add(1)
		return
	}
	if log == nil {
		return
	}
	log.Error("recovered panic", "where", where, "panic", v,
		"suppressed_since_last", p.suppressed.Swap(0), "stack", string(debug.Stack()))
}
