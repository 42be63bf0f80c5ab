package reader

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"

	framestream "github.com/farsightsec/golang-framestream"
)

// Exit codes of "tapproxy read" (also listed in doc.go and the --help
// text; a test keeps the three in step).
const (
	ExitOK             = 0
	ExitUsage          = 1
	ExitIO             = 2
	ExitNotFrameStream = 3
	ExitTruncated      = 4
	ExitBadFrame       = 5
)

// exitCodes is the single source of the exit code descriptions.
var exitCodes = [...]struct {
	code    int
	meaning string
}{
	{ExitOK, "success: every frame decoded and the file ended with a STOP frame"},
	{ExitUsage, "usage error (bad flags or arguments)"},
	{ExitIO, "cannot open or read the input, write the output, or listen"},
	{ExitNotFrameStream, "not a Frame Streams file (this includes an empty file), or a content type other than protobuf:dnstap.Dnstap"},
	{ExitTruncated, "the file ends in the middle of a frame or without a STOP frame (every complete message is printed first)"},
	{ExitBadFrame, "a data frame is not a decodable Dnstap protobuf (its frame index is reported; the others are still printed)"},
}

// ExitCodesText is the exit code table as printed by --help and doc.go.
func ExitCodesText() string {
	var b strings.Builder
	for _, e := range exitCodes {
		fmt.Fprintf(&b, "  %d  %s\n", e.code, e.meaning)
	}
	return b.String()
}

// ExitCode maps an error from Decoder.Next to the command's exit code.
func ExitCode(err error) int {
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return ExitOK
	case errors.Is(err, ErrEmpty), errors.Is(err, ErrNotFrameStream), errors.Is(err, ErrContentType):
		return ExitNotFrameStream
	case errors.Is(err, ErrTruncated), errors.Is(err, ErrNoStop):
		return ExitTruncated
	case errors.Is(err, ErrBadDnstap):
		return ExitBadFrame
	}
	return ExitIO
}

// Options is a parsed "tapproxy read" command line.
type Options struct {
	Format Format
	// Exactly one of File, Unix and TCP is set.
	File string
	Unix string
	TCP  string
	// WriteFile (-w) also writes every received frame to a Frame Streams
	// file (collector mode only).
	WriteFile string
	// Pairs prints query/response pairs instead of messages (file only).
	Pairs        bool
	MaxFrameSize int

	// Ready, when set, is called with the listening address once the
	// collector accepts connections (tests and systemd notify use it).
	Ready func(net.Addr)
	// ConnDone, when set, is called as each producer connection ends.
	ConnDone func(ConnInfo)
}

const usageText = `usage:
  tapproxy read [--format text|json|yaml] [--pairs] FILE
  tapproxy read [--format text|json|yaml] --unix PATH [-w OUT]
  tapproxy read [--format text|json|yaml] --tcp ADDR [-w OUT]

Reads dnstap (Frame Streams, content type protobuf:dnstap.Dnstap) from FILE,
or collects it as the receiving end of bidirectional Frame Streams
connections (READY/ACCEPT/START, STOP/FINISH) on a unix socket or TCP
address until SIGINT or SIGTERM. Messages are printed as they are read:
text is dig-like, json is one object per line (for jq), yaml is one
document per message. --pairs matches queries with responses (same
endpoints, DNS ID and question, or the tapproxy annotation seq) and prints
each pair with its latency, then the unmatched messages.

flags:
`

// ParseArgs parses the arguments after "read". Flags may come before or
// after FILE. It writes usage and flag errors to stderr and returns
// flag.ErrHelp for -h/--help; any other error is a usage error (ExitUsage).
func ParseArgs(args []string, stderr io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("tapproxy read", flag.ContinueOnError)
	fs.SetOutput(stderr)
	format := fs.String("format", "text", "output format: text, json or yaml")
	fs.StringVar(&o.Unix, "unix", "", "collect from producers on this unix socket path")
	fs.StringVar(&o.TCP, "tcp", "", "collect from producers on this TCP address (host:port)")
	fs.StringVar(&o.WriteFile, "w", "", "with --unix/--tcp: also write the frames to this Frame Streams file")
	fs.BoolVar(&o.Pairs, "pairs", false, "print query/response pairs with latency instead of messages")
	fs.IntVar(&o.MaxFrameSize, "max-frame-size", DefaultMaxFrameSize, "largest data frame accepted, in bytes")
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nexit codes:\n"+ExitCodesText())
	}
	var files []string
	for {
		if err := fs.Parse(args); err != nil {
			return o, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		files = append(files, args[0])
		args = args[1:]
	}
	f, err := ParseFormat(*format)
	if err != nil {
		return o, usageErr(stderr, err.Error())
	}
	o.Format = f
	modes := 0
	for _, s := range []string{o.Unix, o.TCP} {
		if s != "" {
			modes++
		}
	}
	switch {
	case len(files) > 1:
		return o, usageErr(stderr, "more than one FILE")
	case len(files) == 1 && modes > 0:
		return o, usageErr(stderr, "give FILE or --unix or --tcp, not several")
	case modes > 1:
		return o, usageErr(stderr, "give --unix or --tcp, not both")
	case len(files) == 0 && modes == 0:
		return o, usageErr(stderr, "missing FILE (or --unix PATH / --tcp ADDR)")
	case o.WriteFile != "" && modes == 0:
		return o, usageErr(stderr, "-w needs --unix or --tcp")
	case o.Pairs && modes > 0:
		return o, usageErr(stderr, "--pairs needs a FILE")
	case o.MaxFrameSize <= 0:
		return o, usageErr(stderr, "--max-frame-size must be positive")
	}
	if len(files) == 1 {
		o.File = files[0]
	}
	return o, nil
}

func usageErr(stderr io.Writer, msg string) error {
	fmt.Fprintf(stderr, "tapproxy read: %s (see tapproxy read --help)\n", msg)
	return errors.New(msg)
}

// Run executes a parsed command and returns its exit code. In collector
// mode it runs until ctx is done (the caller cancels it on SIGINT/SIGTERM).
func Run(ctx context.Context, o Options, stdout, stderr io.Writer) int {
	if o.File != "" {
		return runFile(o, stdout, stderr)
	}
	return runCollector(ctx, o, stdout, stderr)
}

func runFile(o Options, stdout, stderr io.Writer) int {
	f, err := os.Open(o.File)
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy read: %v\n", err)
		return ExitIO
	}
	defer f.Close()
	d := NewDecoder(f, o.MaxFrameSize)
	p := NewPrinter(stdout, o.Format)
	var msgs []*Message
	var final error
	for {
		m, err := d.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintf(stderr, "tapproxy read: %s: %v\n", o.File, err)
			if errors.Is(err, ErrBadDnstap) {
				continue
			}
			final = err
			break
		}
		if o.Pairs {
			msgs = append(msgs, m)
			continue
		}
		if err := p.Message(m); err != nil {
			fmt.Fprintf(stderr, "tapproxy read: writing output: %v\n", err)
			return ExitIO
		}
	}
	if o.Pairs {
		pairs, uq, ur := Match(msgs)
		if err := p.Pairs(pairs, uq, ur); err != nil {
			fmt.Fprintf(stderr, "tapproxy read: writing output: %v\n", err)
			return ExitIO
		}
	}
	if final != nil {
		if ExitCode(final) == ExitTruncated {
			fmt.Fprintf(stderr, "tapproxy read: %s: %d complete messages were read before the error\n", o.File, d.Messages)
		}
		return ExitCode(final)
	}
	if d.BadFrames > 0 {
		fmt.Fprintf(stderr, "tapproxy read: %s: %d of %d data frames did not decode\n", o.File, d.BadFrames, d.Frames)
		return ExitBadFrame
	}
	return ExitOK
}

func runCollector(ctx context.Context, o Options, stdout, stderr io.Writer) int {
	// The logger and the frame handler both write to stderr from
	// connection goroutines.
	stderr = &lockedWriter{w: stderr}
	network, addr := "tcp", o.TCP
	if o.Unix != "" {
		network, addr = "unix", o.Unix
		if err := removeStaleSocket(o.Unix); err != nil {
			fmt.Fprintf(stderr, "tapproxy read: %v\n", err)
			return ExitIO
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, network, addr)
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy read: %v\n", err)
		return ExitIO
	}
	var (
		out     *os.File
		fw      *framestream.Writer
		failed  error // first output error; stops the collector
		printer = NewPrinter(stdout, o.Format)
	)
	if o.WriteFile != "" {
		out, err = os.Create(o.WriteFile)
		if err == nil {
			fw, err = framestream.NewWriter(out, &framestream.WriterOptions{ContentTypes: [][]byte{[]byte(ContentType)}})
		}
		if err != nil {
			ln.Close()
			if out != nil {
				out.Close()
			}
			fmt.Fprintf(stderr, "tapproxy read: -w %s: %v\n", o.WriteFile, err)
			return ExitIO
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := &Collector{
		MaxFrameSize: o.MaxFrameSize,
		Logger:       slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		ConnDone:     o.ConnDone,
		Handle: func(index int, frame []byte, m *Message, derr error) {
			if failed != nil {
				return
			}
			if fw != nil && frame != nil {
				if _, err := fw.WriteFrame(frame); err != nil {
					failed = fmt.Errorf("-w %s: %w", o.WriteFile, err)
				} else if err := fw.Flush(); err != nil {
					failed = fmt.Errorf("-w %s: %w", o.WriteFile, err)
				}
			}
			if derr != nil {
				fmt.Fprintf(stderr, "tapproxy read: data frame %d: %v\n", index, derr)
			} else if err := printer.Message(m); err != nil && failed == nil {
				failed = fmt.Errorf("writing output: %w", err)
			}
			if failed != nil {
				cancel()
			}
		},
	}
	fmt.Fprintf(stderr, "tapproxy read: collecting on %s %s\n", network, ln.Addr())
	if o.Ready != nil {
		o.Ready(ln.Addr())
	}
	serr := c.Serve(ctx, ln)
	code := ExitOK
	if fw != nil {
		// STOP makes the file complete (fstrm file format).
		if err := fw.Close(); err != nil && failed == nil {
			failed = fmt.Errorf("-w %s: %w", o.WriteFile, err)
		}
		if err := out.Close(); err != nil && failed == nil {
			failed = fmt.Errorf("-w %s: %w", o.WriteFile, err)
		}
	}
	st := c.Stats()
	fmt.Fprintf(stderr, "tapproxy read: %d connections (%d handshake failed, %d stopped, %d closed without STOP, %d aborted), %d messages, %d bad frames\n",
		st.Conns, st.HandshakeFailed, st.Stopped, st.ClosedWithoutStop, st.Aborted, st.Messages, st.BadFrames)
	switch {
	case serr != nil:
		fmt.Fprintf(stderr, "tapproxy read: %v\n", serr)
		code = ExitIO
	case failed != nil:
		fmt.Fprintf(stderr, "tapproxy read: %v\n", failed)
		code = ExitIO
	case st.BadFrames > 0:
		code = ExitBadFrame
	}
	return code
}

// removeStaleSocket removes a unix socket left by an earlier run (as
// fstrm_capture does), but never a file that is not a socket.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	return os.Remove(path)
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
