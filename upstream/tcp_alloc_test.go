package upstream

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
)

// tcpSilentUpstream accepts connections and reads them, never answering.
func tcpSilentUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	return tcpTestUpstream(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
}

// outcomeSink remembers the outcome of the last transaction (no allocation).
type outcomeSink struct{ last chan txn.Outcome }

func (s outcomeSink) Submit(t *txn.Transaction) {
	select {
	case <-s.last:
	default:
	}
	s.last <- t.Outcome
}

// TestTCPServfailAllocs: the SERVFAILs tapproxy builds itself over TCP (a
// query that timed out with ServfailOnTimeout; every upstream down with
// the all-down action servfail) allocate nothing per query in steady state,
// as on UDP. Before, each built its reply in a fresh buffer, and the
// all-down path also its record: 1 and 2 allocations per query during an
// outage.
func TestTCPServfailAllocs(t *testing.T) {
	closed := func() netip.AddrPort {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a := ln.Addr().(*net.TCPAddr).AddrPort()
		ln.Close()
		return a
	}
	for _, tc := range []struct {
		name    string
		up      netip.AddrPort
		health  HealthConfig
		outcome txn.Outcome
	}{
		{"timeout servfail", tcpSilentUpstream(t), HealthConfig{}, txn.TimedOutServfail},
		{"all down servfail", closed(), HealthConfig{FailThreshold: 1, ProbeInterval: time.Hour, AllDown: AllDownServfail}, txn.ServfailAllDown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pool, err := NewPool(SpecsFrom([]netip.AddrPort{tc.up}), FirstAvailable, tc.health, nil)
			if err != nil {
				t.Fatal(err)
			}
			sink := outcomeSink{last: make(chan txn.Outcome, 1)}
			f, err := NewTCPForwarder(TCPConfig{Pool: pool, Timeout: 20 * time.Millisecond, ServfailOnTimeout: true,
				MaxInflight: 8, Sink: sink})
			if err != nil {
				t.Fatal(err)
			}
			f.Start()
			srv := listener.NewTCPServer(listener.TCPConfig{}, f)
			addr, err := srv.Listen(ctx, netip.MustParseAddrPort("127.0.0.1:0"))
			if err != nil {
				t.Fatal(err)
			}
			srv.Start(ctx)
			defer func() { srv.Close(); f.Close() }()

			c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(addr))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // against a hang only
			m := new(dns.Msg)
			m.SetQuestion("servfail.example.", dns.TypeA)
			m.Id = 0x5151
			q := pack(t, m)
			frame := append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)
			if tc.health.AllDown == AllDownServfail {
				// The first query finds the upstream refusing: send
				// failed, no answer, the upstream is marked down.
				if _, err := c.Write(frame); err != nil {
					t.Fatal(err)
				}
				if o := <-sink.last; o != txn.SendFailed {
					t.Fatalf("first query: outcome %v, want send_failed", o)
				}
			}
			in := make([]byte, 2+len(q))
			var rtErr error
			badOutcome := tc.outcome
			roundTrip := func() {
				if _, err := c.Write(frame); err != nil {
					rtErr = err
					return
				}
				if _, err := io.ReadFull(c, in[:2]); err != nil {
					rtErr = err
					return
				}
				n := int(binary.BigEndian.Uint16(in))
				if n > len(in) {
					rtErr = io.ErrShortBuffer
					return
				}
				if _, err := io.ReadFull(c, in[:n]); err != nil {
					rtErr = err
					return
				}
				if h, _ := dnswire.ParseHeader(in[:n]); !h.QR() || h.Rcode() != dnswire.RcodeServFail || h.ID != 0x5151 || n != len(q) {
					rtErr = io.ErrUnexpectedEOF
				}
				if o := <-sink.last; o != tc.outcome {
					badOutcome = o
				}
			}
			for range 20 {
				roundTrip()
			}
			allocs := testing.AllocsPerRun(50, roundTrip)
			if rtErr != nil {
				t.Fatalf("round trip: %v (want a SERVFAIL with the question, ID 0x5151)", rtErr)
			}
			if badOutcome != tc.outcome {
				t.Fatalf("outcome %v, want %v", badOutcome, tc.outcome)
			}
			t.Logf("%.2f allocations per SERVFAIL", allocs)
			if allocs != 0 {
				t.Fatalf("%.2f allocations per SERVFAIL, want 0", allocs)
			}
		})
	}
}
