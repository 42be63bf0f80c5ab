package listener

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// chunkSource replays a stream in fixed pieces, each with its own stamp,
// and records the started flag of every read (the frameSource contract).
type chunkSource struct {
	chunks  [][]byte
	stamps  []int64
	started []bool
	// cut, when > 0, further limits each read to cut bytes.
	cut int
}

func (s *chunkSource) readStamped(p []byte, started bool) (int, int64, error) {
	s.started = append(s.started, started)
	for len(s.chunks) > 0 && len(s.chunks[0]) == 0 {
		s.chunks, s.stamps = s.chunks[1:], s.stamps[1:]
	}
	if len(s.chunks) == 0 {
		return 0, 0, io.EOF
	}
	n := min(len(p), len(s.chunks[0]))
	if s.cut > 0 {
		n = min(n, s.cut)
	}
	copy(p, s.chunks[0][:n])
	s.chunks[0] = s.chunks[0][n:]
	return n, s.stamps[0], nil
}

func frame(msgs ...[]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
		b = append(b, m...)
	}
	return b
}

func msgOf(n int, fill byte) []byte { return bytes.Repeat([]byte{fill}, n) }

func TestFrameReader(t *testing.T) {
	m12, m40, m600 := msgOf(12, 'a'), msgOf(40, 'b'), msgOf(600, 'c')
	type want struct {
		msg   []byte
		stamp int64
	}
	tests := []struct {
		name   string
		chunks [][]byte
		want   []want
		err    error // after the messages
	}{
		{"one message, one chunk", [][]byte{frame(m40)}, []want{{m40, 1}}, io.EOF},
		{"prefix split", [][]byte{frame(m40)[:1], frame(m40)[1:]}, []want{{m40, 2}}, io.EOF},
		{"body split: stamp of the completing read", [][]byte{frame(m40)[:10], frame(m40)[10:30], frame(m40)[30:]}, []want{{m40, 3}}, io.EOF},
		{"two messages, one chunk", [][]byte{frame(m12, m40)}, []want{{m12, 1}, {m40, 1}}, io.EOF},
		{"large class buffer", [][]byte{frame(m600)}, []want{{m600, 1}}, io.EOF},
		{"zero length", [][]byte{{0, 0}}, nil, ErrShortLength},
		{"length 11", [][]byte{{0, 11}, msgOf(11, 'x')}, nil, ErrShortLength},
		{"short after a good one", [][]byte{frame(m12), {0, 5}}, []want{{m12, 1}}, ErrShortLength},
		{"eof inside prefix", [][]byte{{0}}, nil, io.ErrUnexpectedEOF},
		{"eof inside body", [][]byte{frame(m40)[:20]}, nil, io.ErrUnexpectedEOF},
		{"65535 announced, nothing sent", [][]byte{{0xff, 0xff}}, nil, io.ErrUnexpectedEOF},
		{"empty stream", nil, nil, io.EOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := &chunkSource{}
			for i, c := range tc.chunks {
				src.chunks = append(src.chunks, append([]byte(nil), c...))
				src.stamps = append(src.stamps, int64(i+1))
			}
			var fr frameReader
			for k, w := range tc.want {
				msg, buf, stamp, err := fr.next(src)
				if err != nil {
					t.Fatalf("message %d: %v", k, err)
				}
				if !bytes.Equal(msg, w.msg) || stamp != w.stamp {
					t.Fatalf("message %d: got %d bytes stamp %d, want %d bytes stamp %d", k, len(msg), stamp, len(w.msg), w.stamp)
				}
				putMsgBuf(buf)
			}
			_, _, _, err := fr.next(src)
			if !errors.Is(err, tc.err) {
				t.Fatalf("end: got %v, want %v", err, tc.err)
			}
			fr.release()
		})
	}
}

// TestFrameReaderStarted checks the contract the deadlines rely on: the
// first read of a message is not "started" (idle deadline), every later
// read of it is (per-message deadline).
func TestFrameReaderStarted(t *testing.T) {
	m := msgOf(20, 'q')
	src := &chunkSource{chunks: [][]byte{frame(m, m)}, stamps: []int64{1}, cut: 1}
	var fr frameReader
	for range 2 {
		_, buf, _, err := fr.next(src)
		if err != nil {
			t.Fatal(err)
		}
		putMsgBuf(buf)
	}
	// 22 one-byte reads per message.
	if len(src.started) != 44 {
		t.Fatalf("%d reads, want 44", len(src.started))
	}
	for i, s := range src.started {
		if want := i%22 != 0; s != want {
			t.Fatalf("read %d: started=%v, want %v", i, s, want)
		}
	}
	if fr.inMessage() {
		t.Fatal("inMessage after a complete message")
	}
}

// refSplit is the obvious non-streaming parser the frameReader must agree
// with.
func refSplit(stream []byte) (msgs [][]byte, err error) {
	for {
		if len(stream) == 0 {
			return msgs, io.EOF
		}
		if len(stream) < 2 {
			return msgs, io.ErrUnexpectedEOF
		}
		l := int(binary.BigEndian.Uint16(stream))
		if l < 12 {
			return msgs, ErrShortLength
		}
		if len(stream) < 2+l {
			return msgs, io.ErrUnexpectedEOF
		}
		msgs = append(msgs, stream[2:2+l])
		stream = stream[2+l:]
	}
}

// FuzzTCPSplit: a stream cut at arbitrary points yields exactly the
// messages (and the same terminal error) as the stream parsed whole. The
// first argument builds well-formed message sequences (so the fuzzer
// reaches deep states); the second is an arbitrary raw stream; cuts gives
// the chunk sizes.
func FuzzTCPSplit(f *testing.F) {
	// Seeds: a few lengths; one-byte chunks; chunks that straddle prefixes.
	f.Add([]byte{0, 1, 2, 3}, []byte{}, []byte{1})
	f.Add([]byte{50, 0, 200}, []byte{0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, []byte{3, 7, 1, 255})
	f.Add([]byte{}, []byte{0, 0}, []byte{2})               // zero length
	f.Add([]byte{}, []byte{0xff, 0xff, 1, 2}, []byte{1})   // lying length, then EOF
	f.Add([]byte{9}, []byte{0, 13, 1}, []byte{0, 0, 0, 5}) // good message then a cut-off one
	f.Fuzz(func(t *testing.T, lens, raw, cuts []byte) {
		var stream []byte
		for i, l := range lens {
			n := 12 + int(l)*3 // up to 777: both buffer classes
			m := make([]byte, n)
			for k := range m {
				m[k] = byte(i + k)
			}
			stream = append(stream, frame(m)...)
		}
		stream = append(stream, raw...)
		want, wantErr := refSplit(stream)

		src := &chunkSource{}
		rest := stream
		for k := 0; len(rest) > 0; k++ {
			n := 1
			if len(cuts) > 0 {
				n = max(1, int(cuts[k%len(cuts)]))
			}
			n = min(n, len(rest))
			src.chunks = append(src.chunks, rest[:n])
			src.stamps = append(src.stamps, int64(k+1))
			rest = rest[n:]
		}
		var fr frameReader
		for k := 0; ; k++ {
			msg, buf, _, err := fr.next(src)
			if err != nil {
				if k != len(want) {
					t.Fatalf("got %d messages then %v, want %d", k, err, len(want))
				}
				if !errors.Is(err, wantErr) {
					t.Fatalf("terminal error %v, want %v", err, wantErr)
				}
				fr.release()
				return
			}
			if k >= len(want) || !bytes.Equal(msg, want[k]) {
				t.Fatalf("message %d differs (%d bytes)", k, len(msg))
			}
			putMsgBuf(buf)
		}
	})
}
