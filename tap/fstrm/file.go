package fstrm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for FileOptions.
const (
	DefaultBufferSize    = 64 << 10
	DefaultFileMode      = 0o640
	DefaultRetryInterval = time.Second
)

// rotatedTimeFormat is the UTC timestamp in rotated file names.
const rotatedTimeFormat = "20060102T150405Z"

// maxNameCollisions bounds the search for a free rotated name.
const maxNameCollisions = 10000

// FileOptions configures a FileWriter.
type FileOptions struct {
	// Path is the file written to. Its directory must exist. A file found
	// at Path when a file is opened is moved aside first (see doc.go).
	Path string
	// MaxSize rotates the file before a frame would make it longer than
	// MaxSize bytes (STOP included). A single frame larger than that still
	// gets a file of its own. 0: no rotation by size.
	MaxSize int64
	// MaxAge rotates the file once its first data frame is older than
	// MaxAge. It is checked on every WriteFrame and Flush. 0: no rotation by
	// age.
	MaxAge time.Duration
	// BufferSize is how many bytes of whole frames are gathered before one
	// write(2). Default DefaultBufferSize.
	BufferSize int
	// MaxFrameSize is the largest data frame accepted. Default
	// DefaultMaxFrameSize.
	MaxFrameSize int
	// Mode is the permission of new files, set with fchmod so that the
	// umask does not change it. Default 0640.
	Mode os.FileMode
	// RetryInterval is the least time between two recovery attempts after
	// a write error. Default DefaultRetryInterval.
	RetryInterval time.Duration
	// Logger receives rate-limited reports. Default: discard.
	Logger *slog.Logger
}

// FileStats are the FileWriter's counters. All are cumulative except Failing.
type FileStats struct {
	Frames      uint64 // data frames written to a file (write(2) returned)
	FramesLost  uint64 // frames accepted by WriteFrame that Close could not write
	WriteErrors uint64 // failed write(2) calls (disk full, I/O error)
	Recoveries  uint64 // returns from the failing state
	Rotations   uint64 // files closed with STOP and replaced (size, age, Reopen)
	Reopens     uint64 // Reopen requests carried out
	MovedAside  uint64 // complete files (ending in STOP) renamed to a rotated name
	MovedTorn   uint64 // files without STOP renamed to a ".torn" name
	Failing     bool   // WriteFrame currently refuses frames
}

// ErrUnavailable is wrapped by the error WriteFrame and Flush return while a
// FileWriter cannot write (after a write or open error, until a retry
// succeeds). The frame passed to WriteFrame was not accepted.
var ErrUnavailable = errors.New("fstrm: output unavailable")

// ErrClosed is returned by every call on a closed writer.
var ErrClosed = errors.New("fstrm: writer closed")

// ErrFrameSize is returned for an empty frame (a zero length would be read
// as a control-frame escape) or one longer than MaxFrameSize.
var ErrFrameSize = errors.New("fstrm: data frame empty or too large")

// unavailableError carries the cause of the failing state. It is built once
// per failure and returned for every refused frame, so refusing allocates
// nothing.
type unavailableError struct {
	path  string
	cause error
}

func (e *unavailableError) Error() string {
	return "fstrm: " + e.path + " unavailable: " + e.cause.Error()
}
func (e *unavailableError) Unwrap() []error { return []error{ErrUnavailable, e.cause} }

// fileSeams are the points tests replace: the clock and write(2).
type fileSeams struct {
	now   func() time.Time
	write func(f *os.File, b []byte) (int, error)
}

func defaultFileSeams() fileSeams {
	return fileSeams{now: time.Now, write: (*os.File).Write}
}

// FileWriter writes a dnstap Frame Streams file with rotation. WriteFrame,
// Flush and Close must be called from one goroutine; Reopen and Stats from
// any.
type FileWriter struct {
	opts  FileOptions
	log   *slog.Logger
	errs  *rateLog
	seams fileSeams
	start []byte // START frame with the content type
	stop  []byte // STOP frame

	// Owned by the writer goroutine.
	f          *os.File
	fi         os.FileInfo // of f, to recognise it at Path later
	off        int64       // bytes in f that are known good (START + whole frames)
	fileFrames int         // data frames in f
	firstFrame time.Time   // when the current file got its first frame
	buf        []byte      // whole frames not yet written
	bufFrames  int
	failing    bool
	failErr    error
	nextRetry  time.Time
	closed     bool

	reopen atomic.Bool

	frames, lost, writeErrors, recoveries     atomic.Uint64
	rotations, reopens, movedAside, movedTorn atomic.Uint64
	failingFlag                               atomic.Bool
}

// NewFileWriter opens opts.Path (moving aside any file already there) and
// writes the START frame. It fails if the first file cannot be created.
func NewFileWriter(opts FileOptions) (*FileWriter, error) {
	return newFileWriter(opts, defaultFileSeams())
}

func newFileWriter(opts FileOptions, seams fileSeams) (*FileWriter, error) {
	if opts.Path == "" {
		return nil, errors.New("fstrm: FileOptions.Path is empty")
	}
	if opts.MaxSize < 0 || opts.MaxAge < 0 || opts.BufferSize < 0 || opts.MaxFrameSize < 0 || opts.RetryInterval < 0 {
		return nil, errors.New("fstrm: negative FileOptions value")
	}
	if opts.BufferSize == 0 {
		opts.BufferSize = DefaultBufferSize
	}
	if opts.MaxFrameSize == 0 {
		opts.MaxFrameSize = DefaultMaxFrameSize
	}
	if opts.Mode == 0 {
		opts.Mode = DefaultFileMode
	}
	if opts.RetryInterval == 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	w := &FileWriter{
		opts:  opts,
		log:   orDiscard(opts.Logger),
		seams: seams,
		start: encodeControl(controlStart, ContentType),
		stop:  encodeControl(controlStop, ""),
		buf:   make([]byte, 0, opts.BufferSize),
	}
	w.errs = newRateLog(w.log, logInterval)
	if err := w.openFresh(); err != nil {
		return nil, err
	}
	return w, nil
}

// WriteFrame adds one data frame. nil means the frame was accepted: it is in
// the file or in the buffer, and a later failure to write it is counted in
// FramesLost. An error means it was not accepted (the caller counts the
// drop): ErrFrameSize, ErrClosed, or an error wrapping ErrUnavailable while
// the file cannot be written. It does not retain p.
func (w *FileWriter) WriteFrame(p []byte) error {
	if w.closed {
		return ErrClosed
	}
	if len(p) == 0 || len(p) > w.opts.MaxFrameSize {
		return ErrFrameSize
	}
	now := w.seams.now()
	if err := w.maintain(now); err != nil {
		return err
	}
	need := 4 + len(p)
	if w.opts.MaxSize > 0 && w.fileFrames+w.bufFrames > 0 &&
		w.off+int64(len(w.buf)+need+stopFrameLen) > w.opts.MaxSize {
		if err := w.rotate(now); err != nil {
			return err
		}
	}
	if len(w.buf) > 0 && len(w.buf)+need > w.opts.BufferSize {
		if err := w.flushBuf(now); err != nil {
			return err
		}
	}
	w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(len(p)))
	w.buf = append(w.buf, p...)
	w.bufFrames++
	if w.firstFrame.IsZero() {
		w.firstFrame = now
	}
	if len(w.buf) >= w.opts.BufferSize {
		// A frame at least as large as the buffer. If this write fails the
		// frame stays buffered and is retried: it was accepted.
		_ = w.flushBuf(now)
	}
	return nil
}

// Flush writes the buffered frames (whole frames only, in one write) and
// carries out a pending Reopen or age rotation. The caller should call it
// periodically (e.g. every second and whenever its queue runs empty): the
// writer has no timer of its own. While the writer is failing it returns the
// same error as WriteFrame; the buffered frames are kept for the next retry.
func (w *FileWriter) Flush() error {
	if w.closed {
		return ErrClosed
	}
	now := w.seams.now()
	if err := w.maintain(now); err != nil {
		return err
	}
	return w.flushBuf(now)
}

// Reopen asks the writer goroutine to close the current file with STOP and
// start a new one at Path (for SIGHUP after logrotate has renamed the file).
// It is safe from any goroutine and takes effect on the next WriteFrame or
// Flush. If nothing renamed the file, it is moved aside like a rotated file.
func (w *FileWriter) Reopen() { w.reopen.Store(true) }

// Close flushes, writes STOP and closes the file, which stays at Path. If the
// writer is failing it makes one last attempt, whatever the retry schedule;
// frames it cannot write are counted in FramesLost and reported in the
// error. Close is idempotent.
func (w *FileWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	now := w.seams.now()
	var err error
	if w.f == nil && w.bufFrames > 0 {
		err = w.openFresh()
	}
	if w.f != nil {
		err = w.finishFile(now)
	}
	if w.bufFrames > 0 {
		w.lost.Add(uint64(w.bufFrames))
		err = errors.Join(err, fmt.Errorf("fstrm: %d buffered frames lost closing %s", w.bufFrames, w.opts.Path))
		w.buf, w.bufFrames = w.buf[:0], 0
	}
	return err
}

// Stats returns the counters. Safe from any goroutine.
func (w *FileWriter) Stats() FileStats {
	return FileStats{
		Frames:      w.frames.Load(),
		FramesLost:  w.lost.Load(),
		WriteErrors: w.writeErrors.Load(),
		Recoveries:  w.recoveries.Load(),
		Rotations:   w.rotations.Load(),
		Reopens:     w.reopens.Load(),
		MovedAside:  w.movedAside.Load(),
		MovedTorn:   w.movedTorn.Load(),
		Failing:     w.failingFlag.Load(),
	}
}

// maintain runs before every WriteFrame and Flush: recovery (at most once
// per RetryInterval), a pending Reopen, and rotation by age.
func (w *FileWriter) maintain(now time.Time) error {
	if w.failing {
		if now.Before(w.nextRetry) {
			return w.failErr
		}
		w.nextRetry = now.Add(w.opts.RetryInterval)
		if w.reopen.Swap(false) {
			// The operator asked for a fresh file: give up on this one.
			w.reopens.Add(1)
			if w.f != nil {
				_ = w.finishFile(now)
			}
		}
		if w.f == nil {
			if err := w.openFresh(); err != nil {
				w.setFailing(now, err)
				return w.failErr
			}
		}
		if err := w.flushBuf(now); err != nil {
			return err
		}
		w.clearFailing()
	}
	if w.reopen.Swap(false) {
		w.reopens.Add(1)
		if err := w.rotate(now); err != nil {
			return err
		}
	}
	if w.opts.MaxAge > 0 && w.fileFrames+w.bufFrames > 0 && now.Sub(w.firstFrame) >= w.opts.MaxAge {
		if err := w.rotate(now); err != nil {
			return err
		}
	}
	return nil
}

// rotate closes the current file with STOP and opens a fresh one at Path;
// the file just closed is moved aside by openFresh. Frames still buffered
// (because writing them to the old file failed) go to the new file.
func (w *FileWriter) rotate(now time.Time) error {
	if w.f != nil {
		_ = w.finishFile(now) // failures are counted, logged and leave f nil
	}
	if err := w.openFresh(); err != nil {
		w.setFailing(now, err)
		return w.failErr
	}
	w.rotations.Add(1)
	if err := w.flushBuf(now); err != nil {
		return err
	}
	w.clearFailing()
	return nil
}

// flushBuf writes the buffer with one write call. On failure it cuts any
// partial write off the file again (so the file ends on a frame boundary),
// keeps the buffer for a retry and enters the failing state.
func (w *FileWriter) flushBuf(now time.Time) error {
	if len(w.buf) == 0 {
		return nil
	}
	if w.f == nil {
		return w.failErr
	}
	n, err := w.seams.write(w.f, w.buf)
	if err != nil {
		w.writeErrors.Add(1)
		if n > 0 {
			w.cutBack()
		}
		w.setFailing(now, fmt.Errorf("writing %s: %w", w.opts.Path, err))
		return w.failErr
	}
	w.off += int64(n)
	w.fileFrames += w.bufFrames
	w.frames.Add(uint64(w.bufFrames))
	w.buf, w.bufFrames = w.buf[:0], 0
	return nil
}

// cutBack truncates f to the last good offset after a partial write. The
// file is opened with O_APPEND, so the next write lands right after it. If
// even that fails, the file is given up: closed and, if it is still at Path,
// moved aside as torn.
func (w *FileWriter) cutBack() {
	if err := w.f.Truncate(w.off); err != nil {
		w.errs.logAt(w.seams.now(), slog.LevelError, "dnstap file: cannot truncate after a failed write, abandoning it",
			"path", w.opts.Path, "err", err)
		w.abandon()
	}
}

// abandon closes f without STOP and moves it to a ".torn" name if it is
// still the file at Path.
func (w *FileWriter) abandon() {
	_ = w.f.Close()
	w.f = nil
	if fi, err := os.Lstat(w.opts.Path); err == nil && os.SameFile(fi, w.fi) {
		_ = w.moveAside(fi)
	}
}

// finishFile flushes, appends STOP and closes f. If the frames cannot be
// written they stay buffered (for the next file) and STOP is still tried, so
// the file is complete. If STOP cannot be written the file is abandoned
// (moved aside as torn). f is nil afterwards.
func (w *FileWriter) finishFile(now time.Time) error {
	ferr := w.flushBuf(now)
	if w.f == nil {
		return ferr
	}
	n, err := w.seams.write(w.f, w.stop)
	if err != nil {
		w.writeErrors.Add(1)
		if n > 0 {
			_ = w.f.Truncate(w.off)
		}
		w.setFailing(now, fmt.Errorf("writing STOP to %s: %w", w.opts.Path, err))
		w.abandon()
		return w.failErr
	}
	w.off += int64(n)
	cerr := w.f.Close()
	w.f = nil
	if cerr != nil {
		cerr = fmt.Errorf("closing %s: %w", w.opts.Path, cerr)
	}
	return errors.Join(ferr, cerr)
}

// openFresh moves aside whatever is at Path, creates a new file there with
// O_EXCL (never appending to or truncating an existing file) and writes
// START.
func (w *FileWriter) openFresh() error {
	path := w.opts.Path
	if fi, err := os.Lstat(path); err == nil {
		if err := w.moveAside(fi); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("fstrm: checking %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND|syscall.O_CLOEXEC, w.opts.Mode)
	if err != nil {
		return fmt.Errorf("fstrm: creating %s: %w", path, err)
	}
	// A file we just created and that holds at most a partial START can be
	// removed again: nothing of value is in it.
	discard := func(err error) error {
		_ = f.Close()
		_ = os.Remove(path)
		return err
	}
	if err := f.Chmod(w.opts.Mode); err != nil {
		return discard(fmt.Errorf("fstrm: chmod %s: %w", path, err))
	}
	fi, err := f.Stat()
	if err != nil {
		return discard(fmt.Errorf("fstrm: stat %s: %w", path, err))
	}
	if _, err := w.seams.write(f, w.start); err != nil {
		w.writeErrors.Add(1)
		return discard(fmt.Errorf("fstrm: writing START to %s: %w", path, err))
	}
	w.f, w.fi = f, fi
	w.off = int64(len(w.start))
	w.fileFrames = 0
	w.firstFrame = time.Time{}
	if w.bufFrames > 0 {
		w.firstFrame = w.seams.now()
	}
	return nil
}

// moveAside renames the file at Path (described by fi) to
// Path.YYYYMMDDTHHMMSSZ[.N] when it ends with a STOP frame, else to
// Path.YYYYMMDDTHHMMSSZ[.N].torn. The time is the file's modification time
// in UTC, i.e. about when it was last written.
func (w *FileWriter) moveAside(fi os.FileInfo) error {
	path := w.opts.Path
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("fstrm: %s exists and is not a regular file", path)
	}
	complete := endsWithStop(path, w.stop)
	name, err := asideName(path, fi.ModTime(), complete)
	if err != nil {
		return err
	}
	if err := os.Rename(path, name); err != nil {
		return fmt.Errorf("fstrm: moving %s aside: %w", path, err)
	}
	if complete {
		w.movedAside.Add(1)
		w.log.Info("dnstap file moved aside", "path", path, "to", name)
	} else {
		w.movedTorn.Add(1)
		w.log.Warn("dnstap file without STOP frame moved aside as torn", "path", path, "to", name)
	}
	return nil
}

// asideName returns the first free name in the rotated naming scheme.
func asideName(path string, t time.Time, complete bool) (string, error) {
	base := path + "." + t.UTC().Format(rotatedTimeFormat)
	suffix := ""
	if !complete {
		suffix = ".torn"
	}
	for i := 0; i < maxNameCollisions; i++ {
		name := base
		if i > 0 {
			name += "." + strconv.Itoa(i)
		}
		name += suffix
		if _, err := os.Lstat(name); errors.Is(err, fs.ErrNotExist) {
			return name, nil
		}
	}
	return "", fmt.Errorf("fstrm: no free name for %s in %s", filepath.Base(base), filepath.Dir(path))
}

// endsWithStop reports whether the file at path ends with a STOP frame. It
// reads only the last 12 bytes: a file cut off mid-stream could end with
// those bytes by chance only if a data frame ended with them exactly at the
// cut, which we accept.
func endsWithStop(path string, stop []byte) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() < int64(len(stop)) {
		return false
	}
	tail := make([]byte, len(stop))
	if _, err := f.ReadAt(tail, fi.Size()-int64(len(stop))); err != nil && err != io.EOF {
		return false
	}
	return string(tail) == string(stop)
}

func (w *FileWriter) setFailing(now time.Time, err error) {
	w.failing = true
	w.failingFlag.Store(true)
	w.nextRetry = now.Add(w.opts.RetryInterval)
	w.failErr = &unavailableError{path: w.opts.Path, cause: err}
	w.errs.logAt(now, slog.LevelError, "dnstap file output failing; refusing frames until a retry succeeds",
		"path", w.opts.Path, "err", err, "retry_every", w.opts.RetryInterval)
}

func (w *FileWriter) clearFailing() {
	if !w.failing {
		return
	}
	w.failing = false
	w.failingFlag.Store(false)
	w.failErr = nil
	w.recoveries.Add(1)
	w.errs.reset()
	w.log.Info("dnstap file output recovered", "path", w.opts.Path)
}
