package e2e

import (
	"encoding/binary"
	"math/rand/v2"
	"strings"
)

// hostileMsg is one message of the hostile corpus.
type hostileMsg struct {
	name string
	b    []byte
}

// maxUDPQuery is the largest UDP payload over IPv4 (65535 - 20 - 8).
const maxUDPQuery = 65507

// optRR builds an OPT pseudo-RR (RFC 6891 §6.1.2) with the given owner,
// declared RDLENGTH and RDATA (the declared length need not match).
func optRR(owner []byte, rdlen uint16, rdata []byte) []byte {
	b := append([]byte(nil), owner...)
	b = binary.BigEndian.AppendUint16(b, 41)   // TYPE OPT
	b = binary.BigEndian.AppendUint16(b, 1232) // CLASS: UDP payload size
	b = append(b, 0, 0, 0x80, 0)               // TTL: ext rcode, version 0, DO
	b = binary.BigEndian.AppendUint16(b, rdlen)
	return append(b, rdata...)
}

// ednsOption is one {code, length, data} option; length may lie.
func ednsOption(code, length uint16, data []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, code)
	b = binary.BigEndian.AppendUint16(b, length)
	return append(b, data...)
}

// hostileCorpus returns, for a seed, the hostile queries that tapproxy must
// forward verbatim (QR=0, at least a header, at most maxLen bytes) and
// those it must drop by a counted rule (runts: dropped_short; QR=1:
// dropped_qr). The same seed gives the same corpus.
func hostileCorpus(seed uint64, maxLen int) (forward, dropped []hostileMsg) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	junk := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		return b
	}
	www := wireName("www.tapproxy.test")
	root := []byte{0}
	add := func(name string, b []byte) {
		if len(b) <= maxLen {
			forward = append(forward, hostileMsg{name, b})
		}
	}
	id := func() uint16 { return uint16(r.UintN(65536)) }

	// Compression loops and chains (RFC 1035 §4.1.4 allows only backward
	// pointers to earlier labels; a parser must cap the hops).
	add("pointer to itself", rawQuery(id(), rd, 1, 0, 0, 0, []byte{0xC0, 12}, typeA))
	add("two-pointer cycle", rawQuery(id(), rd, 1, 0, 0, 0, []byte{0xC0, 14, 0xC0, 12}, typeA))
	chain := []byte{1, 'a', 0}
	for i := 0; i < 200; i++ { // each pointer points at the one before
		chain = append(chain, 0xC0|byte((12+len(chain)-2)>>8), byte(12+len(chain)-2))
	}
	add("chain of 200 pointers", rawQuery(id(), rd, 1, 0, 0, 0, chain, typeA))
	add("pointer past the end", rawQuery(id(), rd, 1, 0, 0, 0, []byte{0xFF, 0xFF}, typeA))
	add("pointer into the header", rawQuery(id(), rd, 1, 0, 0, 0, []byte{0xC0, 2}, typeA))
	add("forward pointer", rawQuery(id(), rd, 1, 0, 0, 0, []byte{0xC0, 20, 0, 1, 0, 1, 3, 'w', 'w', 'w', 0}))
	// Reserved label types 01 and 10 (RFC 6891 §5 retired 0x40).
	add("label type 0x40", rawQuery(id(), rd, 1, 0, 0, 0, []byte{0x41, 0x01, 0}, typeA))
	add("label type 0x80", rawQuery(id(), rd, 1, 0, 0, 0, []byte{0x80, 'x', 0}, typeA))
	add("label type 0x80 mid-name", rawQuery(id(), rd, 1, 0, 0, 0, []byte{3, 'w', 'w', 'w', 0xBF, 0xFF}, typeA))
	// Label and name overflows (RFC 1035 §2.3.4: 63 and 255 octets).
	add("label of 64", rawQuery(id(), rd, 1, 0, 0, 0, wireName(strings.Repeat("a", 64)+".test"), typeA))
	add("name of 256", rawQuery(id(), rd, 1, 0, 0, 0, wireName(strings.Repeat(strings.Repeat("b", 63)+".", 4)+"tes"), typeA))
	long := []byte{}
	for len(long) < 250 {
		long = append(long, 1, 'c')
	}
	long = append(long, 0xC0, 12) // then back to its own start: >255 via a pointer
	add("name over 255 through a pointer", rawQuery(id(), rd, 1, 0, 0, 0, long, typeA))
	add("label length past the end", rawQuery(id(), rd, 1, 0, 0, 0, []byte{63, 'a', 'b'}))
	// Question counts.
	add("qdcount 0", rawQuery(id(), rd, 0, 0, 0, 0))
	add("qdcount 0 with a question", rawQuery(id(), rd, 0, 0, 0, 0, www, typeA))
	add("qdcount 2", rawQuery(id(), rd, 2, 0, 0, 0, www, typeA, wireName("mail.tapproxy.test"), typeA))
	add("qdcount 65535, one question", rawQuery(id(), rd, 65535, 0, 0, 0, www, typeA))
	add("all counts 65535", rawQuery(id(), rd, 65535, 65535, 65535, 65535, www, typeA, junk(40)))
	// EDNS oddities (RFC 6891 §6.1.1: at most one OPT, owner root).
	opt := optRR(root, 0, nil)
	add("two OPTs", rawQuery(id(), rd, 1, 0, 0, 2, www, typeA, opt, opt))
	add("three OPTs", rawQuery(id(), rd, 1, 0, 0, 3, www, typeA, opt, opt, opt))
	var many []byte
	for i := 0; i < 4000; i++ {
		many = append(many, ednsOption(uint16(i), 0, nil)...)
	}
	add("OPT with 4000 empty options", rawQuery(id(), rd, 1, 0, 0, 1, www, typeA, optRR(root, uint16(len(many)), many)))
	add("option length past the end", rawQuery(id(), rd, 1, 0, 0, 1, www, typeA, optRR(root, 8, ednsOption(10, 60000, junk(4)))))
	add("OPT rdlength past the end", rawQuery(id(), rd, 1, 0, 0, 1, www, typeA, optRR(root, 65535, ednsOption(12, 2, []byte{0, 0}))))
	add("OPT owner not root", rawQuery(id(), rd, 1, 0, 0, 1, www, typeA, optRR(www, 0, nil)))
	add("OPT in the answer section", rawQuery(id(), rd, 1, 1, 0, 0, www, typeA, opt))
	add("OPT cut in its fixed part", rawQuery(id(), rd, 1, 0, 0, 1, www, typeA, opt[:5]))
	// Trailing data and size extremes.
	add("trailing junk", rawQuery(id(), rd, 1, 0, 0, 0, www, typeA, junk(1000)))
	add("header only", rawQuery(id(), rd, 1, 0, 0, 0))
	add("largest IPv4 UDP payload", rawQuery(id(), rd, 1, 0, 0, 0, www, typeA, junk(maxUDPQuery-12-len(www)-4)))
	add("one below the largest", rawQuery(id(), rd, 1, 0, 0, 0, www, typeA, junk(maxUDPQuery-13-len(www)-4)))
	add("largest TCP message", rawQuery(id(), rd, 1, 0, 0, 0, www, typeA, junk(65535-12-len(www)-4)))
	add("padding option of 65000", rawQuery(id(), rd, 1, 0, 0, 1, www, typeA,
		optRR(root, 65004, ednsOption(12, 65000, make([]byte, 65000)))))

	// Random headers (QR=0) over random bodies, and single-byte mutations
	// of a well-formed query: the parser's corners that nobody thought of.
	for i := 0; i < 150; i++ {
		flags := uint16(r.UintN(65536)) &^ 0x8000
		b := rawQuery(id(), flags, uint16(r.UintN(4)), uint16(r.UintN(3)), uint16(r.UintN(3)), uint16(r.UintN(3)), junk(int(r.UintN(600))))
		add("random body", b)
	}
	base := rawQuery(0, rd, 1, 0, 0, 1, www, typeA, opt)
	for i := 0; i < 150; i++ {
		b := append([]byte(nil), base...)
		for k := 0; k < 1+int(r.UintN(3)); k++ {
			b[2+r.UintN(uint(len(b)-2))] = byte(r.UintN(256))
		}
		b[2] &^= 0x80 // stays a query
		binary.BigEndian.PutUint16(b, id())
		add("mutated query", b)
	}

	// Dropped by rule: runts (under the 12-byte header) and responses.
	for n := 0; n < 12; n++ {
		dropped = append(dropped, hostileMsg{"runt", junk(n)})
	}
	for i := 0; i < 20; i++ {
		b := rawQuery(id(), 0x8000|uint16(r.UintN(0x8000)), 1, 0, 0, 0, www, typeA, junk(int(r.UintN(100))))
		dropped = append(dropped, hostileMsg{"QR=1", b})
	}
	return forward, dropped
}
