package dnswire

import "errors"

// HeaderLen is the size of the fixed DNS header (RFC 1035 §4.1.1).
const HeaderLen = 12

// MaxNameLen is the longest name in wire form, length octets and root
// label included (RFC 1035 §3.1).
const MaxNameLen = 255

// MaxPointers caps the compression pointers followed in one name; the same
// bound miekg/dns uses ((255+1)/2 - 2). Pointers must also point strictly
// backwards, so loops are impossible even without the cap.
const MaxPointers = 126

// Header flag bits and fields (RFC 1035 §4.1.1, RFC 6895 §2).
const (
	flagQR     = 1 << 15
	flagTC     = 1 << 9
	opcodeMask = 0xF << 11
	rcodeMask  = 0xF
)

// Rcodes used by tapproxy's own answers (RFC 1035 §4.1.1).
const (
	RcodeSuccess  = 0
	RcodeFormErr  = 1
	RcodeServFail = 2
	RcodeNXDomain = 3
	RcodeNotImp   = 4
	RcodeRefused  = 5
)

// Errors returned by the parser. They are sentinels so callers can count
// them by kind without matching strings.
var (
	ErrShort          = errors.New("dnswire: message shorter than header")
	ErrNoQuestion     = errors.New("dnswire: QDCOUNT is 0")
	ErrQuestionCount  = errors.New("dnswire: QDCOUNT is not 1")
	ErrTruncatedName  = errors.New("dnswire: question name runs past end")
	ErrTruncatedQuest = errors.New("dnswire: question type/class runs past end")
	ErrLabelType      = errors.New("dnswire: reserved or extended label type")
	ErrNameTooLong    = errors.New("dnswire: name longer than 255 octets")
	ErrPointer        = errors.New("dnswire: compression pointer not strictly backwards")
	ErrTooManyPointer = errors.New("dnswire: too many compression pointers")
)

// Header is the fixed DNS header.
type Header struct {
	ID      uint16
	Flags   uint16
	QDCount uint16
	ANCount uint16
	NSCount uint16
	ARCount uint16
}

// ParseHeader reads the header of msg. It reports false when msg is shorter
// than HeaderLen.
func ParseHeader(msg []byte) (Header, bool) {
	if len(msg) < HeaderLen {
		return Header{}, false
	}
	return Header{
		ID:      be16(msg[0:]),
		Flags:   be16(msg[2:]),
		QDCount: be16(msg[4:]),
		ANCount: be16(msg[6:]),
		NSCount: be16(msg[8:]),
		ARCount: be16(msg[10:]),
	}, true
}

// QR reports whether the message is a response.
func (h Header) QR() bool { return h.Flags&flagQR != 0 }

// TC reports the truncation bit.
func (h Header) TC() bool { return h.Flags&flagTC != 0 }

// Opcode returns the 4-bit opcode.
func (h Header) Opcode() uint8 { return uint8((h.Flags & opcodeMask) >> 11) }

// Rcode returns the 4-bit header rcode (without EDNS extended bits).
func (h Header) Rcode() uint8 { return uint8(h.Flags & rcodeMask) }

// Question is the first question of a message. Name holds the owner name in
// uncompressed wire form with ASCII letters folded to lower case, so two
// questions compare equal exactly when RFC 5452 §9.1 says they match
// (qname case-insensitively, qtype, qclass).
type Question struct {
	Name    [MaxNameLen]byte
	NameLen uint8
	Type    uint16
	Class   uint16
	// End is the offset just past the question's QCLASS in the message.
	End int
}

// NameBytes returns the lower-cased wire-form name.
func (q *Question) NameBytes() []byte { return q.Name[:q.NameLen] }

// Equal reports whether a and b are the same question per RFC 5452 §9.1.
func (q *Question) Equal(o *Question) bool {
	return q.Type == o.Type && q.Class == o.Class && q.NameLen == o.NameLen &&
		string(q.Name[:q.NameLen]) == string(o.Name[:o.NameLen])
}

// ParseQuestion parses the header's QDCOUNT and the first question of msg
// into q. It fails with ErrNoQuestion or ErrQuestionCount when QDCOUNT is
// not 1; the question is still parsed when QDCOUNT > 1 so callers may use
// it, but the error marks the message as unusual.
func ParseQuestion(msg []byte, q *Question) error {
	if len(msg) < HeaderLen {
		return ErrShort
	}
	qd := be16(msg[4:])
	if qd == 0 {
		return ErrNoQuestion
	}
	end, err := readName(msg, HeaderLen, q)
	if err != nil {
		return err
	}
	if end+4 > len(msg) {
		return ErrTruncatedQuest
	}
	q.Type = be16(msg[end:])
	q.Class = be16(msg[end+2:])
	q.End = end + 4
	if qd != 1 {
		return ErrQuestionCount
	}
	return nil
}

// readName decodes the name at off into q.Name and returns the offset just
// past it in the original (pointer-free) position.
func readName(msg []byte, off int, q *Question) (int, error) {
	n := 0        // bytes written to q.Name
	end := -1     // offset after the name where it started (before any jump)
	pointers := 0 // pointers followed
	lowest := off // every pointer must go strictly below this
	for {
		if off >= len(msg) {
			return 0, ErrTruncatedName
		}
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				if n+1 > MaxNameLen {
					return 0, ErrNameTooLong
				}
				q.Name[n] = 0
				q.NameLen = uint8(n + 1)
				if end < 0 {
					end = off + 1
				}
				return end, nil
			}
			if off+1+c > len(msg) {
				return 0, ErrTruncatedName
			}
			// The label, its length octet and the root label must fit.
			if n+1+c+1 > MaxNameLen {
				return 0, ErrNameTooLong
			}
			q.Name[n] = byte(c)
			for i, b := range msg[off+1 : off+1+c] {
				if 'A' <= b && b <= 'Z' {
					b += 'a' - 'A'
				}
				q.Name[n+1+i] = b
			}
			n += 1 + c
			off += 1 + c
		case 0xC0:
			if off+2 > len(msg) {
				return 0, ErrTruncatedName
			}
			ptr := int(be16(msg[off:]) & 0x3FFF)
			if ptr >= lowest || ptr < HeaderLen {
				return 0, ErrPointer
			}
			pointers++
			if pointers > MaxPointers {
				return 0, ErrTooManyPointer
			}
			if end < 0 {
				end = off + 2
			}
			lowest = ptr
			off = ptr
		default:
			// 0x40 (RFC 6891 §5 extended, deprecated) and 0x80 (reserved).
			return 0, ErrLabelType
		}
	}
}

func be16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// ID returns the message ID; msg must be at least 2 bytes.
func ID(msg []byte) uint16 { return be16(msg) }

// SetID writes id into msg's header; msg must be at least 2 bytes.
func SetID(msg []byte, id uint16) { msg[0] = byte(id >> 8); msg[1] = byte(id) }

// IsErrorRcode reports whether rcode is one a server may send without
// echoing the question (RFC 5452 §9.1 allows header-only error answers;
// FORMERR, SERVFAIL, NOTIMP and REFUSED are the ones seen in practice).
func IsErrorRcode(rcode uint8) bool {
	return rcode == RcodeFormErr || rcode == RcodeServFail || rcode == RcodeNotImp || rcode == RcodeRefused
}

// AppendErrorReply appends to dst a reply to query with the given rcode:
// the query's header with QR=1, RA copied from nothing (0), TC=0, the rcode
// set, and the question section copied only when q is non-nil (q.End bytes of
// the query). ANCOUNT/NSCOUNT/ARCOUNT are 0, so the reply is never longer
// than the query, which keeps tapproxy useless as a reflector. query must be
// at least HeaderLen bytes.
func AppendErrorReply(dst, query []byte, q *Question, rcode uint8) []byte {
	n := HeaderLen
	if q != nil && q.End <= len(query) {
		n = q.End
	}
	start := len(dst)
	dst = append(dst, query[:n]...)
	h := dst[start:]
	// Keep ID, opcode and RD; set QR; clear AA, TC, RA, Z, AD, CD and rcode.
	const keep = opcodeMask | 1<<8 // RD
	flags := be16(h[2:])&keep | flagQR | uint16(rcode&rcodeMask)
	h[2], h[3] = byte(flags>>8), byte(flags)
	qd := uint16(0)
	if n > HeaderLen {
		qd = 1
	}
	h[4], h[5] = byte(qd>>8), byte(qd)
	for i := 6; i < HeaderLen; i++ {
		h[i] = 0
	}
	return dst
}
