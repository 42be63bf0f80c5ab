package faultinject

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestPanicLogRateLimited(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var p PanicLog
	for i := 0; i < 100; i++ {
		func() {
			defer func() {
				if v := recover(); v != nil {
					p.Report(log, "test.loop", v)
				}
			}()
			panic("boom")
		}()
	}
	out := buf.String()
	if n := strings.Count(out, "recovered panic"); n != 1 {
		t.Fatalf("want 1 report within %v, got %d:\n%s", ReportInterval, n, out)
	}
	for _, want := range []string{"where=test.loop", "panic=boom", "panic_test.go"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if got := p.suppressed.Load(); got != 99 {
		t.Errorf("suppressed = %d, want 99", got)
	}
}

func TestPanicLogNilLogger(t *testing.T) {
	var p PanicLog
	p.Report(nil, "x", "y") // must not panic itself
}
