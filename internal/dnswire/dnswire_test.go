package dnswire

import (
	"bytes"
	"errors"
	"testing"

	"github.com/miekg/dns"
)

// hdr builds a 12-byte header with the given ID, flags and QDCOUNT.
func hdr(id, flags, qd uint16) []byte {
	return []byte{byte(id >> 8), byte(id), byte(flags >> 8), byte(flags), byte(qd >> 8), byte(qd), 0, 0, 0, 0, 0, 0}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

var exampleCom = []byte{7, 'E', 'x', 'A', 'm', 'P', 'l', 'e', 3, 'c', 'o', 'm', 0}

func TestParseQuestion(t *testing.T) {
	longLabel := append([]byte{64}, bytes.Repeat([]byte{'a'}, 64)...)
	// 4 labels of 63 = 256 octets of labels, plus root: over 255.
	var tooLong []byte
	for i := 0; i < 4; i++ {
		tooLong = append(tooLong, 63)
		tooLong = append(tooLong, bytes.Repeat([]byte{'b'}, 63)...)
	}
	tooLong = append(tooLong, 0)
	tests := []struct {
		name    string
		msg     []byte
		wantErr error
		name2   string // expected lower-cased presentation
		qtype   uint16
		end     int
	}{
		{"plain", cat(hdr(1, 0x0100, 1), exampleCom, []byte{0, 1, 0, 1}), nil, "example.com.", 1, 12 + 13 + 4},
		{"root", cat(hdr(1, 0, 1), []byte{0, 0, 2, 0, 1}), nil, ".", 2, 12 + 1 + 4},
		{"trailing junk is not our business", cat(hdr(1, 0, 1), exampleCom, []byte{0, 28, 0, 1, 0xde, 0xad}), nil, "example.com.", 28, 29},
		{"short", []byte{1, 2, 3}, ErrShort, "", 0, 0},
		{"qdcount 0", hdr(1, 0, 0), ErrNoQuestion, "", 0, 0},
		{"qdcount 2 still parsed", cat(hdr(1, 0, 2), exampleCom, []byte{0, 1, 0, 1}), ErrQuestionCount, "example.com.", 1, 29},
		{"name cut short", cat(hdr(1, 0, 1), exampleCom[:5]), ErrTruncatedName, "", 0, 0},
		{"type cut short", cat(hdr(1, 0, 1), exampleCom, []byte{0, 1, 0}), ErrTruncatedQuest, "", 0, 0},
		{"label over 63 is a reserved type", cat(hdr(1, 0, 1), longLabel, []byte{0, 0, 1, 0, 1}), ErrLabelType, "", 0, 0},
		{"0x80 label type", cat(hdr(1, 0, 1), []byte{0x80, 0, 0, 1, 0, 1}), ErrLabelType, "", 0, 0},
		{"name over 255", cat(hdr(1, 0, 1), tooLong, []byte{0, 1, 0, 1}), ErrNameTooLong, "", 0, 0},
		{"pointer to itself", cat(hdr(1, 0, 1), []byte{0xC0, 12, 0, 1, 0, 1}), ErrPointer, "", 0, 0},
		{"pointer forward", cat(hdr(1, 0, 1), []byte{0xC0, 20, 0, 1, 0, 1}), ErrPointer, "", 0, 0},
		{"pointer into header", cat(hdr(1, 0, 1), []byte{0xC0, 2, 0, 1, 0, 1}), ErrPointer, "", 0, 0},
		{"pointer cut short", cat(hdr(1, 0, 1), []byte{1, 'a', 0xC0}), ErrTruncatedName, "", 0, 0},
		{
			// "a" then a pointer back to offset 12 ("a" again, …): every
			// pointer must go strictly lower, so this loop is caught.
			"compression loop", cat(hdr(1, 0, 1), []byte{1, 'a', 0xC0, 12, 0, 1, 0, 1}), ErrPointer, "", 0, 0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var q Question
			err := ParseQuestion(tc.msg, &q)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.name2 == "" {
				return
			}
			name, _, perr := dns.UnpackDomainName(q.NameBytes(), 0)
			if perr != nil {
				t.Fatalf("our name bytes do not unpack: %v", perr)
			}
			if name != tc.name2 || q.Type != tc.qtype || q.End != tc.end {
				t.Errorf("got %q type %d end %d, want %q %d %d", name, q.Type, q.End, tc.name2, tc.qtype, tc.end)
			}
		})
	}
}

// TestQuestionEqualCaseInsensitive: RFC 5452 §9.1 compares qnames without
// regard to case (0x20 randomisation relies on it).
func TestQuestionEqualCaseInsensitive(t *testing.T) {
	a := cat(hdr(1, 0, 1), []byte{3, 'W', 'w', 'W', 0, 0, 1, 0, 1})
	b := cat(hdr(2, 0x8000, 1), []byte{3, 'w', 'W', 'w', 0, 0, 1, 0, 1})
	c := cat(hdr(2, 0x8000, 1), []byte{3, 'w', 'W', 'w', 0, 0, 28, 0, 1})
	var qa, qb, qc Question
	for _, x := range []struct {
		m []byte
		q *Question
	}{{a, &qa}, {b, &qb}, {c, &qc}} {
		if err := ParseQuestion(x.m, x.q); err != nil {
			t.Fatal(err)
		}
	}
	if !qa.Equal(&qb) {
		t.Error("same name in other case must match")
	}
	if qa.Equal(&qc) {
		t.Error("different qtype must not match")
	}
}

// TestReadNameBackwardPointer checks a legal compression pointer: the first
// question can never use one (nothing precedes it but the header), so read
// a second question that points back into the first.
func TestReadNameBackwardPointer(t *testing.T) {
	msg := cat(hdr(1, 0, 2), exampleCom, []byte{0, 1, 0, 1}, []byte{3, 'w', 'w', 'w', 0xC0, 12})
	var q Question
	end, err := readName(msg, 12+13+4, &q)
	if err != nil {
		t.Fatal(err)
	}
	name, _, _ := dns.UnpackDomainName(q.NameBytes(), 0)
	if name != "www.example.com." || end != len(msg) {
		t.Fatalf("got %q end %d", name, end)
	}
}

func TestMiekgAgreement(t *testing.T) {
	for _, qn := range []string{"a.b.c.", "Mixed.CASE.test.", "x.", "."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, 65280} {
			m := new(dns.Msg)
			m.SetQuestion(qn, qt)
			m.SetEdns0(1232, true)
			b, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			var q Question
			if err := ParseQuestion(b, &q); err != nil {
				t.Fatalf("%s: %v", qn, err)
			}
			name, _, _ := dns.UnpackDomainName(q.NameBytes(), 0)
			if name != dns.CanonicalName(qn) || q.Type != qt || q.Class != dns.ClassINET {
				t.Errorf("%s/%d: got %q %d %d", qn, qt, name, q.Type, q.Class)
			}
		}
	}
}

func TestAppendErrorReply(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("refuse.me.", dns.TypeA)
	m.Id = 0xBEEF
	m.SetEdns0(4096, true)
	b, _ := m.Pack()
	var q Question
	if err := ParseQuestion(b, &q); err != nil {
		t.Fatal(err)
	}
	for _, withQ := range []bool{true, false} {
		qp := &q
		if !withQ {
			qp = nil
		}
		r := AppendErrorReply(nil, b, qp, RcodeRefused)
		if len(r) > len(b) {
			t.Fatalf("reply %d bytes larger than query %d", len(r), len(b))
		}
		var rm dns.Msg
		if err := rm.Unpack(r); err != nil {
			t.Fatal(err)
		}
		if rm.Id != 0xBEEF || !rm.Response || rm.Rcode != dns.RcodeRefused || !rm.RecursionDesired {
			t.Errorf("bad reply header: %+v", rm.MsgHdr)
		}
		if withQ && (len(rm.Question) != 1 || rm.Question[0].Name != "refuse.me.") {
			t.Errorf("question not echoed: %v", rm.Question)
		}
		if !withQ && len(rm.Question) != 0 {
			t.Errorf("header-only reply has a question")
		}
		if len(rm.Extra)+len(rm.Answer)+len(rm.Ns) != 0 {
			t.Errorf("reply has records")
		}
	}
}

func TestParseAllocs(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("www.example.com.", dns.TypeA)
	b, _ := m.Pack()
	var q Question
	if n := testing.AllocsPerRun(1000, func() { _ = ParseQuestion(b, &q) }); n != 0 {
		t.Fatalf("ParseQuestion allocates %v per run", n)
	}
	dst := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(1000, func() { _ = AppendErrorReply(dst[:0], b, &q, RcodeServFail) }); n != 0 {
		t.Fatalf("AppendErrorReply allocates %v per run", n)
	}
}

// FuzzParseQuestion: arbitrary bytes never panic, and whatever parses
// agrees with miekg/dns on the name.
func FuzzParseQuestion(f *testing.F) {
	// Seeds: a plain query, a compression loop, a pointer to itself, a
	// 64-byte label, qdcount 0, a truncated name.
	f.Add(cat(hdr(1, 0x0100, 1), exampleCom, []byte{0, 1, 0, 1}))
	f.Add(cat(hdr(1, 0, 1), []byte{1, 'a', 0xC0, 12, 0, 1, 0, 1}))
	f.Add(cat(hdr(1, 0, 1), []byte{0xC0, 12, 0, 1, 0, 1}))
	f.Add(cat(hdr(1, 0, 1), append([]byte{64}, bytes.Repeat([]byte{'a'}, 64)...)))
	f.Add(hdr(1, 0, 0))
	f.Add(cat(hdr(1, 0, 1), exampleCom[:4]))
	f.Fuzz(func(t *testing.T, b []byte) {
		var q Question
		err := ParseQuestion(b, &q)
		if err != nil && !errors.Is(err, ErrQuestionCount) {
			return
		}
		if q.End > len(b) || q.End < HeaderLen+5 {
			t.Fatalf("End %d out of range (len %d)", q.End, len(b))
		}
		if int(q.NameLen) > MaxNameLen || q.NameLen == 0 {
			t.Fatalf("NameLen %d", q.NameLen)
		}
		if _, _, err := dns.UnpackDomainName(q.NameBytes(), 0); err != nil {
			t.Fatalf("parsed name does not unpack: %v (% x)", err, q.NameBytes())
		}
	})
}
