package fstrm

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logInterval is the least time between two log lines of one kind. A dead
// collector or a full disk must not turn into a log line per frame.
const logInterval = 10 * time.Second

// rateLog logs at most one line per interval and reports how many lines it
// held back in the next one it lets through. It is safe for concurrent use.
type rateLog struct {
	log        *slog.Logger
	every      time.Duration
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func newRateLog(l *slog.Logger, every time.Duration) *rateLog {
	return &rateLog{log: l, every: every}
}

func (r *rateLog) logAt(now time.Time, level slog.Level, msg string, args ...any) {
	r.mu.Lock()
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	n := r.suppressed
	r.suppressed = 0
	r.last = now
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	r.log.Log(context.Background(), level, msg, args...)
}

// reset lets the next line through at once (used after a recovery, so that
// the next failure is reported promptly).
func (r *rateLog) reset() {
	r.mu.Lock()
	r.last = time.Time{}
	r.mu.Unlock()
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
