package upstream

import (
	"errors"

	"github.com/tapproxy/tapproxy/internal/dnswire"
)

// Query types that are answered with a stream of messages (zone transfers).
const (
	typeSOA  = 6
	typeIXFR = 251 // RFC 1995
	typeAXFR = 252 // RFC 5936
)

var errRR = errors.New("upstream: resource record runs past the message")

// xfrState follows the answer records of a zone transfer across its
// messages to find the last one. Only the record framing and SOA serials are
// read; the messages themselves are relayed untouched.
//
//   - AXFR (RFC 5936 §2.2): the first record is the zone's SOA and the
//     transfer ends with the message that carries the next SOA.
//   - IXFR (RFC 1995 §4): the first record is the new SOA (serial S). A lone
//     SOA means "up to date". If the second record is not an SOA the reply is
//     AXFR-style and ends at the second SOA with serial S; otherwise it is
//     incremental and ends at the third SOA with serial S (the first
//     record, the one that opens the last list of additions, and the
//     closing one).
//
// A message with a non-zero rcode, no answers, a first record that is not an
// SOA, or records that cannot be walked ends the transfer: it is relayed and
// nothing more is waited for.
type xfrState struct {
	ixfr        bool
	msgs        int
	rrs         int    // answer records seen so far
	serial      uint32 // serial of the first SOA
	soas        int    // SOAs with that serial seen (IXFR)
	incremental bool   // IXFR: the second record is an SOA
}

func (x *xfrState) reset(ixfr bool) { *x = xfrState{ixfr: ixfr} }

// scan reads one message of the transfer and reports whether it is the
// last.
func (x *xfrState) scan(msg []byte) (last bool) {
	x.msgs++
	h, ok := dnswire.ParseHeader(msg)
	if !ok || h.Rcode() != dnswire.RcodeSuccess || h.ANCount == 0 {
		return true
	}
	off := dnswire.HeaderLen
	var err error
	for range h.QDCount {
		if off, err = skipName(msg, off); err != nil || off+4 > len(msg) {
			return true
		}
		off += 4
	}
	for range h.ANCount {
		var typ uint16
		var rdOff, rdLen int
		if off, err = skipName(msg, off); err != nil || off+10 > len(msg) {
			return true
		}
		typ = uint16(msg[off])<<8 | uint16(msg[off+1])
		rdLen = int(msg[off+8])<<8 | int(msg[off+9])
		rdOff = off + 10
		if rdOff+rdLen > len(msg) {
			return true
		}
		off = rdOff + rdLen
		x.rrs++
		isSOA := typ == typeSOA
		var serial uint32
		if isSOA {
			if serial, err = soaSerial(msg, rdOff, rdLen); err != nil {
				return true
			}
		}
		if x.rrs == 1 {
			if !isSOA {
				return true
			}
			x.serial, x.soas = serial, 1
			continue
		}
		if !x.ixfr {
			if isSOA {
				return true
			}
			continue
		}
		if x.rrs == 2 {
			x.incremental = isSOA
		}
		if isSOA && serial == x.serial {
			x.soas++
			if (!x.incremental && x.soas == 2) || x.soas == 3 {
				return true
			}
		}
	}
	// A lone SOA as the whole first message of an IXFR answer: up to date.
	return x.ixfr && x.rrs == 1
}

// skipName returns the offset just past the (possibly compressed) name at
// off. A pointer ends the name, so no jump is ever followed and the loop
// always moves forward.
func skipName(msg []byte, off int) (int, error) {
	for {
		if off >= len(msg) {
			return 0, errRR
		}
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				return off + 1, nil
			}
			off += 1 + c
		case 0xC0:
			if off+2 > len(msg) {
				return 0, errRR
			}
			return off + 2, nil
		default:
			return 0, errRR
		}
	}
}

// soaSerial reads the SERIAL of SOA rdata (RFC 1035 §3.3.13: MNAME, RNAME,
// then SERIAL).
func soaSerial(msg []byte, rdOff, rdLen int) (uint32, error) {
	end := rdOff + rdLen
	off, err := skipName(msg[:end], rdOff)
	if err != nil {
		return 0, err
	}
	if off, err = skipName(msg[:end], off); err != nil {
		return 0, err
	}
	if off+4 > end {
		return 0, errRR
	}
	return uint32(msg[off])<<24 | uint32(msg[off+1])<<16 | uint32(msg[off+2])<<8 | uint32(msg[off+3]), nil
}
