package reader

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// ContentType is the only Frame Streams content type accepted, byte for
// byte (dnstap.proto; fstrm START frame CONTENT_TYPE field).
const ContentType = "protobuf:dnstap.Dnstap"

// DefaultMaxFrameSize caps a data frame (golang-framestream's and
// libfstrm's default). A dnstap message carries at most two 64 KiB DNS
// messages, so real frames are far below it.
const DefaultMaxFrameSize = 1 << 20

// Frame Streams control frames (fstrm "Control frame format"). A file holds
// START, data frames, STOP; READY/ACCEPT/FINISH only occur on sockets.
const (
	controlAccept          = 0x01
	controlStart           = 0x02
	controlStop            = 0x03
	controlReady           = 0x04
	controlFinish          = 0x05
	controlFieldContentTyp = 0x01
	// maxControlFrame is fstrm's FSTRM_CONTROL_FRAME_LENGTH_MAX.
	maxControlFrame = 512
)

var controlNames = map[uint32]string{
	controlAccept: "ACCEPT", controlStart: "START", controlStop: "STOP",
	controlReady: "READY", controlFinish: "FINISH",
}

// Errors the decoder returns, wrapped in a *FrameError. Callers branch on
// them with errors.Is; ExitCode maps them to the command's exit codes.
var (
	// ErrEmpty: the input has no bytes at all (named leaves such a file
	// after "rndc dnstap -roll" until the first message). Exit 3.
	ErrEmpty = errors.New("empty file (0 bytes): no Frame Streams START frame")
	// ErrNotFrameStream: the input does not start with a complete START
	// control frame, or holds a control frame a file may not hold, or has
	// bytes after STOP. Exit 3.
	ErrNotFrameStream = errors.New("not a Frame Streams file")
	// ErrContentType: START names a content type other than ContentType
	// (or none, or several). Exit 3.
	ErrContentType = errors.New("wrong Frame Streams content type")
	// ErrTruncated: the input ends in the middle of a frame. Exit 4.
	ErrTruncated = errors.New("truncated in the middle of a frame")
	// ErrNoStop: the input ends on a frame boundary without a STOP frame
	// (a producer killed, or a file still being written). Exit 4.
	ErrNoStop = errors.New("no STOP frame: input ends without the Frame Streams STOP control frame")
	// ErrBadDnstap: a data frame is not a decodable Dnstap protobuf, or is
	// larger than the frame size limit. The decoder skips it and goes on.
	// Exit 5.
	ErrBadDnstap = errors.New("data frame is not a decodable Dnstap protobuf")
	// ErrRead: the underlying reader failed. Exit 2.
	ErrRead = errors.New("read error")
)

// FrameError locates a decoding problem.
type FrameError struct {
	// Frame is the 0-based data frame index, or -1 when the problem is not
	// in a data frame.
	Frame int
	// Offset is the byte offset of the frame (or of the point of failure
	// for truncation and trailing bytes).
	Offset int64
	// Err wraps one of the sentinel errors above.
	Err error
}

func (e *FrameError) Error() string {
	if e.Frame >= 0 {
		return "data frame " + strconv.Itoa(e.Frame) + " at offset " + strconv.FormatInt(e.Offset, 10) + ": " + e.Err.Error()
	}
	return "at offset " + strconv.FormatInt(e.Offset, 10) + ": " + e.Err.Error()
}

func (e *FrameError) Unwrap() error { return e.Err }

// Decoder reads a Frame Streams file (unidirectional: START, data frames,
// STOP) of dnstap messages. It implements the framing itself rather than
// using golang-framestream's Reader because that Reader returns the same
// io.EOF for a STOP frame and for an input that simply ends, and reports no
// offsets: a strict reader must tell those apart (corpus README, "Reader and
// producer quirks").
//
// Memory is bounded by the frame size limit: a frame's buffer is allocated
// only after its length was checked against the limit, and oversized frames
// are skipped by discarding, not by buffering.
type Decoder struct {
	r        *bufio.Reader
	off      int64
	maxFrame int
	started  bool
	frame    int
	err      error // sticky terminal result (io.EOF after STOP)
	// Frames counts data frames read (a frame cut short included),
	// Messages those returned as messages, BadFrames those that did not
	// decode.
	Frames    int
	Messages  int
	BadFrames int
}

// NewDecoder returns a Decoder reading r. maxFrame <= 0 means
// DefaultMaxFrameSize.
func NewDecoder(r io.Reader, maxFrame int) *Decoder {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrameSize
	}
	return &Decoder{r: bufio.NewReaderSize(r, 64<<10), maxFrame: maxFrame}
}

// Next returns the next dnstap message. It returns io.EOF after a STOP frame
// that ends the input. An error wrapping ErrBadDnstap concerns one data frame
// only: Next may be called again and continues with the next frame. Any
// other error is final and is returned again by later calls.
func (d *Decoder) Next() (*Message, error) {
	if d.err != nil {
		return nil, d.err
	}
	if !d.started {
		if err := d.readStart(); err != nil {
			d.err = err
			return nil, err
		}
		d.started = true
	}
	start := d.off
	var hdr [4]byte
	if err := d.readFull(hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			d.err = &FrameError{Frame: -1, Offset: start, Err: ErrNoStop}
		} else {
			d.err = d.short(err, -1, start, "inside a frame length")
		}
		return nil, d.err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		typ, _, err := d.readControl(start)
		if err != nil {
			d.err = err
			return nil, err
		}
		if typ != controlStop {
			d.err = &FrameError{Frame: -1, Offset: start, Err: fmt.Errorf("%w: unexpected %s control frame (a file holds only START and STOP)", ErrNotFrameStream, controlName(typ))}
			return nil, d.err
		}
		// STOP must end the input (one stream per file).
		if _, err := d.r.Peek(1); err == nil {
			d.err = &FrameError{Frame: -1, Offset: d.off, Err: fmt.Errorf("%w: data after the STOP frame", ErrNotFrameStream)}
			return nil, d.err
		} else if !errors.Is(err, io.EOF) {
			d.err = &FrameError{Frame: -1, Offset: d.off, Err: fmt.Errorf("%w: %w", ErrRead, err)}
			return nil, d.err
		}
		d.err = io.EOF
		return nil, io.EOF
	}
	idx := d.frame
	d.frame++
	d.Frames++
	if int64(n) > int64(d.maxFrame) {
		// Skip it without buffering it.
		k, err := io.CopyN(io.Discard, d.r, int64(n))
		d.off += k
		if err != nil {
			d.err = d.short(err, idx, start, fmt.Sprintf("inside a data frame of %d bytes", n))
			return nil, d.err
		}
		d.BadFrames++
		return nil, &FrameError{Frame: idx, Offset: start, Err: fmt.Errorf("%w: length %d exceeds the limit of %d bytes", ErrBadDnstap, n, d.maxFrame)}
	}
	buf := make([]byte, n)
	if err := d.readFull(buf); err != nil {
		d.err = d.short(err, idx, start, fmt.Sprintf("inside a data frame of %d bytes", n))
		return nil, d.err
	}
	m, err := decodeMessage(buf, idx)
	if err != nil {
		d.BadFrames++
		return nil, &FrameError{Frame: idx, Offset: start, Err: fmt.Errorf("%w: %w", ErrBadDnstap, err)}
	}
	d.Messages++
	return m, nil
}

// readStart reads and checks the START control frame.
func (d *Decoder) readStart() error {
	var hdr [4]byte
	if err := d.readFull(hdr[:]); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return &FrameError{Frame: -1, Offset: 0, Err: ErrEmpty}
		case errors.Is(err, io.ErrUnexpectedEOF):
			return &FrameError{Frame: -1, Offset: 0, Err: fmt.Errorf("%w: shorter than a START frame", ErrNotFrameStream)}
		}
		return &FrameError{Frame: -1, Offset: 0, Err: fmt.Errorf("%w: %w", ErrRead, err)}
	}
	if binary.BigEndian.Uint32(hdr[:]) != 0 {
		return &FrameError{Frame: -1, Offset: 0, Err: fmt.Errorf("%w: does not begin with a control frame", ErrNotFrameStream)}
	}
	typ, types, err := d.readControl(0)
	if err != nil {
		// A START cut short says nothing about the stream: not a file.
		if errors.Is(err, ErrTruncated) {
			return &FrameError{Frame: -1, Offset: 0, Err: fmt.Errorf("%w: START frame cut short", ErrNotFrameStream)}
		}
		return err
	}
	if typ != controlStart {
		return &FrameError{Frame: -1, Offset: 0, Err: fmt.Errorf("%w: first control frame is %s, not START", ErrNotFrameStream, controlName(typ))}
	}
	switch {
	case len(types) == 0:
		return &FrameError{Frame: -1, Offset: 0, Err: fmt.Errorf("%w: START names no content type, want %q", ErrContentType, ContentType)}
	case len(types) > 1:
		return &FrameError{Frame: -1, Offset: 0, Err: fmt.Errorf("%w: START names %d content types, want exactly %q", ErrContentType, len(types), ContentType)}
	case types[0] != ContentType:
		return &FrameError{Frame: -1, Offset: 0, Err: fmt.Errorf("%w: %q, want %q", ErrContentType, types[0], ContentType)}
	}
	return nil
}

// readControl reads a control frame after its escape (start is the escape's
// offset) and returns its type and content types.
func (d *Decoder) readControl(start int64) (uint32, []string, error) {
	var lb [4]byte
	if err := d.readFull(lb[:]); err != nil {
		return 0, nil, d.short(err, -1, start, "inside a control frame length")
	}
	n := binary.BigEndian.Uint32(lb[:])
	if n < 4 || n > maxControlFrame {
		return 0, nil, &FrameError{Frame: -1, Offset: start, Err: fmt.Errorf("%w: control frame length %d outside 4..%d", ErrNotFrameStream, n, maxControlFrame)}
	}
	var buf [maxControlFrame]byte
	p := buf[:n]
	if err := d.readFull(p); err != nil {
		return 0, nil, d.short(err, -1, start, "inside a control frame")
	}
	typ := binary.BigEndian.Uint32(p)
	p = p[4:]
	var types []string
	for len(p) > 0 {
		if len(p) < 8 {
			return 0, nil, &FrameError{Frame: -1, Offset: start, Err: fmt.Errorf("%w: %s control frame: truncated field header", ErrNotFrameStream, controlName(typ))}
		}
		ft, fl := binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])
		p = p[8:]
		if uint64(fl) > uint64(len(p)) {
			return 0, nil, &FrameError{Frame: -1, Offset: start, Err: fmt.Errorf("%w: %s control frame: field length %d runs past the frame", ErrNotFrameStream, controlName(typ), fl)}
		}
		if ft != controlFieldContentTyp {
			return 0, nil, &FrameError{Frame: -1, Offset: start, Err: fmt.Errorf("%w: %s control frame: unknown field type %d", ErrNotFrameStream, controlName(typ), ft)}
		}
		types = append(types, string(p[:fl]))
		p = p[fl:]
	}
	if typ == controlStop && len(types) > 0 {
		return 0, nil, &FrameError{Frame: -1, Offset: start, Err: fmt.Errorf("%w: STOP control frame carries fields", ErrNotFrameStream)}
	}
	return typ, types, nil
}

// readFull reads len(p) bytes and advances the offset by what was read.
// It returns io.EOF only when nothing was read.
func (d *Decoder) readFull(p []byte) error {
	n, err := io.ReadFull(d.r, p)
	d.off += int64(n)
	return err
}

// short turns a read failure inside a frame into a FrameError.
func (d *Decoder) short(err error, frame int, start int64, where string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &FrameError{Frame: frame, Offset: start, Err: fmt.Errorf("%w: the input ends at offset %d, %s", ErrTruncated, d.off, where)}
	}
	return &FrameError{Frame: frame, Offset: start, Err: fmt.Errorf("%w: %w", ErrRead, err)}
}

func controlName(t uint32) string {
	if s, ok := controlNames[t]; ok {
		return s
	}
	return "unknown (type " + strconv.FormatUint(uint64(t), 10) + ")"
}
