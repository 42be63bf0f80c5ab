package fstrm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"

	framestream "github.com/farsightsec/golang-framestream"
)

// ContentType is the Frame Streams content type of every stream this package
// writes: one dnstap.Dnstap protobuf message per data frame.
const ContentType = "protobuf:dnstap.Dnstap"

// Control frame types (Frame Streams "Control Frame Format").
const (
	controlAccept = framestream.CONTROL_ACCEPT // 1
	controlStart  = framestream.CONTROL_START  // 2
	controlStop   = framestream.CONTROL_STOP   // 3
	controlReady  = framestream.CONTROL_READY  // 4
	controlFinish = framestream.CONTROL_FINISH // 5

	fieldContentType = framestream.CONTROL_FIELD_CONTENT_TYPE // 1
)

// MaxControlFrameSize is the largest control frame body (type + fields) we
// accept from a peer. It is libfstrm's FSTRM_CONTROL_FRAME_LENGTH_MAX (and
// golang-framestream's CONTROL_FRAME_LENGTH_MAX); a longer length field is
// rejected before anything is read, so a hostile peer cannot make us buffer
// more than this.
const MaxControlFrameSize = framestream.CONTROL_FRAME_LENGTH_MAX

// DefaultMaxFrameSize is the default limit on one data frame. Readers in the
// field (libfstrm, golang-framestream) default to 1 MiB and drop or fail on
// longer frames, so writing one would only break the stream.
const DefaultMaxFrameSize = framestream.DEFAULT_MAX_PAYLOAD_SIZE

// controlBufSize holds the escape, the length and the largest body.
const controlBufSize = 8 + MaxControlFrameSize

// stopFrameLen is the length of an encoded STOP frame: escape, length, type.
const stopFrameLen = 12

// Handshake and control-frame errors. They are unexported: callers of the
// writers see them only inside wrapped errors and as counters in Stats.
var (
	errNotControl       = errors.New("data frame where a control frame was expected")
	errControlTooLarge  = errors.New("control frame longer than 512 bytes")
	errControlMalformed = errors.New("malformed control frame")
	errControlType      = errors.New("unexpected control frame type")
	errContentType      = errors.New("peer did not accept content type " + ContentType)
)

// controlFrame is a decoded control frame. contentTypes point into the buffer
// the frame was read into.
type controlFrame struct {
	typ          uint32
	contentTypes [][]byte
}

// hasContentType reports whether ct is among the frame's content types. An
// empty list does not match: libfstrm's writer
// (fstrm_control_match_field_content_type) also refuses an ACCEPT that names
// no content type when it offered one, and so do we.
func (c *controlFrame) hasContentType(ct []byte) bool {
	for _, t := range c.contentTypes {
		if bytes.Equal(t, ct) {
			return true
		}
	}
	return false
}

// encodeControl encodes a control frame with golang-framestream's encoder.
// It runs once per writer (the frames are precomputed), so its allocations do
// not matter.
func encodeControl(typ uint32, contentType string) []byte {
	cf := framestream.ControlFrame{ControlType: typ}
	if contentType != "" {
		cf.SetContentType([]byte(contentType))
	}
	var b bytes.Buffer
	_ = cf.Encode(&b) // a bytes.Buffer does not fail
	return b.Bytes()
}

// parseControl decodes a control frame body: a 32-bit type followed by
// fields of (32-bit type, 32-bit length, data). Only the content-type field
// is defined by the specification; any other field, a truncated field, or an
// unknown frame type is malformed (libfstrm's fstrm_control_decode is as
// strict).
func parseControl(body []byte) (controlFrame, error) {
	var cf controlFrame
	if len(body) < 4 {
		return cf, errControlMalformed
	}
	cf.typ = binary.BigEndian.Uint32(body)
	if cf.typ < controlAccept || cf.typ > controlFinish {
		return cf, errControlMalformed
	}
	rest := body[4:]
	for len(rest) > 0 {
		if len(rest) < 8 {
			return controlFrame{}, errControlMalformed
		}
		ft := binary.BigEndian.Uint32(rest)
		fl := binary.BigEndian.Uint32(rest[4:])
		rest = rest[8:]
		if ft != fieldContentType || uint64(fl) > uint64(len(rest)) {
			return controlFrame{}, errControlMalformed
		}
		cf.contentTypes = append(cf.contentTypes, rest[:fl:fl])
		rest = rest[fl:]
	}
	return cf, nil
}

// readControl reads exactly one escaped control frame from r into buf: 4
// zero bytes, a 32-bit length (at most MaxControlFrameSize) and the body. It
// never reads past the frame, so whatever follows stays in the connection.
// Read errors (io.EOF, io.ErrUnexpectedEOF, deadlines) are returned as they
// are; framing errors are errNotControl, errControlTooLarge or
// errControlMalformed.
func readControl(r io.Reader, buf *[controlBufSize]byte) (controlFrame, error) {
	hdr := buf[:8]
	if _, err := io.ReadFull(r, hdr); err != nil {
		return controlFrame{}, err
	}
	if binary.BigEndian.Uint32(hdr) != 0 {
		return controlFrame{}, errNotControl
	}
	n := binary.BigEndian.Uint32(hdr[4:])
	if n > MaxControlFrameSize {
		return controlFrame{}, errControlTooLarge
	}
	body := buf[8 : 8+n]
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return controlFrame{}, err
	}
	return parseControl(body)
}

// readAccept reads the peer's answer to READY and checks that it is an
// ACCEPT naming ContentType.
func readAccept(r io.Reader, buf *[controlBufSize]byte) error {
	cf, err := readControl(r, buf)
	if err != nil {
		return err
	}
	if cf.typ != controlAccept {
		return errControlType
	}
	if !cf.hasContentType([]byte(ContentType)) {
		return errContentType
	}
	return nil
}
