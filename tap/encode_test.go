package tap

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	dnstap "github.com/dnstap/golang-dnstap"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/txn"
)

// Fixed times (Unix ns) used by the table cases.
const (
	tQueryKernel    = 1_700_000_000_123_456_789
	tQueryRead      = tQueryKernel + 2_000
	tUpstreamSent   = tQueryKernel + 10_000
	tResponseKernel = tQueryKernel + 5_000_000
	tResponseRead   = tResponseKernel + 1_000
	tReplySent      = tResponseKernel + 20_000
)

// dnsMsg returns a DNS-looking message with the given ID and total length.
func dnsMsg(id uint16, n int, fill byte) []byte {
	m := bytes.Repeat([]byte{fill}, n)
	if n >= 2 {
		m[0], m[1] = byte(id>>8), byte(id)
	}
	return m
}

func answeredUDP4() *txn.Transaction {
	return &txn.Transaction{
		Seq:            42,
		Transport:      txn.UDP,
		Outcome:        txn.Answered,
		Client:         netip.MustParseAddrPort("192.0.2.10:40000"),
		Local:          netip.MustParseAddrPort("127.0.0.1:53"),
		Upstream:       netip.MustParseAddrPort("127.0.0.2:53"),
		UpstreamLocal:  netip.MustParseAddrPort("127.0.0.1:33333"),
		UpstreamID:     0xbeef,
		Query:          dnsMsg(0x1234, 40, 'q'),
		Response:       dnsMsg(0x1234, 120, 'r'),
		QueryKernel:    tQueryKernel,
		QueryRead:      tQueryRead,
		UpstreamSent:   tUpstreamSent,
		ResponseKernel: tResponseKernel,
		ResponseRead:   tResponseRead,
		ReplySent:      tReplySent,
	}
}

func answeredTCP6() *txn.Transaction {
	t := answeredUDP4()
	t.Seq = 7
	t.Transport = txn.TCP
	t.Flags = txn.Truncated
	t.Client = netip.MustParseAddrPort("[2001:db8::10]:50000")
	t.Local = netip.MustParseAddrPort("[::1]:53")
	t.Upstream = netip.MustParseAddrPort("[2001:db8::53]:53")
	t.UpstreamLocal = netip.MustParseAddrPort("[2001:db8::1]:44444")
	return t
}

// pb helpers for building expected golang-dnstap messages.
func u32(v uint32) *uint32 { return &v }
func u64(v uint64) *uint64 { return &v }

func secs(ns int64) (*uint64, *uint32) {
	if ns <= 0 {
		return nil, nil
	}
	return u64(uint64(ns / 1e9)), u32(uint32(ns % 1e9))
}

func annotation(t *txn.Transaction) []byte {
	a := annotate.FromTransaction(t)
	return a.Append(nil)
}

// decodeFrames decodes every frame with golang-dnstap's generated code.
func decodeFrames(tb testing.TB, buf []byte, ends []int) []*dnstap.Dnstap {
	tb.Helper()
	var out []*dnstap.Dnstap
	start := 0
	for i, end := range ends {
		if end < start || end > len(buf) {
			tb.Fatalf("frame %d: bad end %d (start %d, len %d)", i, end, start, len(buf))
		}
		d := &dnstap.Dnstap{}
		if err := proto.Unmarshal(buf[start:end], d); err != nil {
			tb.Fatalf("frame %d: golang-dnstap cannot decode: %v", i, err)
		}
		out = append(out, d)
		start = end
	}
	if start != len(buf) {
		tb.Fatalf("%d bytes after the last frame", len(buf)-start)
	}
	return out
}

// wantRecords is an independent model of the record rules in doc.go, built
// with golang-dnstap's types.
func wantRecords(t *txn.Transaction, types TypeSet, identity, version []byte) []*dnstap.Dnstap {
	extra := annotation(t)
	proto_ := dnstap.SocketProtocol_UDP
	if t.Transport == txn.TCP {
		proto_ = dnstap.SocketProtocol_TCP
	}
	qt := t.QueryKernel
	if qt == 0 {
		qt = t.QueryRead
	}
	patch := func(m []byte) []byte {
		if len(m) == 0 {
			return nil
		}
		c := append([]byte{}, m...)
		if len(c) >= 2 {
			c[0], c[1] = byte(t.UpstreamID>>8), byte(t.UpstreamID)
		}
		return c
	}
	nonEmpty := func(m []byte) []byte {
		if len(m) == 0 {
			return nil
		}
		return m
	}
	mk := func(typ dnstap.Message_Type, q, r netip.AddrPort, qtime, rtime int64, qmsg, rmsg []byte) *dnstap.Dnstap {
		m := &dnstap.Message{Type: typ.Enum(), SocketProtocol: proto_.Enum()}
		qa, ra := q.Addr().Unmap(), r.Addr().Unmap()
		if qa.IsValid() || ra.IsValid() {
			v4 := (!qa.IsValid() || qa.Is4()) && (!ra.IsValid() || ra.Is4())
			fam := dnstap.SocketFamily_INET6
			if v4 {
				fam = dnstap.SocketFamily_INET
			}
			m.SocketFamily = fam.Enum()
			raw := func(a netip.Addr) []byte {
				if v4 {
					b := a.As4()
					return b[:]
				}
				b := a.As16()
				return b[:]
			}
			if qa.IsValid() {
				m.QueryAddress, m.QueryPort = raw(qa), u32(uint32(q.Port()))
			}
			if ra.IsValid() {
				m.ResponseAddress, m.ResponsePort = raw(ra), u32(uint32(r.Port()))
			}
		}
		m.QueryTimeSec, m.QueryTimeNsec = secs(qtime)
		m.ResponseTimeSec, m.ResponseTimeNsec = secs(rtime)
		m.QueryMessage, m.ResponseMessage = qmsg, rmsg
		return &dnstap.Dnstap{Identity: identity, Version: version, Extra: extra, Type: dnstap.Dnstap_MESSAGE.Enum(), Message: m}
	}
	var out []*dnstap.Dnstap
	if types&TypeClientQuery != 0 {
		out = append(out, mk(dnstap.Message_CLIENT_QUERY, t.Client, t.Local, qt, 0, nonEmpty(t.Query), nil))
	}
	if types&TypeForwarderQuery != 0 && t.UpstreamSent != 0 {
		out = append(out, mk(dnstap.Message_FORWARDER_QUERY, t.UpstreamLocal, t.Upstream, t.UpstreamSent, 0, patch(t.Query), nil))
	}
	if types&TypeForwarderResponse != 0 && t.UpstreamSent != 0 && t.ResponseKernel != 0 && t.Response != nil {
		out = append(out, mk(dnstap.Message_FORWARDER_RESPONSE, t.UpstreamLocal, t.Upstream, t.UpstreamSent, t.ResponseKernel, nil, patch(t.Response)))
	}
	if types&TypeClientResponse != 0 && t.Response != nil {
		out = append(out, mk(dnstap.Message_CLIENT_RESPONSE, t.Client, t.Local, qt, t.ReplySent, nil, nonEmpty(t.Response)))
	}
	return out
}

func clone(t *txn.Transaction) *txn.Transaction {
	c := *t
	c.Query = append([]byte(nil), t.Query...)
	if t.Response != nil {
		c.Response = append([]byte{}, t.Response...)
	}
	return &c
}

// checkRoundTrip encodes t, decodes it with golang-dnstap and compares every
// field with the model; it returns the decoded records.
func checkRoundTrip(tb testing.TB, opts EncoderOptions, t *txn.Transaction) []*dnstap.Dnstap {
	tb.Helper()
	e := NewEncoder(opts)
	orig := clone(t)
	prefix := []byte("prefix")
	buf, ends := e.EncodeTransaction(append([]byte{}, prefix...), nil, t)
	if !bytes.Equal(buf[:len(prefix)], prefix) {
		tb.Fatalf("EncodeTransaction overwrote the existing bytes of buf")
	}
	if !bytes.Equal(t.Query, orig.Query) || !bytes.Equal(t.Response, orig.Response) {
		tb.Fatalf("EncodeTransaction modified the transaction's messages")
	}
	if len(ends) != e.Records(t) {
		tb.Fatalf("Records = %d, EncodeTransaction wrote %d", e.Records(t), len(ends))
	}
	got := decodeFrames(tb, buf[len(prefix):], shift(ends, -len(prefix)))
	want := wantRecords(t, e.Types(), opts.Identity, opts.Version)
	if len(got) != len(want) {
		tb.Fatalf("got %d records, want %d", len(got), len(want))
	}
	for i := range got {
		if !proto.Equal(got[i], want[i]) {
			tb.Fatalf("record %d differs:\n got %v\nwant %v", i, got[i], want[i])
		}
	}
	return got
}

func shift(ends []int, d int) []int {
	out := make([]int, len(ends))
	for i, e := range ends {
		out[i] = e + d
	}
	return out
}

func types(ds []*dnstap.Dnstap) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.GetMessage().GetType().String())
	}
	return strings.Join(s, ",")
}

func TestEncodeRoundTrip(t *testing.T) {
	id, ver := []byte("tap1.example"), []byte("tapproxy test")
	big := dnsMsg(0x4242, 65535, 'B')
	tests := []struct {
		name  string
		types TypeSet
		t     func() *txn.Transaction
		want  string // record types in order
		flags string // the annotation's flags key ("" = none)
	}{
		{"udp4 client", TypesClient, answeredUDP4, "CLIENT_QUERY,CLIENT_RESPONSE", ""},
		{"udp4 default types", 0, answeredUDP4, "CLIENT_QUERY,CLIENT_RESPONSE", ""},
		{"udp4 all", TypesAll, answeredUDP4, "CLIENT_QUERY,FORWARDER_QUERY,FORWARDER_RESPONSE,CLIENT_RESPONSE", ""},
		{"tcp6 all truncated", TypesAll, answeredTCP6, "CLIENT_QUERY,FORWARDER_QUERY,FORWARDER_RESPONSE,CLIENT_RESPONSE", "truncated"},
		{"forwarder only", TypesForwarder, answeredUDP4, "FORWARDER_QUERY,FORWARDER_RESPONSE", ""},
		{"query types only", TypeClientQuery | TypeForwarderQuery, answeredTCP6, "CLIENT_QUERY,FORWARDER_QUERY", "truncated"},
		{"timed out", TypesAll, func() *txn.Transaction {
			t := answeredUDP4()
			t.Outcome, t.Response, t.ResponseKernel, t.ResponseRead, t.ReplySent = txn.TimedOut, nil, 0, 0, 0
			return t
		}, "CLIENT_QUERY,FORWARDER_QUERY", "timeout"},
		{"timed out client only", TypesClient, func() *txn.Transaction {
			t := answeredUDP4()
			t.Outcome, t.Response, t.ResponseKernel, t.ResponseRead, t.ReplySent = txn.TimedOut, nil, 0, 0, 0
			return t
		}, "CLIENT_QUERY", "timeout"},
		{"timed out servfail", TypesAll, func() *txn.Transaction {
			t := answeredTCP6()
			t.Flags = 0
			t.Outcome, t.ResponseKernel, t.ResponseRead = txn.TimedOutServfail, 0, 0
			t.Response = dnsMsg(0x1234, 40, 's')
			return t
		}, "CLIENT_QUERY,FORWARDER_QUERY,CLIENT_RESPONSE", "timeout,servfail"},
		{"refused", TypesAll, func() *txn.Transaction {
			t := answeredUDP4()
			t.Outcome = txn.Refused
			t.Upstream, t.UpstreamLocal, t.UpstreamID = netip.AddrPort{}, netip.AddrPort{}, 0
			t.UpstreamSent, t.ResponseKernel, t.ResponseRead = 0, 0, 0
			t.Response = dnsMsg(0x1234, 40, 'x')
			return t
		}, "CLIENT_QUERY,CLIENT_RESPONSE", "refused"},
		{"malformed send failed", TypesAll, func() *txn.Transaction {
			t := answeredUDP4()
			t.Outcome, t.Flags = txn.SendFailed, txn.Malformed
			t.UpstreamSent, t.ResponseKernel, t.ResponseRead, t.ReplySent, t.Response = 0, 0, 0, 0, nil
			return t
		}, "CLIENT_QUERY", "malformed"},
		{"no kernel stamp uses read time", TypesClient, func() *txn.Transaction {
			t := answeredUDP4()
			t.QueryKernel = 0
			return t
		}, "CLIENT_QUERY,CLIENT_RESPONSE", ""},
		{"v4-mapped addresses are INET", TypesAll, func() *txn.Transaction {
			t := answeredUDP4()
			t.Client = netip.MustParseAddrPort("[::ffff:192.0.2.10]:40000")
			t.Local = netip.MustParseAddrPort("[::ffff:127.0.0.1]:53")
			return t
		}, "CLIENT_QUERY,FORWARDER_QUERY,FORWARDER_RESPONSE,CLIENT_RESPONSE", ""},
		{"mixed families are INET6", TypesClient, func() *txn.Transaction {
			t := answeredUDP4()
			t.Local = netip.MustParseAddrPort("[::1]:53")
			return t
		}, "CLIENT_QUERY,CLIENT_RESPONSE", ""},
		{"unknown upstream local address", TypesAll, func() *txn.Transaction {
			t := answeredTCP6()
			t.UpstreamLocal = netip.AddrPort{}
			return t
		}, "CLIENT_QUERY,FORWARDER_QUERY,FORWARDER_RESPONSE,CLIENT_RESPONSE", "truncated"},
		{"64 KiB tcp messages", TypesAll, func() *txn.Transaction {
			t := answeredTCP6()
			t.Query, t.Response = dnsMsg(0x1234, 65535, 'Q'), big
			return t
		}, "CLIENT_QUERY,FORWARDER_QUERY,FORWARDER_RESPONSE,CLIENT_RESPONSE", "truncated"},
		{"short messages", TypesAll, func() *txn.Transaction {
			t := answeredUDP4()
			t.Query, t.Response = []byte{0x12}, []byte{}
			return t
		}, "CLIENT_QUERY,FORWARDER_QUERY,FORWARDER_RESPONSE,CLIENT_RESPONSE", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := tc.t()
			got := checkRoundTrip(t, EncoderOptions{Identity: id, Version: ver, Types: tc.types}, tr)
			if s := types(got); s != tc.want {
				t.Fatalf("record types %s, want %s", s, tc.want)
			}
			for i, d := range got {
				a, err := annotate.Parse(d.Extra)
				if err != nil {
					t.Fatalf("record %d: extra %q: %v", i, d.Extra, err)
				}
				if a.Seq != tr.Seq {
					t.Fatalf("record %d: seq %d, want %d", i, a.Seq, tr.Seq)
				}
				var fl []string
				for _, f := range []struct {
					on   bool
					name string
				}{{a.Malformed, annotate.FlagMalformed}, {a.Timeout, annotate.FlagTimeout}, {a.Servfail, annotate.FlagServfail}, {a.Refused, annotate.FlagRefused}, {a.Truncated, annotate.FlagTruncated}} {
					if f.on {
						fl = append(fl, f.name)
					}
				}
				if s := strings.Join(fl, ","); s != tc.flags {
					t.Fatalf("record %d: flags %q, want %q", i, s, tc.flags)
				}
			}
		})
	}
}

// TestEncodeExplicit spells out one transaction's records field by field,
// independently of the model used by the other tests.
func TestEncodeExplicit(t *testing.T) {
	tr := answeredTCP6()
	e := NewEncoder(EncoderOptions{Identity: []byte("id"), Types: TypesAll})
	buf, ends := e.EncodeTransaction(nil, nil, tr)
	got := decodeFrames(t, buf, ends)
	if len(got) != 4 {
		t.Fatalf("%d records, want 4", len(got))
	}
	client := netip.MustParseAddr("2001:db8::10").As16()
	local := netip.MustParseAddr("::1").As16()
	upLocal := netip.MustParseAddr("2001:db8::1").As16()
	up := netip.MustParseAddr("2001:db8::53").As16()
	for i, d := range got {
		if string(d.Identity) != "id" || d.Version != nil || d.GetType() != dnstap.Dnstap_MESSAGE {
			t.Fatalf("record %d: identity %q version %q type %v", i, d.Identity, d.Version, d.GetType())
		}
		m := d.Message
		if m.GetSocketFamily() != dnstap.SocketFamily_INET6 || m.GetSocketProtocol() != dnstap.SocketProtocol_TCP {
			t.Fatalf("record %d: family %v protocol %v", i, m.GetSocketFamily(), m.GetSocketProtocol())
		}
		if m.QueryZone != nil {
			t.Fatalf("record %d: query_zone set", i)
		}
	}
	cq, fq, fr, cr := got[0].Message, got[1].Message, got[2].Message, got[3].Message
	if !bytes.Equal(cq.QueryAddress, client[:]) || cq.GetQueryPort() != 50000 || !bytes.Equal(cq.ResponseAddress, local[:]) || cq.GetResponsePort() != 53 {
		t.Fatalf("CLIENT_QUERY addresses %x:%d → %x:%d", cq.QueryAddress, cq.GetQueryPort(), cq.ResponseAddress, cq.GetResponsePort())
	}
	if cq.GetQueryTimeSec() != 1_700_000_000 || cq.GetQueryTimeNsec() != 123_456_789 || cq.ResponseTimeSec != nil {
		t.Fatalf("CLIENT_QUERY time %d.%d", cq.GetQueryTimeSec(), cq.GetQueryTimeNsec())
	}
	if !bytes.Equal(cq.QueryMessage, tr.Query) || cq.ResponseMessage != nil {
		t.Fatal("CLIENT_QUERY message not verbatim")
	}
	if !bytes.Equal(fq.QueryAddress, upLocal[:]) || fq.GetQueryPort() != 44444 || !bytes.Equal(fq.ResponseAddress, up[:]) || fq.GetResponsePort() != 53 {
		t.Fatalf("FORWARDER_QUERY addresses %x:%d → %x:%d", fq.QueryAddress, fq.GetQueryPort(), fq.ResponseAddress, fq.GetResponsePort())
	}
	if fq.QueryMessage[0] != 0xbe || fq.QueryMessage[1] != 0xef || !bytes.Equal(fq.QueryMessage[2:], tr.Query[2:]) {
		t.Fatalf("FORWARDER_QUERY does not carry the upstream ID: % x", fq.QueryMessage[:4])
	}
	if fq.GetQueryTimeNsec() != 123_466_789 {
		t.Fatalf("FORWARDER_QUERY time nsec %d", fq.GetQueryTimeNsec())
	}
	if fr.ResponseMessage[0] != 0xbe || fr.ResponseMessage[1] != 0xef || !bytes.Equal(fr.ResponseMessage[2:], tr.Response[2:]) || fr.QueryMessage != nil {
		t.Fatalf("FORWARDER_RESPONSE does not carry the upstream ID")
	}
	if fr.GetQueryTimeNsec() != 123_466_789 || fr.GetResponseTimeSec() != 1_700_000_000 || fr.GetResponseTimeNsec() != 128_456_789 {
		t.Fatalf("FORWARDER_RESPONSE times %d / %d.%d", fr.GetQueryTimeNsec(), fr.GetResponseTimeSec(), fr.GetResponseTimeNsec())
	}
	if !bytes.Equal(cr.ResponseMessage, tr.Response) || cr.ResponseMessage[0] != 0x12 || cr.GetResponseTimeNsec() != 128_476_789 || cr.GetQueryTimeNsec() != 123_456_789 {
		t.Fatalf("CLIENT_RESPONSE message or times wrong")
	}
	if tr.Query[0] != 0x12 || tr.Response[0] != 0x12 {
		t.Fatal("transaction bytes were modified")
	}
}

// TestEncodeNewFields covers what golang-dnstap v0.4.0 cannot name: the DoQ
// protocol and http_protocol (field 16, a two-byte tag). The Message is
// checked with protowire and must still decode with golang-dnstap.
func TestEncodeNewFields(t *testing.T) {
	r := record{typ: ClientQuery, proto: ProtoDOQ, http: HTTP3, qid: -1, rid: -1, qmsg: []byte("abc"), qtime: 5e9 + 7}
	r.setAddrs(netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2"))
	body := r.append(nil)
	if len(body) != r.size() {
		t.Fatalf("size %d, appended %d", r.size(), len(body))
	}
	seen := map[protowire.Number]uint64{}
	for b := body; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		var v uint64
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var v32 uint32
			v32, n = protowire.ConsumeFixed32(b)
			v = uint64(v32)
		case protowire.BytesType:
			_, n = protowire.ConsumeBytes(b)
		default:
			t.Fatalf("field %d: unexpected wire type %d", num, typ)
		}
		if n < 0 {
			t.Fatalf("field %d: %v", num, protowire.ParseError(n))
		}
		b = b[n:]
		seen[num] = v
	}
	if seen[fieldMsgHTTPProtocol] != uint64(HTTP3) || seen[fieldMsgSocketProtocol] != uint64(ProtoDOQ) {
		t.Fatalf("http_protocol %d socket_protocol %d", seen[fieldMsgHTTPProtocol], seen[fieldMsgSocketProtocol])
	}
	if _, ok := seen[fieldMsgPolicy]; ok {
		t.Fatal("policy written")
	}
	if _, ok := seen[fieldMsgQueryZone]; ok {
		t.Fatal("query_zone written")
	}
	d := &dnstap.Dnstap{}
	if err := proto.Unmarshal(appendDnstapTail(nil, &r), d); err != nil {
		t.Fatalf("golang-dnstap cannot decode a record with the new fields: %v", err)
	}
	if !bytes.Equal(d.Message.QueryMessage, []byte("abc")) || d.Message.GetQueryTimeSec() != 5 || d.Message.GetQueryTimeNsec() != 7 {
		t.Fatalf("decoded %v", d.Message)
	}
}

func TestEncodeLongAnnotation(t *testing.T) {
	// An IPv6 upstream with a zone and every duration makes the extra field
	// longer than 127 bytes, so its length prefix takes two bytes.
	tr := answeredTCP6()
	tr.Seq = ^uint64(0)
	tr.Flags = txn.Malformed | txn.Truncated | txn.ResponseMalformed
	tr.Upstream = netip.MustParseAddrPort("[fe80::1234:5678:9abc:def0%eth0-long-name]:65535")
	if n := len(annotation(tr)); n < 128 {
		t.Fatalf("annotation is only %d bytes; the test needs > 127", n)
	}
	checkRoundTrip(t, EncoderOptions{Types: TypesAll}, tr)
}

func TestEncodeAllocs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		types TypeSet
		tr    *txn.Transaction
	}{
		{"udp4 client", TypesClient, answeredUDP4()},
		{"tcp6 all", TypesAll, answeredTCP6()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := NewEncoder(EncoderOptions{Identity: []byte("id"), Version: []byte("v"), Types: tc.types})
			buf, ends := make([]byte, 0, 64<<10), make([]int, 0, 8)
			allocs := testing.AllocsPerRun(1000, func() {
				buf, ends = e.EncodeTransaction(buf[:0], ends[:0], tc.tr)
			})
			if allocs != 0 {
				t.Fatalf("EncodeTransaction allocates %.1f times per call", allocs)
			}
			if len(ends) != e.Records(tc.tr) {
				t.Fatalf("wrote %d records", len(ends))
			}
		})
	}
}

func TestParseTypeSet(t *testing.T) {
	tests := []struct {
		in   string
		want TypeSet
		err  bool
	}{
		{"all", TypesAll, false},
		{"client", TypesClient, false},
		{"forwarder", TypesForwarder, false},
		{"client_query,client_response,forwarder_query,forwarder_response", TypesAll, false},
		{" Client_Query , forwarder_response", TypeClientQuery | TypeForwarderResponse, false},
		{"client,forwarder_query", TypesClient | TypeForwarderQuery, false},
		{"", 0, true},
		{"client,", 0, true},
		{"auth_query", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTypeSet(tc.in)
			if tc.err {
				if !errors.Is(err, ErrBadTypeSet) {
					t.Fatalf("ParseTypeSet(%q) = %v, %v; want ErrBadTypeSet", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseTypeSet(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
			back, err := ParseTypeSet(got.String())
			if err != nil || back != got {
				t.Fatalf("String %q does not parse back: %v, %v", got.String(), back, err)
			}
		})
	}
	var ts TypeSet
	if err := ts.Set("client_response"); err != nil || ts != TypeClientResponse {
		t.Fatalf("Set: %v, %v", ts, err)
	}
	if err := ts.Set("bogus"); err == nil || ts != TypeClientResponse {
		t.Fatalf("Set(bogus) = %v and changed the value to %v", err, ts)
	}
	if s := TypesAll.String(); s != "client_query,forwarder_query,forwarder_response,client_response" {
		t.Fatalf("TypesAll.String() = %q", s)
	}
}

func BenchmarkEncodeTransaction(b *testing.B) {
	for _, bc := range []struct {
		name  string
		types TypeSet
		tr    *txn.Transaction
	}{
		{"udp4-client", TypesClient, answeredUDP4()},
		{"tcp6-all", TypesAll, answeredTCP6()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := NewEncoder(EncoderOptions{Identity: []byte("tap1"), Version: []byte("tapproxy"), Types: bc.types})
			buf, ends := make([]byte, 0, 64<<10), make([]int, 0, 8)
			b.ReportAllocs()
			for b.Loop() {
				buf, ends = e.EncodeTransaction(buf[:0], ends[:0], bc.tr)
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}
