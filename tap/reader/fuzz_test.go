package reader

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// FuzzRead feeds arbitrary bytes to the file decoder, renders every message
// it returns in all three formats and pairs them. It must never panic, must
// terminate, must classify every error into a documented exit code, and its
// JSON must stay valid. Memory is bounded by the frame limit (4 KiB here,
// so oversized frames are exercised too).
//
// Run longer with
//
//	go test -run='^$' -fuzz=FuzzRead -fuzztime=60s -fuzzminimizetime=5s ./tap/reader/
//
// (each input decodes, prints three formats and pairs, so the default 60 s
// minimization of every new interesting input would dominate a short run).
func FuzzRead(f *testing.F) {
	// Small corpus files keep the fuzzer's minimization of interesting
	// inputs short.
	named := readCorpusFile(f, "named-unix.fstrm")          // 645 bytes
	malformed := readCorpusFile(f, "named-malformed.fstrm") // header-only NOTIMP answers, frames out of order
	kdig := readCorpusFile(f, "kdig-tool.fstrm")            // elapsed-time nanoseconds, no identity
	dnsdist := readCorpusFile(f, "dnsdist-malformed.fstrm") // responses carrying both times
	seeds := []struct {
		why  string
		data []byte
	}{
		{"complete named file", named},
		{"complete named file with header-only answers", malformed},
		{"complete kdig file", kdig},
		{"complete dnsdist file", dnsdist},
		{"empty input", nil},
		{"only the frame escape", named[:4]},
		{"START cut inside its length", named[:6]},
		{"START cut inside the content type", named[:20]},
		{"START complete, nothing else", named[:30]},
		{"cut inside the first data frame's length", named[:32]},
		{"cut inside the first data frame", named[:60]},
		{"cut half way", named[:len(named)/2]},
		{"cut 20 bytes into the last data frame (like truncated-mid-frame)", named[:len(named)-12-len(named)%7]},
		{"STOP frame removed (like no-stop-frame)", named[:len(named)-12]},
		{"cut inside STOP", named[:len(named)-5]},
		{"kdig file cut at an odd offset", kdig[:501]},
		{"garbage data frame first", concat(control(controlStart, ContentType), dataFrame([]byte("\xff\xfe garbage")), named[30:])},
		{"wrong content type", concat(control(controlStart, "protobuf:dnstap.DnstaX"), named[30:])},
		{"data after STOP", concat(named, named[30:60])},
		{"oversized frame length claim", concat(control(controlStart, ContentType), []byte{0x7f, 0xff, 0xff, 0xff}, named[30:])},
	}
	for _, s := range seeds {
		f.Add(s.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d := NewDecoder(bytes.NewReader(data), 4<<10)
		var msgs []*Message
		var out bytes.Buffer
		printers := []*Printer{NewPrinter(&out, Text), NewPrinter(&out, JSON), NewPrinter(&out, YAML)}
		for i := 0; ; i++ {
			if i > len(data) {
				t.Fatalf("decoder did not terminate after %d calls on %d bytes", i, len(data))
			}
			m, err := d.Next()
			if err != nil {
				if errors.Is(err, ErrBadDnstap) {
					continue
				}
				if c := ExitCode(err); !errors.Is(err, io.EOF) && c != ExitNotFrameStream && c != ExitTruncated {
					t.Fatalf("error %v maps to exit code %d", err, c)
				}
				break
			}
			msgs = append(msgs, m)
			for _, p := range printers {
				out.Reset()
				if err := p.Message(m); err != nil {
					t.Fatal(err)
				}
				if p.f == JSON && !json.Valid(out.Bytes()) {
					t.Fatalf("invalid JSON: %s", out.Bytes())
				}
			}
		}
		pairs, uq, ur := Match(msgs)
		n := len(uq) + len(ur)
		for _, p := range pairs {
			n += 2
			if p.Query == p.Response {
				n--
			}
		}
		if n != len(msgs) {
			t.Fatalf("%d messages, but %d pairs, %d and %d unmatched", len(msgs), len(pairs), len(uq), len(ur))
		}
		out.Reset()
		if err := NewPrinter(&out, JSON).Pairs(pairs, uq, ur); err != nil {
			t.Fatal(err)
		}
		for _, l := range bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n")) {
			if !json.Valid(l) {
				t.Fatalf("invalid JSON pair line: %s", l)
			}
		}
	})
}
