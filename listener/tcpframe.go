package listener

import (
	"errors"
	"io"
	"sync"

	"github.com/tapproxy/tapproxy/internal/dnswire"
)

// DNS over TCP frames every message with a two-octet length (RFC 1035
// §4.2.2). A frameReader turns a byte stream that arrives in arbitrary
// pieces into those messages. It reads exactly the bytes it needs (two for
// the length, then the length), never ahead, so:
//   - each kernel receive timestamp it gets belongs to bytes of the message
//     being assembled (see the TCP section of doc.go for what the stamp of a
//     message means);
//   - between messages it holds no buffer at all: the message buffer is taken
//     from a pool when a length has arrived and handed to the caller with
//     the message (bounded memory whatever clients do).

// ErrShortLength is returned when a length prefix announces fewer than the
// 12 octets of a DNS header: nothing that short is a DNS message, and a
// zero length in particular would otherwise be a free way to keep a
// connection busy.
var ErrShortLength = errors.New("listener: TCP message length under the 12-byte DNS header")

// frameSource is the syscall boundary of a frameReader: one read of at most
// len(p) bytes (at least one unless err is set), with the kernel receive
// stamp of that read (0 when none). started reports whether a message is in
// progress (a length byte has been read), so the source can apply the
// per-message deadline instead of the idle one.
type frameSource interface {
	readStamped(p []byte, started bool) (n int, stamp int64, err error)
}

// frameReader assembles length-prefixed messages. The zero value is ready.
type frameReader struct {
	hdr   [2]byte
	hn    int     // length octets read so far
	buf   *[]byte // message buffer while a body is read; nil otherwise
	need  int     // announced length
	got   int     // body octets read so far
	stamp int64   // stamp of the last read that delivered body octets
}

// inMessage reports whether a message has started (a length octet was read).
func (f *frameReader) inMessage() bool { return f.hn > 0 }

// next reads until one message is complete and returns it with the stamp of
// the read that completed it. The message lives in *buf, which the caller
// must give back with putMsgBuf once done with msg. A clean end of stream
// between messages is io.EOF; one inside a message is io.ErrUnexpectedEOF.
// After any error the reader must not be used again (the stream is out of
// step), except that a deadline error may be retried: the partial state is
// kept.
func (f *frameReader) next(src frameSource) (msg []byte, buf *[]byte, stamp int64, err error) {
	for f.hn < 2 {
		n, _, err := src.readStamped(f.hdr[f.hn:], f.hn > 0)
		f.hn += n
		if err != nil {
			return nil, nil, 0, f.eof(err)
		}
	}
	if f.buf == nil {
		l := int(f.hdr[0])<<8 | int(f.hdr[1])
		if l < dnswire.HeaderLen {
			return nil, nil, 0, ErrShortLength
		}
		f.buf, f.need, f.got, f.stamp = getMsgBuf(l), l, 0, 0
	}
	for f.got < f.need {
		n, st, err := src.readStamped((*f.buf)[f.got:f.need], true)
		f.got += n
		if n > 0 {
			f.stamp = st
		}
		if err != nil {
			return nil, nil, 0, f.eof(err)
		}
	}
	msg, buf, stamp = (*f.buf)[:f.need], f.buf, f.stamp
	f.buf, f.hn, f.need, f.got = nil, 0, 0, 0
	return msg, buf, stamp, nil
}

func (f *frameReader) eof(err error) error {
	if err == io.EOF && f.hn > 0 {
		return io.ErrUnexpectedEOF
	}
	return err
}

// release gives back a half-read message's buffer (connection closing).
func (f *frameReader) release() {
	if f.buf != nil {
		putMsgBuf(f.buf)
		f.buf = nil
	}
}

// Message buffers come in two classes: almost every query fits 512 octets
// (RFC 1035 §2.3.4 sizes, plus EDNS and a cookie); anything longer gets a
// buffer of the largest possible message. Pools hold *[]byte so Get and Put
// do not allocate.
const (
	smallMsg = 512
	largeMsg = 65535
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallMsg); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, largeMsg); return &b }}
)

func getMsgBuf(n int) *[]byte {
	if n <= smallMsg {
		return smallPool.Get().(*[]byte)
	}
	return largePool.Get().(*[]byte)
}

func putMsgBuf(b *[]byte) {
	switch cap(*b) {
	case smallMsg:
		smallPool.Put(b)
	case largeMsg:
		largePool.Put(b)
	}
}
