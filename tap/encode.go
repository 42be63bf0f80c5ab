package tap

import (
	"errors"
	"math/bits"
	"net/netip"
	"strings"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/dnswire"
	"github.com/tapproxy/tapproxy/internal/txn"
)

// Field numbers and enum values of dnstap.proto (github.com/dnstap/dnstap.pb).
// golang-dnstap v0.4.0 predates Message.policy, Message.http_protocol and the
// DNSCrypt/DoQ protocols; the numbers below follow the current .proto.
const (
	fieldDnstapIdentity = 1
	fieldDnstapVersion  = 2
	fieldDnstapExtra    = 3
	fieldDnstapMessage  = 14
	fieldDnstapType     = 15

	fieldMsgType             = 1
	fieldMsgSocketFamily     = 2
	fieldMsgSocketProtocol   = 3
	fieldMsgQueryAddress     = 4
	fieldMsgResponseAddress  = 5
	fieldMsgQueryPort        = 6
	fieldMsgResponsePort     = 7
	fieldMsgQueryTimeSec     = 8
	fieldMsgQueryTimeNsec    = 9
	fieldMsgQueryMessage     = 10
	fieldMsgQueryZone        = 11
	fieldMsgResponseTimeSec  = 12
	fieldMsgResponseTimeNsec = 13
	fieldMsgResponseMessage  = 14
	fieldMsgPolicy           = 15 // Policy message; tapproxy applies no policy and never writes it
	fieldMsgHTTPProtocol     = 16

	dnstapTypeMessage = 1 // Dnstap.Type MESSAGE
)

// Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
const (
	wireVarint  = 0
	wireBytes   = 2
	wireFixed32 = 5
)

// MessageType is dnstap's Message.Type.
type MessageType uint8

// Message.Type values written by tapproxy (the others exist in dnstap.proto
// but describe roles tapproxy never has).
const (
	ClientQuery       MessageType = 5
	ClientResponse    MessageType = 6
	ForwarderQuery    MessageType = 7
	ForwarderResponse MessageType = 8
)

// SocketFamily is dnstap's SocketFamily.
type SocketFamily uint8

// SocketFamily values.
const (
	FamilyINET  SocketFamily = 1 // IPv4 (RFC 791)
	FamilyINET6 SocketFamily = 2 // IPv6 (RFC 8200)
)

// SocketProtocol is dnstap's SocketProtocol.
type SocketProtocol uint8

// SocketProtocol values. tapproxy writes only UDP and TCP.
const (
	ProtoUDP         SocketProtocol = 1 // RFC 1035 §4.2.1
	ProtoTCP         SocketProtocol = 2 // RFC 1035 §4.2.2
	ProtoDOT         SocketProtocol = 3 // RFC 7858
	ProtoDOH         SocketProtocol = 4 // RFC 8484
	ProtoDNSCryptUDP SocketProtocol = 5
	ProtoDNSCryptTCP SocketProtocol = 6
	ProtoDOQ         SocketProtocol = 7 // RFC 9250
)

// HTTPProtocol is dnstap's HttpProtocol (only meaningful with ProtoDOH).
type HTTPProtocol uint8

// HTTPProtocol values.
const (
	HTTP1 HTTPProtocol = 1
	HTTP2 HTTPProtocol = 2
	HTTP3 HTTPProtocol = 3
)

// TypeSet selects which records are written for a transaction.
type TypeSet uint8

// The record kinds, in the order they are written for one transaction (the
// order in which they happened).
const (
	TypeClientQuery TypeSet = 1 << iota
	TypeForwarderQuery
	TypeForwarderResponse
	TypeClientResponse

	TypesClient    = TypeClientQuery | TypeClientResponse
	TypesForwarder = TypeForwarderQuery | TypeForwarderResponse
	TypesAll       = TypesClient | TypesForwarder

	// DefaultTypes is what a zero EncoderOptions.Types means: the client
	// leg only, like dnsdist and unbound's client options.
	DefaultTypes = TypesClient
)

var typeNames = [...]struct {
	name string
	set  TypeSet
}{
	{"client_query", TypeClientQuery},
	{"forwarder_query", TypeForwarderQuery},
	{"forwarder_response", TypeForwarderResponse},
	{"client_response", TypeClientResponse},
}

// ErrBadTypeSet is returned by ParseTypeSet for an unknown or empty name.
var ErrBadTypeSet = errors.New("tap: bad message type list (want comma-separated client_query, client_response, forwarder_query, forwarder_response, client, forwarder or all)")

// ParseTypeSet parses a comma-separated list of record kinds:
// client_query, client_response, forwarder_query, forwarder_response, or the
// groups client, forwarder, all. Case and spaces around names are ignored.
func ParseTypeSet(s string) (TypeSet, error) {
	var ts TypeSet
	for _, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		switch f {
		case "all":
			ts |= TypesAll
			continue
		case "client":
			ts |= TypesClient
			continue
		case "forwarder":
			ts |= TypesForwarder
			continue
		}
		found := false
		for _, n := range typeNames {
			if n.name == f {
				ts |= n.set
				found = true
			}
		}
		if !found {
			return 0, ErrBadTypeSet
		}
	}
	return ts, nil
}

// String returns the canonical comma-separated list ParseTypeSet reads.
func (s TypeSet) String() string {
	var b strings.Builder
	for _, n := range typeNames {
		if s&n.set == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n.name)
	}
	return b.String()
}

// Set implements flag.Value.
func (s *TypeSet) Set(v string) error {
	ts, err := ParseTypeSet(v)
	if err != nil {
		return err
	}
	*s = ts
	return nil
}

// EncoderOptions configure an Encoder.
type EncoderOptions struct {
	// Identity and Version go into every record's Dnstap.identity and
	// Dnstap.version (nil: field left out). They are copied.
	Identity []byte
	Version  []byte
	// Types selects the records written; zero means DefaultTypes.
	Types TypeSet
	// Zones, when set, fills query_zone (field 11) with the closest
	// enclosing zone learned from answers' SOA/NS owner names. It is
	// consulted and taught on the encoding goroutine, never on the DNS
	// path.
	Zones *annotate.ZoneCache
}

// Encoder turns transactions into serialized Dnstap messages. It holds only
// immutable configuration, so one Encoder may be used from any number of
// goroutines.
type Encoder struct {
	identity []byte
	version  []byte
	types    TypeSet
	zones    *annotate.ZoneCache
}

// NewEncoder returns an Encoder for opts.
func NewEncoder(opts EncoderOptions) *Encoder {
	e := &Encoder{types: opts.Types & TypesAll, zones: opts.Zones}
	if opts.Identity != nil {
		e.identity = append([]byte{}, opts.Identity...)
	}
	if opts.Version != nil {
		e.version = append([]byte{}, opts.Version...)
	}
	if e.types == 0 {
		e.types = DefaultTypes
	}
	return e
}

// Types returns the record kinds e writes.
func (e *Encoder) Types() TypeSet { return e.types }

// plan returns the records written for t. The rules (see doc.go):
//   - CLIENT_QUERY always;
//   - FORWARDER_QUERY when the query went upstream (UpstreamSent != 0);
//   - FORWARDER_RESPONSE when, in addition, an upstream answer was received
//     (ResponseKernel != 0 and Response != nil);
//   - CLIENT_RESPONSE when a response was sent to the client (Response != nil),
//     including tapproxy's own SERVFAIL and REFUSED.
func (e *Encoder) plan(t *txn.Transaction) TypeSet {
	p := TypeClientQuery
	if t.UpstreamSent != 0 {
		p |= TypeForwarderQuery
		if t.ResponseKernel != 0 && t.Response != nil {
			p |= TypeForwarderResponse
		}
	}
	if t.Response != nil {
		p |= TypeClientResponse
	}
	return p & e.types
}

// Records returns how many records EncodeTransaction writes for t.
func (e *Encoder) Records(t *txn.Transaction) int {
	return bits.OnesCount8(uint8(e.plan(t)))
}

// record is one dnstap Message before serialization.
type record struct {
	typ      MessageType
	family   SocketFamily
	proto    SocketProtocol
	http     HTTPProtocol // 0: absent
	qaddr    [16]byte
	raddr    [16]byte
	qaddrLen uint8 // 0 (absent), 4 or 16
	raddrLen uint8
	qport    uint16
	rport    uint16
	qtime    int64 // Unix ns; <= 0: absent
	rtime    int64
	qmsg     []byte
	rmsg     []byte
	// qid and rid, when >= 0, replace the first two bytes (the DNS ID,
	// RFC 1035 §4.1.1) of qmsg/rmsg as they are copied.
	qid int32
	rid int32
	// zone is query_zone in wire form (nil: absent).
	zone []byte
}

// setAddrs fills the addresses, ports and family of r from the initiator
// (query side) and responder. IPv4-mapped IPv6 addresses are written as
// IPv4 (INET) when both ends are IPv4; otherwise both are written as 16-byte
// INET6 addresses, so the two fields always agree with socket_family as
// dnstap.proto requires. An invalid (unknown) address leaves its address and
// port fields out.
func (r *record) setAddrs(q, s netip.AddrPort) {
	qa, sa := q.Addr().Unmap(), s.Addr().Unmap()
	v4 := (!qa.IsValid() || qa.Is4()) && (!sa.IsValid() || sa.Is4())
	if !qa.IsValid() && !sa.IsValid() {
		return
	}
	r.family = FamilyINET6
	if v4 {
		r.family = FamilyINET
	}
	if qa.IsValid() {
		r.qaddrLen = putAddr(&r.qaddr, qa, v4)
		r.qport = q.Port()
	}
	if sa.IsValid() {
		r.raddrLen = putAddr(&r.raddr, sa, v4)
		r.rport = s.Port()
	}
}

func putAddr(dst *[16]byte, a netip.Addr, v4 bool) uint8 {
	if v4 {
		b := a.As4()
		copy(dst[:], b[:])
		return 4
	}
	*dst = a.As16()
	return 16
}

func protoOf(t txn.Transport) SocketProtocol {
	if t == txn.TCP {
		return ProtoTCP
	}
	return ProtoUDP
}

// EncodeTransaction appends the dnstap payloads (one serialized Dnstap
// message per frame) for t to buf and appends each frame's end offset to
// ends. It allocates nothing when buf and ends have capacity. t and the
// slices it points to are only read.
func (e *Encoder) EncodeTransaction(buf []byte, ends []int, t *txn.Transaction) ([]byte, []int) {
	p := e.plan(t)
	if p == 0 {
		return buf, ends
	}
	ann := annotate.FromTransaction(t)
	// extraOff/extraLen locate the annotation bytes written into the first
	// record, which later records copy instead of formatting it again.
	extraOff, extraLen := -1, 0
	proto := protoOf(t.Transport)
	qtime := t.QueryKernel
	if qtime == 0 {
		qtime = t.QueryRead
	}
	upID := int32(t.UpstreamID)
	var zone []byte
	if e.zones != nil {
		if t.Response != nil {
			e.zones.Learn(t.Response)
		}
		var q dnswire.Question
		if dnswire.ParseQuestion(t.Query, &q) == nil {
			zone, _ = e.zones.Lookup(q.NameBytes())
		}
	}

	for _, n := range typeNames {
		if p&n.set == 0 {
			continue
		}
		r := record{proto: proto, qid: -1, rid: -1, zone: zone}
		switch n.set {
		case TypeClientQuery:
			r.typ = ClientQuery
			r.setAddrs(t.Client, t.Local)
			r.qtime = qtime
			r.qmsg = t.Query
		case TypeForwarderQuery:
			r.typ = ForwarderQuery
			r.setAddrs(t.UpstreamLocal, t.Upstream)
			r.qtime = t.UpstreamSent
			r.qmsg, r.qid = t.Query, upID
		case TypeForwarderResponse:
			r.typ = ForwarderResponse
			r.setAddrs(t.UpstreamLocal, t.Upstream)
			r.qtime = t.UpstreamSent
			r.rtime = t.ResponseKernel
			r.rmsg, r.rid = t.Response, upID
		case TypeClientResponse:
			r.typ = ClientResponse
			r.setAddrs(t.Client, t.Local)
			r.qtime = qtime
			r.rtime = t.ReplySent
			r.rmsg = t.Response
		}
		buf = e.appendDnstapHead(buf)
		if extraOff < 0 {
			buf, extraOff, extraLen = appendAnnotation(buf, &ann)
		} else {
			buf = appendTag(buf, fieldDnstapExtra, wireBytes)
			buf = appendVarint(buf, uint64(extraLen))
			buf = append(buf, buf[extraOff:extraOff+extraLen]...)
		}
		buf = appendDnstapTail(buf, &r)
		ends = append(ends, len(buf))
	}
	return buf, ends
}

// appendDnstapHead writes Dnstap.identity and Dnstap.version.
func (e *Encoder) appendDnstapHead(buf []byte) []byte {
	if e.identity != nil {
		buf = appendBytesField(buf, fieldDnstapIdentity, e.identity)
	}
	if e.version != nil {
		buf = appendBytesField(buf, fieldDnstapVersion, e.version)
	}
	return buf
}

// appendAnnotation writes Dnstap.extra with the annotation text and returns
// where the text lies in buf. The length prefix is written after the text,
// moving the text when it needs more than one byte.
func appendAnnotation(buf []byte, a *annotate.Annotation) ([]byte, int, int) {
	buf = appendTag(buf, fieldDnstapExtra, wireBytes)
	lenPos := len(buf)
	buf = append(buf, 0)
	start := len(buf)
	buf = a.Append(buf)
	n := len(buf) - start
	if k := sizeVarint(uint64(n)); k > 1 {
		for range k - 1 {
			buf = append(buf, 0)
		}
		copy(buf[start+k-1:], buf[start:start+n])
		start += k - 1
	}
	appendVarint(buf[lenPos:lenPos], uint64(n))
	return buf, start, n
}

// appendDnstapTail writes Dnstap.message (the Message r) and Dnstap.type.
func appendDnstapTail(buf []byte, r *record) []byte {
	buf = appendTag(buf, fieldDnstapMessage, wireBytes)
	buf = appendVarint(buf, uint64(r.size()))
	buf = r.append(buf)
	buf = appendTag(buf, fieldDnstapType, wireVarint)
	return appendVarint(buf, dnstapTypeMessage)
}

// size returns the serialized length of r; it must match append exactly.
func (r *record) size() int {
	n := 2 // type: tag + one-byte enum
	if r.family != 0 {
		n += 2
	}
	if r.proto != 0 {
		n += 2
	}
	if r.qaddrLen != 0 {
		n += 2 + int(r.qaddrLen) + 1 + sizeVarint(uint64(r.qport))
	}
	if r.raddrLen != 0 {
		n += 2 + int(r.raddrLen) + 1 + sizeVarint(uint64(r.rport))
	}
	if r.qtime > 0 {
		n += 1 + sizeVarint(uint64(r.qtime/1e9)) + 5
	}
	if len(r.qmsg) > 0 {
		n += 1 + sizeVarint(uint64(len(r.qmsg))) + len(r.qmsg)
	}
	if len(r.zone) > 0 {
		n += 1 + sizeVarint(uint64(len(r.zone))) + len(r.zone)
	}
	if r.rtime > 0 {
		n += 1 + sizeVarint(uint64(r.rtime/1e9)) + 5
	}
	if len(r.rmsg) > 0 {
		n += 1 + sizeVarint(uint64(len(r.rmsg))) + len(r.rmsg)
	}
	if r.http != 0 {
		n += 2 + 1 // field 16 needs a two-byte tag
	}
	return n
}

// append writes the Message fields of r in field-number order.
func (r *record) append(buf []byte) []byte {
	buf = appendTag(buf, fieldMsgType, wireVarint)
	buf = append(buf, byte(r.typ))
	if r.family != 0 {
		buf = appendTag(buf, fieldMsgSocketFamily, wireVarint)
		buf = append(buf, byte(r.family))
	}
	if r.proto != 0 {
		buf = appendTag(buf, fieldMsgSocketProtocol, wireVarint)
		buf = append(buf, byte(r.proto))
	}
	if r.qaddrLen != 0 {
		buf = appendBytesField(buf, fieldMsgQueryAddress, r.qaddr[:r.qaddrLen])
	}
	if r.raddrLen != 0 {
		buf = appendBytesField(buf, fieldMsgResponseAddress, r.raddr[:r.raddrLen])
	}
	if r.qaddrLen != 0 {
		buf = appendTag(buf, fieldMsgQueryPort, wireVarint)
		buf = appendVarint(buf, uint64(r.qport))
	}
	if r.raddrLen != 0 {
		buf = appendTag(buf, fieldMsgResponsePort, wireVarint)
		buf = appendVarint(buf, uint64(r.rport))
	}
	if r.qtime > 0 {
		buf = appendTime(buf, fieldMsgQueryTimeSec, fieldMsgQueryTimeNsec, r.qtime)
	}
	if len(r.qmsg) > 0 {
		buf = appendMessage(buf, fieldMsgQueryMessage, r.qmsg, r.qid)
	}
	if len(r.zone) > 0 {
		buf = appendBytesField(buf, fieldMsgQueryZone, r.zone)
	}
	if r.rtime > 0 {
		buf = appendTime(buf, fieldMsgResponseTimeSec, fieldMsgResponseTimeNsec, r.rtime)
	}
	if len(r.rmsg) > 0 {
		buf = appendMessage(buf, fieldMsgResponseMessage, r.rmsg, r.rid)
	}
	if r.http != 0 {
		buf = appendTag(buf, fieldMsgHTTPProtocol, wireVarint)
		buf = append(buf, byte(r.http))
	}
	return buf
}

// appendTime writes a Unix-nanosecond time as dnstap's seconds (uint64) and
// nanoseconds (fixed32) pair.
func appendTime(buf []byte, secField, nsecField int, ns int64) []byte {
	buf = appendTag(buf, secField, wireVarint)
	buf = appendVarint(buf, uint64(ns/1e9))
	buf = appendTag(buf, nsecField, wireFixed32)
	v := uint32(ns % 1e9)
	return append(buf, byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
}

// appendMessage writes a DNS message verbatim, except that id >= 0 replaces
// its ID (the upstream leg's on-wire ID). Messages shorter than the two ID
// bytes are copied unchanged.
func appendMessage(buf []byte, field int, msg []byte, id int32) []byte {
	buf = appendTag(buf, field, wireBytes)
	buf = appendVarint(buf, uint64(len(msg)))
	start := len(buf)
	buf = append(buf, msg...)
	if id >= 0 && len(msg) >= 2 {
		buf[start] = byte(id >> 8)
		buf[start+1] = byte(id)
	}
	return buf
}

func appendBytesField(buf []byte, field int, b []byte) []byte {
	buf = appendTag(buf, field, wireBytes)
	buf = appendVarint(buf, uint64(len(b)))
	return append(buf, b...)
}

func appendTag(buf []byte, field, wire int) []byte {
	return appendVarint(buf, uint64(field)<<3|uint64(wire))
}

func appendVarint(buf []byte, v uint64) []byte {
	for v >= 0x80 {
		buf = append(buf, byte(v)|0x80)
		v >>= 7
	}
	return append(buf, byte(v))
}

func sizeVarint(v uint64) int {
	return (bits.Len64(v|1) + 6) / 7
}
