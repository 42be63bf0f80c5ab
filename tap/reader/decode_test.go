package reader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"google.golang.org/protobuf/proto"
)

// TestDecoderFraming covers the framing rules one by one with hand-made
// files.
func TestDecoderFraming(t *testing.T) {
	q := dnsQuery(t, 1, "a.example.", 1)
	good := spec{typ: dnstap.Message_CLIENT_QUERY, qaddr: "127.0.0.1", qport: 5353, raddr: "127.0.0.1", rport: 53,
		qt: time.Unix(1700000000, 5), qmsg: q}.marshal(t)
	noMessage, _ := proto.Marshal(&dnstap.Dnstap{Type: dnstap.Dnstap_MESSAGE.Enum()})
	badType := append([]byte{}, good...)
	unknownMsgType := func() []byte {
		b, _ := proto.Marshal(&dnstap.Dnstap{Type: dnstap.Dnstap_MESSAGE.Enum(), Message: &dnstap.Message{Type: dnstap.Message_Type(99).Enum()}})
		return b
	}()
	start := control(controlStart, ContentType)
	stop := control(controlStop)
	bigLen := binary.BigEndian.AppendUint32(nil, 1<<31)

	tests := []struct {
		name  string
		data  []byte
		max   int
		msgs  int
		bad   int
		final error // nil means io.EOF
		code  int
	}{
		{"start and stop only", concat(start, stop), 0, 0, 0, nil, ExitOK},
		{"one message", fileOf(good), 0, 1, 0, nil, ExitOK},
		{"empty", nil, 0, 0, 0, ErrEmpty, ExitNotFrameStream},
		{"two bytes", []byte{0, 0}, 0, 0, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"start cut short", start[:10], 0, 0, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"data frame first", fileOf(good)[len(start):], 0, 0, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"text file", []byte("hello, world\n"), 0, 0, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"first control is STOP", concat(stop, stop), 0, 0, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"no content type", concat(control(controlStart), stop), 0, 0, 0, ErrContentType, ExitNotFrameStream},
		{"two content types", concat(control(controlStart, ContentType, ContentType), stop), 0, 0, 0, ErrContentType, ExitNotFrameStream},
		{"content type prefix", concat(control(controlStart, "protobuf:dnstap"), stop), 0, 0, 0, ErrContentType, ExitNotFrameStream},
		{"content type longer", concat(control(controlStart, ContentType+"2"), stop), 0, 0, 0, ErrContentType, ExitNotFrameStream},
		{"control frame too long", concat([]byte{0, 0, 0, 0, 0, 0, 2, 1}, make([]byte, 513)), 0, 0, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"control frame too short", concat([]byte{0, 0, 0, 0, 0, 0, 0, 2, 0, 2}), 0, 0, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"unknown control field", concat([]byte{0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0, 0}, stop), 0, 0, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"field runs past frame", concat([]byte{0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 9}, stop), 0, 0, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"READY inside a file", concat(start, dataFrame(good), control(controlReady, ContentType), stop), 0, 1, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"second START", concat(start, dataFrame(good), start, stop), 0, 1, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"STOP with a field", concat(start, control(controlStop, ContentType)), 0, 0, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"data after STOP", concat(fileOf(good), dataFrame(good)), 0, 1, 0, ErrNotFrameStream, ExitNotFrameStream},
		{"no STOP", concat(start, dataFrame(good), dataFrame(good)), 0, 2, 0, ErrNoStop, ExitTruncated},
		{"cut in a frame length", concat(start, dataFrame(good), []byte{0, 0}), 0, 1, 0, ErrTruncated, ExitTruncated},
		{"cut in a data frame", concat(start, dataFrame(good), dataFrame(good)[:20]), 0, 1, 0, ErrTruncated, ExitTruncated},
		{"cut in STOP", concat(start, dataFrame(good), stop[:9]), 0, 1, 0, ErrTruncated, ExitTruncated},
		{"cut in STOP length", concat(start, dataFrame(good), stop[:6]), 0, 1, 0, ErrTruncated, ExitTruncated},
		{"garbage frame skipped", fileOf([]byte("not protobuf \xff\xff"), good), 0, 1, 1, nil, ExitBadFrame},
		{"message field missing", fileOf(noMessage, good), 0, 1, 1, nil, ExitBadFrame},
		// A Message.type beyond dnstap.proto's list still decodes (shown
		// as its number): newer producers may add types.
		{"unknown message type", fileOf(unknownMsgType, good), 0, 2, 0, nil, ExitOK},
		{"truncated protobuf", fileOf(badType[:len(badType)-1], good), 0, 1, 1, nil, ExitBadFrame},
		{"frame over the limit skipped", fileOf(bytes.Repeat([]byte{1}, 200), good), 100, 1, 1, nil, ExitBadFrame},
		{"huge frame length", concat(start, dataFrame(good), bigLen, []byte{1, 2, 3}), 0, 1, 0, ErrTruncated, ExitTruncated},
		{"bad frame then truncated", concat(start, dataFrame([]byte{0xff}), dataFrame(good)[:7]), 0, 0, 1, ErrTruncated, ExitTruncated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := NewDecoder(bytes.NewReader(tc.data), tc.max)
			var msgs, bad int
			var final error
			for i := 0; ; i++ {
				if i > 1000 {
					t.Fatal("decoder does not terminate")
				}
				m, err := d.Next()
				if err == nil {
					if m == nil || m.Tap.Message == nil {
						t.Fatal("nil message without error")
					}
					msgs++
					continue
				}
				if errors.Is(err, ErrBadDnstap) {
					var fe *FrameError
					if !errors.As(err, &fe) || fe.Frame < 0 {
						t.Errorf("bad frame error %v has no frame index", err)
					}
					bad++
					continue
				}
				final = err
				break
			}
			want := tc.final
			if want == nil {
				want = io.EOF
			}
			if !errors.Is(final, want) {
				t.Errorf("final error %v, want %v", final, want)
			}
			if msgs != tc.msgs || bad != tc.bad || d.Messages != msgs || d.BadFrames != bad {
				t.Errorf("%d messages, %d bad (counters %d, %d); want %d, %d", msgs, bad, d.Messages, d.BadFrames, tc.msgs, tc.bad)
			}
			// The final error is sticky.
			if _, err := d.Next(); !errors.Is(err, want) {
				t.Errorf("Next after the end: %v", err)
			}
			// The exit code: the final error decides unless the stream
			// ended cleanly with bad frames (as runFile does).
			code := ExitCode(final)
			if code == ExitOK && bad > 0 {
				code = ExitBadFrame
			}
			if code != tc.code {
				t.Errorf("exit code %d, want %d", code, tc.code)
			}
		})
	}
}

// TestDecoderReadError: a failing reader is an I/O error (exit 2), not a
// framing verdict.
func TestDecoderReadError(t *testing.T) {
	boom := errors.New("boom")
	for _, n := range []int{0, 5, 30} {
		data := fileOf(spec{typ: dnstap.Message_CLIENT_QUERY}.marshal(t))
		r := io.MultiReader(bytes.NewReader(data[:n]), iotest.ErrReader(boom))
		d := NewDecoder(r, 0)
		var err error
		for i := 0; i < 10 && err == nil; i++ {
			_, err = d.Next()
		}
		if !errors.Is(err, boom) || !errors.Is(err, ErrRead) || ExitCode(err) != ExitIO {
			t.Errorf("after %d bytes: %v (exit %d), want a read error with exit %d", n, err, ExitCode(err), ExitIO)
		}
	}
}

// TestDecodeMessageFields checks the field mapping, the recovery of
// protocol numbers golang-dnstap v0.4.0 does not know, and that malformed
// DNS payloads are kept, not rejected.
func TestDecodeMessageFields(t *testing.T) {
	q := dnsQuery(t, 0x1234, "Www.Example.", 28)
	s := spec{typ: dnstap.Message_CLIENT_QUERY, proto: dnstap.SocketProtocol_TCP, qaddr: "2001:db8::1", qport: 1234,
		raddr: "2001:db8::53", rport: 53, qt: time.Unix(1700000000, 123456789), qmsg: q,
		extra: []byte("tapproxy/1 seq=7 up=192.0.2.1:53 rtt=1500 flags=truncated")}
	m := messagesOf(t, s.marshal(t))[0]
	if m.FamilyName() != "INET6" || m.ProtocolName() != "TCP" || m.QueryAddr.String() != "2001:db8::1" ||
		m.QueryPort != 1234 || m.ResponsePort != 53 || !m.ResponseTime.IsZero() ||
		m.QueryTime.Format(TimeLayout) != "2023-11-14T22:13:20.123456789Z" {
		t.Errorf("fields: %s %s %v %d %d %v %v", m.FamilyName(), m.ProtocolName(), m.QueryAddr, m.QueryPort, m.ResponsePort, m.QueryTime, m.ResponseTime)
	}
	if m.Annotation == nil || m.Annotation.Seq != 7 || m.Annotation.RTT != 1500 || !m.Annotation.Truncated || m.Annotation.Total != -1 {
		t.Errorf("annotation %+v", m.Annotation)
	}
	if m.QueryMsg.Msg == nil || m.QueryMsg.Header.ID != 0x1234 || m.QueryMsg.Question == nil {
		t.Errorf("DNS not decoded: %+v", m.QueryMsg)
	}

	// A DoQ (7) protocol number is unknown to golang-dnstap v0.4.0.
	raw := spec{typ: dnstap.Message_CLIENT_QUERY}.marshal(t)
	d := new(dnstap.Dnstap)
	if err := proto.Unmarshal(raw, d); err != nil {
		t.Fatal(err)
	}
	inner, _ := proto.Marshal(d.Message)
	inner = append(inner, 3<<3, 7) // socket_protocol = 7 (DOQ)
	outer := append(append([]byte{14<<3 | 2}, byte(len(inner))), inner...)
	outer = append(outer, 15<<3, 1) // Dnstap.type = MESSAGE
	m = messagesOf(t, outer)[0]
	if m.ProtocolName() != "DOQ" {
		t.Errorf("protocol %q (%d), want DOQ", m.ProtocolName(), m.Protocol)
	}

	// Malformed DNS and a non-annotation extra are data, not errors.
	s = spec{typ: dnstap.Message_CLIENT_QUERY, qmsg: []byte{0xba, 0xd1, 1, 0, 0}, extra: []byte("other producer's bytes")}
	m = messagesOf(t, s.marshal(t))[0]
	if m.QueryMsg.HasHeader || m.QueryMsg.Msg != nil || m.QueryMsg.UnpackErr == nil || m.Annotation != nil || m.AnnotationErr != nil {
		t.Errorf("malformed query: %+v, annotation %v/%v", m.QueryMsg, m.Annotation, m.AnnotationErr)
	}
	// An extra that claims to be an annotation but is broken is reported.
	s.extra = []byte("tapproxy/1 seq=notanumber")
	m = messagesOf(t, s.marshal(t))[0]
	if m.Annotation != nil || m.AnnotationErr == nil {
		t.Errorf("broken annotation: %v / %v", m.Annotation, m.AnnotationErr)
	}
}

// TestFrameErrorText: errors name the frame index and offset.
func TestFrameErrorText(t *testing.T) {
	data := fileOf([]byte{0xff, 0xff})
	_, err := NewDecoder(bytes.NewReader(data), 0).Next()
	if err == nil || !strings.Contains(err.Error(), "data frame 0 at offset 42") {
		t.Errorf("error %q does not locate the frame", err)
	}
}
