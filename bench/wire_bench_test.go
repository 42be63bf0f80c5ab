package bench_test

import (
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/internal/dnswire"
)

// wireQueries are the shapes of query the per-packet path sees, packed by
// miekg/dns (not by the code under test).
func wireQueries(tb testing.TB) []struct {
	name string
	msg  []byte
} {
	tb.Helper()
	pack := func(name string, qtype uint16, edns bool) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if edns {
			m.SetEdns0(1232, true)
		}
		b, err := m.Pack()
		if err != nil {
			tb.Fatalf("packing %s: %v", name, err)
		}
		return b
	}
	long := strings.Repeat(strings.Repeat("x", 62)+".", 3) + "bench.test."
	// No case with a compression pointer: the question is the first name
	// in a message, so a pointer there can only be invalid (it has nothing
	// earlier to point at); dnswire's own tests cover that error path.
	return []struct {
		name string
		msg  []byte
	}{
		{"short", pack("www.bench.test.", dns.TypeA, false)},
		{"EDNS", pack("host-1234.bench.test.", dns.TypeAAAA, true)},
		{"mixed case", pack("WwW.ExAmPlE.BeNcH.TeSt.", dns.TypeTXT, false)},
		{"long 250", pack(long, dns.TypeA, false)},
		{"root", pack(".", dns.TypeNS, false)},
	}
}

// BenchmarkParseQuestion measures dnswire.ParseQuestion, the parse every
// query and every response pays on the per-packet path. Run with -benchmem
// or read allocs/op: it must be 0.
func BenchmarkParseQuestion(b *testing.B) {
	for _, qc := range wireQueries(b) {
		b.Run(qc.name, func(b *testing.B) {
			var q dnswire.Question
			if err := dnswire.ParseQuestion(qc.msg, &q); err != nil {
				b.Fatalf("ParseQuestion: %v", err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(qc.msg)))
			for b.Loop() {
				_ = dnswire.ParseQuestion(qc.msg, &q)
			}
		})
	}
}

// BenchmarkParseQuestionEqual is the pairing step: parse the response's
// question and compare it with the stored query's (RFC 5452 §9.1).
func BenchmarkParseQuestionEqual(b *testing.B) {
	for _, qc := range wireQueries(b) {
		b.Run(qc.name, func(b *testing.B) {
			var stored, got dnswire.Question
			if err := dnswire.ParseQuestion(qc.msg, &stored); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if dnswire.ParseQuestion(qc.msg, &got) != nil || !got.Equal(&stored) {
					b.Fatal("question does not match itself")
				}
			}
		})
	}
}

// BenchmarkParseHeader is the first thing done to every datagram.
func BenchmarkParseHeader(b *testing.B) {
	msg := wireQueries(b)[0].msg
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := dnswire.ParseHeader(msg); !ok {
			b.Fatal("short")
		}
	}
}

// TestParseQuestionAllocs keeps the benchmark's claim honest in plain
// `go test` runs.
func TestParseQuestionAllocs(t *testing.T) {
	qs := wireQueries(t)
	var q dnswire.Question
	allocs := testing.AllocsPerRun(1000, func() {
		for _, qc := range qs {
			_ = dnswire.ParseQuestion(qc.msg, &q)
		}
	})
	if allocs != 0 {
		t.Fatalf("ParseQuestion allocates %.1f times per run, want 0", allocs)
	}
}
