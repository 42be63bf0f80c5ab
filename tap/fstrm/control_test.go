package fstrm

import (
	"bytes"
	"errors"
	"io"
	"testing"

	framestream "github.com/farsightsec/golang-framestream"
)

func TestReadControl(t *testing.T) {
	accept := rawControl(controlAccept, ctField(ContentType))
	for _, tc := range []struct {
		name      string
		in        []byte
		wantErr   error // nil: success
		wantType  uint32
		wantTypes []string
		wantRead  int // bytes consumed on success
	}{
		{"ACCEPT with our content type", accept, nil, controlAccept, []string{ContentType}, len(accept)},
		{"ACCEPT, then data stays unread", append(bytes.Clone(accept), 0, 0, 0, 5), nil, controlAccept, []string{ContentType}, len(accept)},
		{"READY with two content types", rawControl(controlReady, ctField("a"), ctField(ContentType)), nil, controlReady, []string{"a", ContentType}, 12 + 9 + 8 + len(ContentType)},
		{"FINISH, no fields", rawControl(controlFinish), nil, controlFinish, nil, 12},
		{"empty content type field", rawControl(controlAccept, ctField("")), nil, controlAccept, []string{""}, 20},
		{"empty input", nil, io.EOF, 0, nil, 0},
		{"escape only", []byte{0, 0, 0, 0}, io.ErrUnexpectedEOF, 0, nil, 0},
		{"data frame instead of control", []byte{0, 0, 0, 4, 1, 2, 3, 4}, errNotControl, 0, nil, 0},
		{"length 513", []byte{0, 0, 0, 0, 0, 0, 2, 1}, errControlTooLarge, 0, nil, 0},
		{"length 0xffffffff", []byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, errControlTooLarge, 0, nil, 0},
		{"body cut short", accept[:len(accept)-1], io.ErrUnexpectedEOF, 0, nil, 0},
		{"body shorter than a type", []byte{0, 0, 0, 0, 0, 0, 0, 2, 0, 1}, errControlMalformed, 0, nil, 0},
		{"control type 0", rawControl(0), errControlMalformed, 0, nil, 0},
		{"control type 6", rawControl(6), errControlMalformed, 0, nil, 0},
		{"unknown field type", rawControl(controlAccept, []byte{0, 0, 0, 2, 0, 0, 0, 0}), errControlMalformed, 0, nil, 0},
		{"field length past the end", rawControl(controlAccept, []byte{0, 0, 0, 1, 0, 0, 0, 9, 'x'}), errControlMalformed, 0, nil, 0},
		{"field header cut short", rawControl(controlAccept, []byte{0, 0, 0, 1, 0, 0}), errControlMalformed, 0, nil, 0},
		{"field length 0xffffffff", rawControl(controlAccept, []byte{0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff}), errControlMalformed, 0, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf [controlBufSize]byte
			r := bytes.NewReader(tc.in)
			cf, err := readControl(r, &buf)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("err %v", err)
			}
			if cf.typ != tc.wantType || len(cf.contentTypes) != len(tc.wantTypes) {
				t.Fatalf("got type %d types %q", cf.typ, cf.contentTypes)
			}
			for i := range tc.wantTypes {
				if string(cf.contentTypes[i]) != tc.wantTypes[i] {
					t.Fatalf("content type %d = %q", i, cf.contentTypes[i])
				}
			}
			if got := len(tc.in) - r.Len(); got != tc.wantRead {
				t.Errorf("consumed %d bytes, want %d", got, tc.wantRead)
			}
		})
	}
}

func TestReadAccept(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"ok", rawControl(controlAccept, ctField(ContentType)), nil},
		{"ok among others", rawControl(controlAccept, ctField("x"), ctField(ContentType)), nil},
		{"no content type", rawControl(controlAccept), errContentType},
		{"other content type", rawControl(controlAccept, ctField("protobuf:dnstap.DnstaX")), errContentType},
		{"content type prefix", rawControl(controlAccept, ctField("protobuf:dnstap")), errContentType},
		{"START instead", rawControl(controlStart, ctField(ContentType)), errControlType},
		{"FINISH instead", rawControl(controlFinish), errControlType},
	} {
		var buf [controlBufSize]byte
		if err := readAccept(bytes.NewReader(tc.in), &buf); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestEncodeControl pins the bytes of the frames we send (built with
// golang-framestream's encoder) against the specification's layout.
func TestEncodeControl(t *testing.T) {
	if got, want := encodeControl(controlStop, ""), []byte{0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 3}; !bytes.Equal(got, want) {
		t.Errorf("STOP = % x", got)
	}
	if len(encodeControl(controlStop, "")) != stopFrameLen {
		t.Errorf("stopFrameLen wrong")
	}
	if got, want := encodeControl(controlReady, ContentType), rawControl(controlReady, ctField(ContentType)); !bytes.Equal(got, want) {
		t.Errorf("READY = % x, want % x", got, want)
	}
}

// FuzzReadControl feeds collector-controlled bytes to the handshake reader.
// Properties: no panic; never more than one frame consumed (at most 520
// bytes, so memory is bounded whatever the length field says); an accepted
// frame re-encodes (with golang-framestream's encoder) to exactly the bytes
// consumed; where golang-framestream's decoder also accepts the bytes, both
// agree.
func FuzzReadControl(f *testing.F) {
	// A collector's correct answer to READY.
	f.Add(rawControl(controlAccept, ctField(ContentType)))
	// ACCEPT offering two content types, ours second.
	f.Add(rawControl(controlAccept, ctField("protobuf:other"), ctField(ContentType)))
	// ACCEPT with no content type (rejected: we named one).
	f.Add(rawControl(controlAccept))
	// ACCEPT with a near-miss content type.
	f.Add(rawControl(controlAccept, ctField("protobuf:dnstap.DnstaX")))
	// FINISH, the only frame allowed after the handshake.
	f.Add(rawControl(controlFinish))
	// START where ACCEPT belongs.
	f.Add(rawControl(controlStart, ctField(ContentType)))
	// Length field far beyond 512 (must not be allocated or read).
	f.Add([]byte{0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1})
	// Length exactly 512, body short.
	f.Add([]byte{0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1})
	// A data frame (non-zero first word) instead of an escape.
	f.Add([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
	// Field length larger than the rest of the body.
	f.Add(rawControl(controlAccept, []byte{0, 0, 0, 1, 0, 0, 1, 0, 'a'}))
	// Empty content type at the end (golang-framestream rejects it, we do not).
	f.Add(rawControl(controlAccept, ctField("")))
	// Truncated input.
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var buf [controlBufSize]byte
		r := bytes.NewReader(data)
		cf, err := readControl(r, &buf)
		consumed := len(data) - r.Len()
		if consumed > controlBufSize {
			t.Fatalf("consumed %d bytes, more than one control frame", consumed)
		}
		var abuf [controlBufSize]byte
		aerr := readAccept(bytes.NewReader(data), &abuf)
		if err != nil {
			if aerr == nil {
				t.Fatalf("readAccept accepted what readControl rejected: %v", err)
			}
			return
		}
		if aerr == nil && (cf.typ != controlAccept || !cf.hasContentType([]byte(ContentType))) {
			t.Fatalf("readAccept accepted type %d types %q", cf.typ, cf.contentTypes)
		}
		lib := framestream.ControlFrame{ControlType: cf.typ, ContentTypes: cf.contentTypes}
		var enc bytes.Buffer
		if err := lib.Encode(&enc); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc.Bytes(), data[:consumed]) {
			t.Fatalf("re-encoding differs:\n% x\n% x", enc.Bytes(), data[:consumed])
		}
		var dec framestream.ControlFrame
		if dec.DecodeEscape(bytes.NewReader(data)) == nil {
			if dec.ControlType != cf.typ || len(dec.ContentTypes) != len(cf.contentTypes) {
				t.Fatalf("golang-framestream decodes type %d types %q, we %d %q", dec.ControlType, dec.ContentTypes, cf.typ, cf.contentTypes)
			}
			for i := range dec.ContentTypes {
				if !bytes.Equal(dec.ContentTypes[i], cf.contentTypes[i]) {
					t.Fatalf("content type %d differs", i)
				}
			}
		}
	})
}
