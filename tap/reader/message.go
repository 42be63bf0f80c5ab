package reader

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/dnswire"
)

// Field numbers of dnstap.proto's Message that golang-dnstap v0.4.0 may
// leave in the unknown fields: its SocketProtocol enum is closed and stops
// at DOH, so a DNSCrypt or DoQ value (5–7) is not stored in the field.
const (
	fieldMsgSocketFamily   = 2
	fieldMsgSocketProtocol = 3
)

// protocolNames follows the current dnstap.proto (v0.4.0 knows 1–4 only).
var protocolNames = [...]string{1: "UDP", 2: "TCP", 3: "DOT", 4: "DOH", 5: "DNSCryptUDP", 6: "DNSCryptTCP", 7: "DOQ"}

var familyNames = [...]string{1: "INET", 2: "INET6"}

// Message is one decoded dnstap message (one Frame Streams data frame).
type Message struct {
	// Frame is the 0-based index of the data frame in the stream (control
	// frames not counted), as dnstap_inspect.py numbers them.
	Frame int
	// Raw is the data frame exactly as read (a serialized Dnstap).
	Raw []byte
	// Tap is the decoded protobuf; Tap.Message is never nil.
	Tap *dnstap.Dnstap

	Type dnstap.Message_Type
	// Family and Protocol are the dnstap enum numbers, 0 when absent.
	Family   int32
	Protocol int32
	// QueryAddr and ResponseAddr are invalid when the field is absent or
	// is neither 4 nor 16 bytes long (the raw bytes stay in Tap).
	QueryAddr    netip.Addr
	ResponseAddr netip.Addr
	// QueryPort and ResponsePort are -1 when absent.
	QueryPort    int64
	ResponsePort int64
	// QueryTime and ResponseTime are zero (IsZero) when absent. They are
	// the producer's values as written, quirks included (kdig puts the
	// time elapsed since the query started into the nanoseconds).
	QueryTime    time.Time
	ResponseTime time.Time

	// QueryMsg and ResponseMsg are nil when the field is absent.
	QueryMsg    *DNS
	ResponseMsg *DNS

	// Annotation is set when Tap.Extra holds a valid tapproxy annotation;
	// AnnotationErr when Extra starts with the annotation prefix but does
	// not parse. Any other Extra is shown as quoted bytes.
	Annotation    *annotate.Annotation
	AnnotationErr error
}

// IsQuery reports whether the message type is one of the *_QUERY types
// (odd values in dnstap.proto).
func (m *Message) IsQuery() bool { return m.Type%2 == 1 }

// IsResponse reports whether the message type is one of the *_RESPONSE
// types (even values in dnstap.proto).
func (m *Message) IsResponse() bool { return m.Type != 0 && m.Type%2 == 0 }

// FamilyName returns the socket family's name, "-" when absent.
func (m *Message) FamilyName() string { return enumName(familyNames[:], m.Family) }

// ProtocolName returns the socket protocol's name, "-" when absent.
func (m *Message) ProtocolName() string { return enumName(protocolNames[:], m.Protocol) }

func enumName(names []string, v int32) string {
	if v == 0 {
		return "-"
	}
	if v > 0 && int(v) < len(names) && names[v] != "" {
		return names[v]
	}
	return fmt.Sprintf("%d", v)
}

// Notes returns the producer quirks that explain odd-looking values in m
// (see the corpus README, "Quirks that matter").
func (m *Message) Notes() []string {
	var n []string
	if strings.HasPrefix(string(m.Tap.GetVersion()), "kdig ") {
		n = append(n, "kdig: the nanoseconds of each time are the time elapsed since the query started, not the wall-clock fraction")
	}
	if m.Protocol == 2 && (m.QueryPort == 0 || m.ResponsePort == 0) {
		n = append(n, "port 0 on TCP: the producer did not record the port (unbound does this for its upstream TCP queries)")
	}
	return n
}

// DNS is one DNS message carried in a dnstap message. The header and first
// question are read with tapproxy's own parser (internal/dnswire), which is
// what pairing uses; miekg/dns unpacks the whole message for display.
// Malformed messages are normal in dnstap logs, never an error here.
type DNS struct {
	Wire []byte
	// Header is valid when HasHeader (the message has at least 12 bytes).
	Header    dnswire.Header
	HasHeader bool
	// Question is the first question, nil when QDCOUNT is 0 or it does
	// not parse (QuestionErr says why). A message with QDCOUNT > 1 keeps
	// its first question and QuestionErr is dnswire.ErrQuestionCount.
	Question    *dnswire.Question
	QuestionErr error
	// Msg is the fully unpacked message, nil when it does not unpack
	// (UnpackErr says why).
	Msg       *dns.Msg
	UnpackErr error
}

func newDNS(wire []byte) *DNS {
	d := &DNS{Wire: wire}
	d.Header, d.HasHeader = dnswire.ParseHeader(wire)
	var q dnswire.Question
	switch err := dnswire.ParseQuestion(wire, &q); {
	case err == nil || errors.Is(err, dnswire.ErrQuestionCount):
		d.Question = &q
		d.QuestionErr = err
	default:
		d.QuestionErr = err
	}
	msg := new(dns.Msg)
	if err := msg.Unpack(wire); err != nil {
		d.UnpackErr = err
	} else {
		d.Msg = msg
	}
	return d
}

// usableQuestion reports whether the message has a first question that
// pairing can compare.
func (d *DNS) usableQuestion() bool { return d != nil && d.Question != nil }

// decodeMessage decodes one data frame. frame is kept (not copied) in the
// returned Message.
func decodeMessage(frame []byte, index int) (*Message, error) {
	t := new(dnstap.Dnstap)
	if err := proto.Unmarshal(frame, t); err != nil {
		return nil, err
	}
	if t.GetType() != dnstap.Dnstap_MESSAGE {
		return nil, fmt.Errorf("dnstap type %d is not MESSAGE", t.GetType())
	}
	mm := t.Message
	if mm == nil {
		return nil, errors.New("dnstap type is MESSAGE but the message field is missing")
	}
	m := &Message{
		Frame:        index,
		Raw:          frame,
		Tap:          t,
		Type:         mm.GetType(),
		QueryPort:    -1,
		ResponsePort: -1,
	}
	if mm.SocketFamily != nil {
		m.Family = int32(*mm.SocketFamily)
	}
	if mm.SocketProtocol != nil {
		m.Protocol = int32(*mm.SocketProtocol)
	}
	if m.Family == 0 || m.Protocol == 0 {
		m.Family, m.Protocol = unknownEnums(mm.ProtoReflect().GetUnknown(), m.Family, m.Protocol)
	}
	m.QueryAddr = addrOf(mm.QueryAddress)
	m.ResponseAddr = addrOf(mm.ResponseAddress)
	if mm.QueryPort != nil {
		m.QueryPort = int64(*mm.QueryPort)
	}
	if mm.ResponsePort != nil {
		m.ResponsePort = int64(*mm.ResponsePort)
	}
	if mm.QueryTimeSec != nil {
		m.QueryTime = unixTime(*mm.QueryTimeSec, mm.GetQueryTimeNsec())
	}
	if mm.ResponseTimeSec != nil {
		m.ResponseTime = unixTime(*mm.ResponseTimeSec, mm.GetResponseTimeNsec())
	}
	if mm.QueryMessage != nil {
		m.QueryMsg = newDNS(mm.QueryMessage)
	}
	if mm.ResponseMessage != nil {
		m.ResponseMsg = newDNS(mm.ResponseMessage)
	}
	if len(t.Extra) > 0 {
		a, err := annotate.Parse(t.Extra)
		switch {
		case err == nil:
			m.Annotation = &a
		case !errors.Is(err, annotate.ErrNotAnnotation):
			m.AnnotationErr = err
		}
	}
	return m, nil
}

// unknownEnums recovers socket_family and socket_protocol values that the
// closed proto2 enums of golang-dnstap v0.4.0 moved to the unknown fields.
func unknownEnums(b []byte, family, protocol int32) (int32, int32) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if typ == protowire.VarintType && (num == fieldMsgSocketFamily || num == fieldMsgSocketProtocol) {
			v, k := protowire.ConsumeVarint(b)
			if k < 0 {
				break
			}
			b = b[k:]
			if v <= 1<<30 {
				if num == fieldMsgSocketFamily && family == 0 {
					family = int32(v)
				} else if num == fieldMsgSocketProtocol && protocol == 0 {
					protocol = int32(v)
				}
			}
			continue
		}
		k := protowire.ConsumeFieldValue(num, typ, b)
		if k < 0 {
			break
		}
		b = b[k:]
	}
	return family, protocol
}

func addrOf(b []byte) netip.Addr {
	if len(b) != 4 && len(b) != 16 {
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// unixTime converts dnstap's (seconds, nanoseconds) pair. nsec is not
// required to be below 1e9 (kdig writes elapsed time there); time.Unix
// normalizes it.
func unixTime(sec uint64, nsec uint32) time.Time {
	if sec > 1<<62 {
		sec = 1 << 62 // keep absurd values from wrapping negative
	}
	return time.Unix(int64(sec), int64(nsec)).UTC()
}
