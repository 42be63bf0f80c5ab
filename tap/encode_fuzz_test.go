package tap

import (
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tapproxy/tapproxy/internal/txn"
)

// FuzzEncode encodes transactions with arbitrary messages, addresses, times
// and flags; golang-dnstap must decode every frame back to exactly what the
// model in encode_test.go expects, and Records must match the frame count.
func FuzzEncode(f *testing.F) {
	// Seeds: an answered IPv4 UDP transaction with all types; an IPv6 TCP
	// timeout; empty and one-byte messages with the upstream leg unknown; a
	// transaction with negative (nonsense) times.
	f.Add([]byte("\x12\x34query"), []byte("\x12\x34response"), true, uint64(42), uint8(0xf), uint8(0), uint8(0),
		[]byte{192, 0, 2, 1}, []byte{127, 0, 0, 1}, uint16(40000), uint16(0xbeef),
		int64(tQueryKernel), int64(tQueryRead), int64(tUpstreamSent), int64(tResponseKernel), int64(tReplySent))
	f.Add([]byte("\xab\xcdq6"), []byte(nil), false, uint64(1)<<63, uint8(0xf), uint8(1), uint8(1),
		netip.MustParseAddr("2001:db8::1").AsSlice(), netip.MustParseAddr("::1").AsSlice(), uint16(53), uint16(1),
		int64(0), int64(tQueryRead), int64(tUpstreamSent), int64(0), int64(0))
	f.Add([]byte{}, []byte{7}, true, uint64(0), uint8(0x9), uint8(0), uint8(3),
		[]byte{}, []byte{1, 2, 3}, uint16(0), uint16(0),
		int64(1), int64(0), int64(0), int64(0), int64(-5))
	f.Add([]byte("x"), []byte("y"), true, uint64(7), uint8(0x6), uint8(1), uint8(2),
		netip.MustParseAddr("::ffff:10.0.0.1").AsSlice(), []byte{10, 0, 0, 2}, uint16(65535), uint16(65535),
		int64(-1), int64(-2), int64(-3), int64(-4), int64(-5))
	f.Fuzz(func(t *testing.T, query, response []byte, hasResp bool, seq uint64, typeBits, transport, outcome uint8,
		a1, a2 []byte, port, upID uint16, qk, qr, us, rk, rs int64) {
		addr := func(b []byte, p uint16) netip.AddrPort {
			a, ok := netip.AddrFromSlice(b)
			if !ok {
				return netip.AddrPort{}
			}
			return netip.AddrPortFrom(a, p)
		}
		tr := &txn.Transaction{
			Seq:            seq,
			Transport:      txn.Transport(transport % 3), // 2 is unknown: logged as UDP
			Outcome:        txn.Outcome(outcome % 8),
			Flags:          txn.Flags(outcome >> 3),
			Client:         addr(a1, port),
			Local:          addr(a2, 53),
			Upstream:       addr(a2, port^0xffff),
			UpstreamLocal:  addr(a1, upID),
			UpstreamID:     upID,
			Query:          query,
			QueryKernel:    qk,
			QueryRead:      qr,
			UpstreamSent:   us,
			ResponseKernel: rk,
			ReplySent:      rs,
		}
		if hasResp {
			tr.Response = response
			if tr.Response == nil {
				tr.Response = []byte{}
			}
		}
		opts := EncoderOptions{Types: TypeSet(typeBits) & TypesAll}
		if seq&1 != 0 {
			opts.Identity, opts.Version = query, response
		}
		e := NewEncoder(opts)
		orig := clone(tr)
		buf, ends := e.EncodeTransaction(nil, nil, tr)
		if len(ends) != e.Records(tr) {
			t.Fatalf("Records = %d, EncodeTransaction wrote %d", e.Records(tr), len(ends))
		}
		if string(tr.Query) != string(orig.Query) || string(tr.Response) != string(orig.Response) {
			t.Fatal("EncodeTransaction modified the transaction's messages")
		}
		got := decodeFrames(t, buf, ends)
		want := wantRecords(tr, e.Types(), opts.Identity, opts.Version)
		if len(got) != len(want) {
			t.Fatalf("got %d records, want %d", len(got), len(want))
		}
		for i := range got {
			if !proto.Equal(got[i], want[i]) {
				t.Fatalf("record %d differs:\n got %v\nwant %v", i, got[i], want[i])
			}
		}
	})
}
