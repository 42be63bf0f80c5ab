// Command responder is the reference upstream for tapproxy's benchmarks
// (package bench/responder): it answers every name under a test zone with
// fixed data on N SO_REUSEPORT UDP sockets, loopback only.
//
//	responder --listen 127.0.0.1:15400 --sockets 2 --ready-file /tmp/r.ready
//
// Once every socket is bound it logs a line containing `msg=ready` with the
// bound address on stderr and, with --ready-file, writes the address (and a
// newline) to that file by an atomic rename. On SIGINT/SIGTERM it logs
// `msg="final counters"` with one key=value per counter and exits 0. Exit
// status 2 means bad flags, 1 a failure to listen or serve.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/tapproxy/tapproxy/bench/responder"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: it serves until ctx is done and returns
// the exit status.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("responder", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:15400", "UDP `ADDR:PORT` to answer on; loopback only (port 0 picks one)")
	sockets := fs.Int("sockets", 1, "number of SO_REUSEPORT sockets, one worker goroutine each")
	batch := fs.Int("batch", 64, "datagrams per recvmmsg/sendmmsg")
	zone := fs.String("zone", responder.DefaultZone, "zone to answer; names under nx.ZONE get NXDOMAIN")
	rcvbuf := fs.Int("rcvbuf", 4<<20, "socket receive buffer `BYTES` (0: kernel default)")
	sndbuf := fs.Int("sndbuf", 4<<20, "socket send buffer `BYTES` (0: kernel default)")
	readyFile := fs.String("ready-file", "", "write the bound address to this `FILE` once ready")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if fs.NArg() != 0 {
		log.Error("unexpected arguments", "args", fs.Args())
		return 2
	}
	ap, err := netip.ParseAddrPort(*listen)
	if err != nil || !ap.Addr().IsLoopback() {
		log.Error("--listen must be a loopback ADDR:PORT", "listen", *listen, "err", err)
		return 2
	}
	if *sockets < 1 || *sockets > 1024 || *batch < 1 || *batch > 1024 {
		log.Error("--sockets and --batch must be in 1..1024", "sockets", *sockets, "batch", *batch)
		return 2
	}
	if _, err := responder.NewZone(*zone); err != nil {
		log.Error("bad --zone", "err", err)
		return 2
	}

	s, err := responder.Listen(responder.Config{
		Addr: ap.String(), Zone: *zone, Sockets: *sockets, Batch: *batch,
		RcvBuf: *rcvbuf, SndBuf: *sndbuf, Logger: log,
	})
	if err != nil {
		log.Error("listen failed", "err", err)
		return 1
	}
	rcv, snd, err := s.Buffers()
	if err != nil {
		log.Warn("reading socket buffer sizes", "err", err)
	}
	if *readyFile != "" {
		if err := writeAtomic(*readyFile, s.Addr().String()+"\n"); err != nil {
			log.Error("writing --ready-file", "err", err)
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			_ = s.Serve(cctx) // closes the sockets
			return 1
		}
	}
	log.Info("ready", "addr", s.Addr().String(), "sockets", *sockets, "batch", *batch,
		"zone", *zone, "rcvbuf", rcv, "sndbuf", snd)
	serveErr := s.Serve(ctx)
	log.Info("final counters", s.Counters().Pairs()...)
	if serveErr != nil {
		log.Error("serve failed", "err", serveErr)
		return 1
	}
	return 0
}

// writeAtomic writes data to path through a temporary file and a rename, so
// a reader polling for path never sees it half written.
func writeAtomic(path, data string) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".ready-*")
	if err != nil {
		return err
	}
	_, werr := f.WriteString(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	return os.Rename(f.Name(), path)
}
