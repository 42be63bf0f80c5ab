package tap

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/tapproxy/tapproxy/internal/txn"
)

// lockedLog is a log destination safe for the writer goroutine and the test.
type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLoggerRecoversEncoderPanic: a panic while encoding a transaction is
// recovered in the writer goroutine; that transaction's records count
// dropped_panic, every other transaction is written, the writer shuts down
// normally, and the report carries where and the stack.
func TestLoggerRecoversEncoderPanic(t *testing.T) {
	enc := NewEncoder(EncoderOptions{Types: TypesAll})
	w := &fakeWriter{}
	var logs lockedLog
	l := NewLogger(LoggerOptions{}, enc, w, slog.New(slog.NewTextHandler(&logs, nil)))
	l.fault = func(tr *txn.Transaction) {
		if tr.Seq%7 == 3 {
			panic("injected encoder fault")
		}
	}
	var wantWritten, wantPanic uint64
	for i := range 300 {
		tr := txnN(i)
		_, ends := enc.EncodeTransaction(nil, nil, tr)
		if i%7 == 3 {
			wantPanic += uint64(len(ends))
		} else {
			wantWritten += uint64(len(ends))
		}
		l.Submit(tr)
	}
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	st := checkBooks(t, l, w)
	if st.DroppedPanic != wantPanic || st.Written != wantWritten {
		t.Fatalf("dropped_panic %d written %d, want %d and %d (%+v)", st.DroppedPanic, st.Written, wantPanic, wantWritten, st)
	}
	if st.Dropped() != st.DroppedPanic {
		t.Fatalf("other drops: %+v", st)
	}
	out := logs.String()
	for _, want := range []string{"where=tap.encode", "injected encoder fault", "panic_test.go", "dropped_panic="} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}
