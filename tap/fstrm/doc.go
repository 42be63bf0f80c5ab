// Package fstrm owns the Frame Streams destinations of dnstap: a rotating
// file (FileWriter) and a unix/TCP collector connection (SocketWriter), both
// with content type "protobuf:dnstap.Dnstap" (ContentType). Both satisfy
// tap.FrameWriter: WriteFrame, Flush and Close are called from one writer
// goroutine; Reopen and Stats are safe from any goroutine.
//
// It must never block the caller for long: every socket write carries a
// deadline (on Linux a socket write is first tried as a non-blocking send,
// and only a full socket buffer makes it wait, in the netpoller, counted in
// SocketStats.WriteWaits), dialling happens off the writer goroutine, a disconnected or
// failing writer refuses frames at once, and retries are rate-limited. It
// must never write a partial frame into a file it closes, append to a file
// it did not create, or delete a file holding frames.
//
// # Frame Streams
//
// Framing follows https://farsightsec.github.io/fstrm/: a data frame is a
// 32-bit big-endian length and the payload; a control frame is escaped by a
// zero length, then its own 32-bit length and body (type ACCEPT=1, START=2,
// STOP=3, READY=4, FINISH=5; field 1 = content type). A file is START(content
// type), data frames, STOP. A socket stream is the bidirectional handshake:
// we send READY(content type), expect ACCEPT naming our content type, send
// START, data frames, then STOP and wait for FINISH.
//
// What golang-framestream (v0.3.0) is used for, and why not more: its
// ControlFrame encoder builds the READY, START and STOP frames (once per
// writer) and its constants name the frame types, and the tests read files
// with its Reader. Its Writer is not used: it frames through a bufio.Writer
// that flushes whenever its buffer fills, i.e. in the middle of a frame (a
// kill -9 then leaves a torn frame, and a write error leaves an unknown part
// of a frame written); it sets deadlines only on the handshake; and its
// handshake decoder allocates per field and cannot say why a peer was
// rejected. So the data framing (a 4-byte length appended to a buffer of
// whole frames) and the handshake reader (readControl/parseControl: bounded
// to 512 bytes, no read past the frame, typed errors, fuzzed) are our own.
// A zero-length data frame would read as an escape, so it is refused
// (ErrFrameSize), as is one above MaxFrameSize (default 1 MiB, the readers'
// default).
//
// # Files
//
// Each file starts with START and, after Close, rotation or Reopen, ends with
// STOP. Frames are gathered in a buffer and written with one write(2) of
// whole frames (when the buffer is full, on Flush, on rotation and on Close),
// so after kill -9 the file holds only complete frames (it lacks STOP). The
// writer has no timer: the caller calls Flush periodically; age rotation and
// Reopen are carried out on the next WriteFrame or Flush. Nothing is fsynced.
//
// Rotation: before a frame would make the file exceed MaxSize (STOP
// included), and once the file's first frame is older than MaxAge. A file
// with no data frame is never rotated by age. The closed file is renamed
//
//	PATH.YYYYMMDDTHHMMSSZ        e.g. dns.fstrm.20261127T123456Z
//	PATH.YYYYMMDDTHHMMSSZ.N      N = 1, 2, ... when that name is taken
//
// where the time is the file's modification time in UTC (about when it was
// closed); within one second, a larger N is a later file. Reopen (SIGHUP,
// after logrotate renamed the file) closes the current file with STOP
// wherever it now is and creates a new one at PATH; if nothing renamed it,
// it is rotated as above.
//
// Opening never appends or truncates: the file is created with O_EXCL. If
// something is at PATH (a previous run's file), it is moved aside first: a
// regular file ending in a STOP frame to the rotated name above, any other
// regular file (killed writer, torn last frame, empty) to
// PATH.YYYYMMDDTHHMMSSZ[.N].torn. Anything else at PATH (directory, symlink,
// device) is an error. Files are created with mode 0640 (fchmod, so the
// umask does not narrow it).
//
// Write errors (disk full, EIO): a partial write is cut off again with
// ftruncate to the last whole frame (the file is O_APPEND, so writing
// resumes there), the unwritten frames stay buffered, and the writer enters
// the failing state: WriteFrame and Flush return an error wrapping
// ErrUnavailable at once (the frame is not accepted; the caller counts the
// drop), and at most once per RetryInterval (default 1 s) a call retries,
// reopening a fresh file if the old one had to be given up. Errors are
// logged at most once per 10 s. If the truncation fails, or STOP cannot be
// written when a file is finished, the file is closed without STOP and moved
// aside as .torn. Frames accepted but never written (Close while failing)
// are counted in Stats().FramesLost.
//
// # Sockets
//
// One connector goroutine per connection (Connections, default 1) dials and
// handshakes under HandshakeTimeout (default 2 s) and hands the connection to
// the writer goroutine; WriteFrame never dials and returns ErrNotConnected
// at once while no connection is up. After a failed attempt the connector
// waits a backoff that doubles from BackoffMin (50 ms) to BackoffMax
// (500 ms), so a returning collector is found within about 0.5 s; the backoff
// resets to BackoffMin only after a connection that lived at least
// BackoffMax. A collector that does not answer READY with an ACCEPT naming
// our content type, sends a control frame longer than 512 bytes, garbage,
// or nothing within HandshakeTimeout is dropped, counted by cause
// (Stats().Handshake) and retried with backoff.
//
// Frames are buffered per connection and written when the buffer fills or
// on Flush, each write under WriteTimeout (default 2 s; Flush uses one
// deadline for all connections). A write that fails or times out (stalled
// collector) drops the connection: the frame in hand is reported to the
// caller as an error, frames buffered earlier are counted in FramesLost. A
// reader goroutine per connection notices EOF or unexpected bytes from the
// collector at once. Frames already handed to the kernel when the collector
// dies are lost without a count: Frame Streams has no acknowledgements.
// Close writes STOP on every connection and waits up to FinishTimeout for
// FINISH, all connections in parallel.
package fstrm
