package responder

import (
	"errors"
	"fmt"
	"strings"
)

// MaxAnswerLen is the largest answer Answer writes: header (12), the longest
// question (255 + 4), an SOA record with compressed names (50) and an OPT
// record (11). Buffers passed to Answer must be at least this long.
const MaxAnswerLen = 12 + 255 + 4 + 50 + 11

// ttl of every record the responder writes.
const ttl = 300

// ednsUDPSize is the UDP payload size advertised in our OPT record: the
// DNS Flag Day 2020 value.
const ednsUDPSize = 1232

// DNS constants (RFC 1035 §3.2.2, §4.1.1; RFC 3596; RFC 6891).
const (
	headerLen = 12

	flagQR = 1 << 15
	flagAA = 1 << 10
	flagRD = 1 << 8
	flagCD = 1 << 4

	typeA    = 1
	typeSOA  = 6
	typeTXT  = 16
	typeAAAA = 28
	typeOPT  = 41
	classIN  = 1

	rcodeNoError  = 0
	rcodeFormErr  = 1
	rcodeNXDomain = 3
	rcodeNotImp   = 4
	rcodeRefused  = 5

	ednsDO = 1 << 15
)

// Outcome is what Answer did with one datagram. Every datagram gets exactly
// one outcome; the server keeps one counter per outcome.
type Outcome uint8

// Outcomes. The Drop outcomes send nothing (Answer returns 0).
const (
	DropShort   Outcome = iota // shorter than a DNS header
	DropQR                     // QR=1: a response sent to us
	DropNoRoom                 // dst shorter than MaxAnswerLen (caller bug)
	Answered                   // NOERROR with one A/AAAA/TXT record
	NoData                     // NOERROR, no answer, SOA in authority
	NXDomain                   // NXDOMAIN, SOA in authority
	Refused                    // outside the zone or class not IN
	FormErr                    // malformed question or OPT
	NotImp                     // opcode other than QUERY
	BadVers                    // EDNS version other than 0
	NumOutcomes                // number of outcomes, for counter arrays
)

var outcomeNames = [NumOutcomes]string{
	DropShort:  "dropped_short",
	DropQR:     "dropped_qr",
	DropNoRoom: "dropped_noroom",
	Answered:   "answered",
	NoData:     "nodata",
	NXDomain:   "nxdomain",
	Refused:    "refused",
	FormErr:    "formerr",
	NotImp:     "notimp",
	BadVers:    "badvers",
}

// String returns the counter name of the outcome.
func (o Outcome) String() string {
	if o < NumOutcomes {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Zone holds the pre-encoded data Answer needs. It is read-only after
// NewZone and safe for concurrent use.
type Zone struct {
	apex []byte // lower-case wire form, root label included
	nx   []byte // "nx" + apex
}

// ErrZone reports an unusable zone name.
var ErrZone = errors.New("responder: bad zone name")

// NewZone prepares zone (a presentation-format name such as "bench.test.";
// the trailing dot is optional) for Answer.
func NewZone(zone string) (*Zone, error) {
	apex, err := wireName(zone)
	if err != nil {
		return nil, err
	}
	nx := append([]byte{2, 'n', 'x'}, apex...)
	if len(nx) > 255 {
		return nil, fmt.Errorf("%w: %q is too long for nx.%s", ErrZone, zone, zone)
	}
	return &Zone{apex: apex, nx: nx}, nil
}

// wireName encodes a presentation name without escapes in lower case.
func wireName(name string) ([]byte, error) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	var out []byte
	if name != "" {
		for _, l := range strings.Split(name, ".") {
			if l == "" || len(l) > 63 || strings.ContainsAny(l, `\ `) {
				return nil, fmt.Errorf("%w: %q", ErrZone, name)
			}
			out = append(out, byte(len(l)))
			out = append(out, l...)
		}
	}
	out = append(out, 0)
	if len(out) > 255 {
		return nil, fmt.Errorf("%w: %q longer than 255 octets", ErrZone, name)
	}
	return out, nil
}

// Fixed record data. Owner names are compression pointers patched in by
// Answer: 0xC00C is the question name (RFC 1035 §4.1.4).
var (
	rrA    = []byte{0xC0, 0x0C, 0, typeA, 0, classIN, 0, 0, ttl >> 8, ttl & 0xFF, 0, 4, 192, 0, 2, 1}
	rrAAAA = []byte{0xC0, 0x0C, 0, typeAAAA, 0, classIN, 0, 0, ttl >> 8, ttl & 0xFF, 0, 16,
		0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
	rrTXT = []byte{0xC0, 0x0C, 0, typeTXT, 0, classIN, 0, 0, ttl >> 8, ttl & 0xFF, 0, 6, 5, 'b', 'e', 'n', 'c', 'h'}
	// rrSOA: owner, MNAME "ns" and RNAME "hostmaster" all point at the zone
	// apex inside the question; the three pointers (soaPointers) are
	// patched. SERIAL 1, REFRESH 3600, RETRY 600, EXPIRE 86400, MINIMUM 300.
	rrSOA = []byte{
		0xC0, 0x00, 0, typeSOA, 0, classIN, 0, 0, ttl >> 8, ttl & 0xFF, 0, 38,
		2, 'n', 's', 0xC0, 0x00,
		10, 'h', 'o', 's', 't', 'm', 'a', 's', 't', 'e', 'r', 0xC0, 0x00,
		0, 0, 0, 1, 0, 0, 0x0E, 0x10, 0, 0, 0x02, 0x58, 0, 0x01, 0x51, 0x80, 0, 0, 0x01, 0x2C,
	}
)

// soaPointers are the offsets in rrSOA of the pointers to the apex.
var soaPointers = [...]int{0, 15, 28}

// Answer writes the answer to query into dst and returns its length and the
// outcome. It returns 0 for the Drop outcomes. dst must not overlap query and
// must be at least MaxAnswerLen long. Answer does not allocate.
func (z *Zone) Answer(dst, query []byte) (int, Outcome) {
	if len(query) < headerLen {
		return 0, DropShort
	}
	flags := be16(query[2:])
	if flags&flagQR != 0 {
		return 0, DropQR
	}
	if len(dst) < MaxAnswerLen {
		return 0, DropNoRoom
	}
	// Response flags: QR, opcode, RD and CD copied (RFC 1035 §4.1.1,
	// RFC 4035 §3.1.6); RA clear, we are authoritative only.
	rflags := flagQR | flags&(0xF<<11|flagRD|flagCD)
	copy(dst[0:2], query[0:2])
	if opcode := flags >> 11 & 0xF; opcode != 0 {
		return headerOnly(dst, rflags|rcodeNotImp), NotImp
	}
	if be16(query[4:]) != 1 {
		return headerOnly(dst, rflags|rcodeFormErr), FormErr
	}

	// The question name: plain labels only, a query has nothing to point at.
	off := headerLen
	for {
		if off >= len(query) {
			return headerOnly(dst, rflags|rcodeFormErr), FormErr
		}
		c := int(query[off])
		if c == 0 {
			off++
			break
		}
		if c&0xC0 != 0 || off+1+c >= len(query) {
			return headerOnly(dst, rflags|rcodeFormErr), FormErr
		}
		off += 1 + c
	}
	nameEnd := off
	if nameEnd-headerLen > 255 {
		return headerOnly(dst, rflags|rcodeFormErr), FormErr
	}
	if nameEnd+4 > len(query) {
		return headerOnly(dst, rflags|rcodeFormErr), FormErr
	}
	qtype := be16(query[nameEnd:])
	qclass := be16(query[nameEnd+2:])
	qEnd := nameEnd + 4

	hasOPT, do, version, ok := findOPT(query, qEnd)
	if !ok {
		return headerOnly(dst, rflags|rcodeFormErr), FormErr
	}

	// Header and question; counts filled in below.
	n := copy(dst[headerLen:], query[headerLen:qEnd]) + headerLen
	var an, ns uint16
	outcome := Refused
	rcode := uint16(rcodeRefused)
	extRcode := byte(0)

	apexOff := suffixAt(query, nameEnd, z.apex)
	switch {
	case hasOPT && version != 0:
		outcome, rcode, extRcode = BadVers, 0, 1 // BADVERS = 16 = 1<<4 | 0
	case apexOff < 0 || qclass != classIN:
		// Refused, set above.
	default:
		rflags |= flagAA
		rcode = rcodeNoError
		var rr []byte
		switch qtype {
		case typeA:
			rr = rrA
		case typeAAAA:
			rr = rrAAAA
		case typeTXT:
			rr = rrTXT
		}
		switch {
		case suffixAt(query, nameEnd, z.nx) >= 0:
			outcome, rcode = NXDomain, rcodeNXDomain
			n += putSOA(dst[n:], apexOff)
			ns = 1
		case rr != nil:
			outcome = Answered
			n += copy(dst[n:], rr)
			an = 1
		default:
			outcome = NoData
			n += putSOA(dst[n:], apexOff)
			ns = 1
		}
	}

	put16(dst[2:], rflags|rcode)
	put16(dst[4:], 1)
	put16(dst[6:], an)
	put16(dst[8:], ns)
	ar := uint16(0)
	if hasOPT {
		ar = 1
		var ednsFlags uint16
		if do {
			ednsFlags = ednsDO
		}
		o := dst[n : n+11]
		o[0] = 0 // root owner
		put16(o[1:], typeOPT)
		put16(o[3:], ednsUDPSize)
		o[5] = extRcode
		o[6] = 0 // version
		put16(o[7:], ednsFlags)
		put16(o[9:], 0) // RDLEN
		n += 11
	}
	put16(dst[10:], ar)
	return n, outcome
}

// headerOnly finishes a header-only answer whose ID is already in dst.
func headerOnly(dst []byte, flags uint16) int {
	put16(dst[2:], flags)
	for i := 4; i < headerLen; i++ {
		dst[i] = 0
	}
	return headerLen
}

// putSOA writes the SOA record with its pointers at apexOff.
func putSOA(dst []byte, apexOff int) int {
	n := copy(dst, rrSOA)
	for _, p := range soaPointers {
		put16(dst[p:], 0xC000|uint16(apexOff))
	}
	return n
}

// suffixAt returns the offset in msg where suffix (a lower-case wire name)
// starts as the trailing labels of the uncompressed name at
// [headerLen, nameEnd), or -1. The name must already be validated.
func suffixAt(msg []byte, nameEnd int, suffix []byte) int {
	want := nameEnd - len(suffix)
	if want < headerLen {
		return -1
	}
	// Only a label boundary counts: walk the labels to want.
	off := headerLen
	for off < want {
		off += 1 + int(msg[off])
	}
	if off != want {
		return -1
	}
	for i, b := range msg[want:nameEnd] {
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if b != suffix[i] {
			return -1
		}
	}
	return want
}

// findOPT walks the answer, authority and additional sections that follow
// the question at off and reports whether the additional section has an OPT
// record, its DO bit and version. ok is false when a record does not decode
// or there is more than one OPT (RFC 6891 §6.1.1).
func findOPT(msg []byte, off int) (has, do bool, version byte, ok bool) {
	an, ns, ar := int(be16(msg[6:])), int(be16(msg[8:])), int(be16(msg[10:]))
	for i := 0; i < an+ns+ar; i++ {
		// Owner name: labels ending in the root or in a pointer.
		for {
			if off >= len(msg) {
				return false, false, 0, false
			}
			c := int(msg[off])
			if c == 0 {
				off++
				break
			}
			if c&0xC0 == 0xC0 {
				off += 2
				break
			}
			if c&0xC0 != 0 {
				return false, false, 0, false
			}
			off += 1 + c
		}
		if off+10 > len(msg) {
			return false, false, 0, false
		}
		rtype := be16(msg[off:])
		rdlen := int(be16(msg[off+8:]))
		if i >= an+ns && rtype == typeOPT {
			if has {
				return false, false, 0, false
			}
			has = true
			version = msg[off+5]
			do = be16(msg[off+6:])&ednsDO != 0
		}
		off += 10 + rdlen
		if off > len(msg) {
			return false, false, 0, false
		}
	}
	return has, do, version, true
}

func be16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

func put16(b []byte, v uint16) { b[0], b[1] = byte(v>>8), byte(v) }
