package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/tap"
	"github.com/tapproxy/tapproxy/tap/fstrm"
)

// dnstapFlags are the dnstap output settings of the serve command.
type dnstapFlags struct {
	file, unix, tcp string
	types           tap.TypeSet
	sample          uint64
	identity        string
	rotateSize      int64
	rotateAge       time.Duration
	connections     int
	queueEntries    int
	queueBytes      int
	drain           time.Duration
}

func (d *dnstapFlags) register(fs *flag.FlagSet) {
	d.types = tap.DefaultTypes
	fs.StringVar(&d.file, "dnstap-file", "", "write dnstap to this Frame Streams `FILE` (rotated on size/age; reopened on SIGHUP)")
	fs.StringVar(&d.unix, "dnstap-unix", "", "send dnstap to a Frame Streams collector on this unix socket `PATH`")
	fs.StringVar(&d.tcp, "dnstap-tcp", "", "send dnstap to a Frame Streams collector at TCP `ADDR:PORT`")
	fs.Var(&d.types, "dnstap-types", "dnstap messages to log: client_query, client_response, forwarder_query, forwarder_response, client, forwarder or all")
	fs.Uint64Var(&d.sample, "dnstap-sample", 1, "log one transaction in `N` (1: all)")
	fs.StringVar(&d.identity, "dnstap-identity", "", "dnstap identity (default: the host name)")
	fs.Int64Var(&d.rotateSize, "dnstap-rotate-size", 0, "rotate the dnstap file at this many `BYTES` (0: never)")
	fs.DurationVar(&d.rotateAge, "dnstap-rotate-age", 0, "rotate the dnstap file after this long (0: never)")
	fs.IntVar(&d.connections, "dnstap-connections", 1, "parallel connections to the collector (unix/tcp)")
	fs.IntVar(&d.queueEntries, "dnstap-queue-entries", tap.DefaultQueueEntries, "dnstap queue bound in transactions (a full queue drops and counts)")
	fs.IntVar(&d.queueBytes, "dnstap-queue-bytes", tap.DefaultQueueBytes, "dnstap queue bound in message bytes")
	fs.DurationVar(&d.drain, "dnstap-drain", tap.DefaultDrainTimeout, "at shutdown, how long to wait for queued records to be written")
}

// dnstapOutput is the running dnstap pipeline, or nil when logging is off.
type dnstapOutput struct {
	logger *tap.Logger
	zones  *annotate.ZoneCache
	file   *fstrm.FileWriter
	sock   *fstrm.SocketWriter
	drain  time.Duration
}

// validate checks the dnstap settings without opening anything.
func (d *dnstapFlags) validate() error {
	n := 0
	for _, s := range []string{d.file, d.unix, d.tcp} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return errors.New("give at most one of --dnstap-file, --dnstap-unix, --dnstap-tcp")
	}
	if d.sample == 0 {
		return errors.New("--dnstap-sample must be at least 1")
	}
	if d.rotateSize < 0 || d.rotateAge < 0 {
		return errors.New("--dnstap-rotate-size and --dnstap-rotate-age must not be negative")
	}
	if d.file != "" {
		if st, err := os.Stat(filepath.Dir(d.file)); err != nil || !st.IsDir() {
			return fmt.Errorf("--dnstap-file %s: its directory does not exist", d.file)
		}
	}
	if d.tcp != "" {
		if _, err := netip.ParseAddrPort(d.tcp); err != nil {
			return fmt.Errorf("--dnstap-tcp %q: want IP:PORT: %w", d.tcp, err)
		}
	}
	return nil
}

func (d *dnstapFlags) build(log *slog.Logger) (*dnstapOutput, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	if d.file == "" && d.unix == "" && d.tcp == "" {
		return nil, nil
	}
	id := d.identity
	if id == "" {
		id, _ = os.Hostname()
	}
	out := &dnstapOutput{drain: d.drain}
	var w tap.FrameWriter
	dlog := log.With("component", "dnstap")
	var err error
	switch {
	case d.file != "":
		out.file, err = fstrm.NewFileWriter(fstrm.FileOptions{Path: d.file, MaxSize: d.rotateSize, MaxAge: d.rotateAge, Logger: dlog})
		w = out.file
	case d.unix != "":
		out.sock, err = fstrm.NewSocketWriter(fstrm.SocketOptions{Network: "unix", Address: d.unix, Connections: d.connections, Logger: dlog})
		w = out.sock
	default:
		out.sock, err = fstrm.NewSocketWriter(fstrm.SocketOptions{Network: "tcp", Address: d.tcp, Connections: d.connections, Logger: dlog})
		w = out.sock
	}
	if err != nil {
		return nil, fmt.Errorf("dnstap output: %w", err)
	}
	out.zones = annotate.NewZoneCache(0)
	enc := tap.NewEncoder(tap.EncoderOptions{Identity: []byte(id), Version: []byte("tapproxy " + version), Types: d.types, Zones: out.zones})
	out.logger = tap.NewLogger(tap.LoggerOptions{QueueEntries: d.queueEntries, QueueBytes: d.queueBytes,
		SampleRate: d.sample, DrainTimeout: d.drain}, enc, w, dlog)
	out.logger.Start()
	return out, nil
}

// sink returns the txn.Sink for the server (Discard when logging is off).
func (o *dnstapOutput) sink() txn.Sink {
	if o == nil {
		return txn.Discard{}
	}
	return o.logger
}

// zoneCache returns the query_zone cache, or nil when logging is off.
func (o *dnstapOutput) zoneCache() *annotate.ZoneCache {
	if o == nil {
		return nil
	}
	return o.zones
}

// reopen handles SIGHUP: a new file at the same path (logrotate style).
func (o *dnstapOutput) reopen() {
	if o != nil && o.file != nil {
		o.file.Reopen()
	}
}

// shutdown drains the queue (bounded), sends STOP (and waits for FINISH on
// sockets), and returns the counters for the final log line.
func (o *dnstapOutput) shutdown() (attrs []any, err error) {
	if o == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.drain+3*time.Second)
	defer cancel()
	err = o.logger.Shutdown(ctx)
	// On a drain timeout Shutdown returns while the writer may still be in
	// its last WriteFrame and has yet to Close (STOP/FINISH): wait for it,
	// bounded by the writers' own deadlines, so the counters are final and
	// the file or collector gets its STOP before the process exits.
	select {
	case <-o.logger.Done():
	case <-time.After(10 * time.Second):
	}
	return o.attrs(), err
}

func (o *dnstapOutput) attrs() []any {
	s := o.logger.Stats()
	a := []any{
		"dnstap_submitted", s.Submitted, "dnstap_sampled_out", s.SampledOut, "dnstap_produced", s.Produced,
		"dnstap_written", s.Written, "dnstap_dropped_queue_full", s.DroppedQueueFull,
		"dnstap_dropped_too_large", s.DroppedTooLarge, "dnstap_dropped_write_error", s.DroppedWriteError,
		"dnstap_dropped_shutdown", s.DroppedShutdown, "dnstap_dropped_panic", s.DroppedPanic,
	}
	switch {
	case o.file != nil:
		fs := o.file.Stats()
		a = append(a, "dnstap_lost_after_write", fs.FramesLost, "dnstap_file_rotations", fs.Rotations, "dnstap_file_write_errors", fs.WriteErrors)
	case o.sock != nil:
		ss := o.sock.Stats()
		a = append(a, "dnstap_lost_after_write", ss.FramesLost, "dnstap_write_waits", ss.WriteWaits, "dnstap_connects", ss.Connects, "dnstap_connected", ss.Connected)
	}
	return a
}
