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
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/listener"
	"github.com/tapproxy/tapproxy/upstream"
)

// listFlag is a repeatable flag; each use may also hold a comma list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

type serveFlags struct {
	listen, upstreams, allow listFlag
	aclAction                string
	workers                  int
	timeout                  time.Duration
	maxInflight              int
	upSockets                int
	servfail                 bool
	rcvbuf, sndbuf           int
	logLevel                 string
	policy, allDown          string
	failThreshold, rise      int
	probeInterval            time.Duration
	probeAlways              bool
	probeName                string
	dnstap                   dnstapFlags
}

func parseAddrPorts(what string, list []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, s := range list {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, fmt.Errorf("--%s %q: want IP:PORT or [IPv6]:PORT: %w", what, s, err)
		}
		out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	return out, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f serveFlags
	fs := flag.NewFlagSet("tapproxy serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(&f.listen, "listen", "client-facing `ADDR:PORT` (repeatable; IPv4 or [IPv6]:port)")
	fs.Var(&f.upstreams, "upstream", "upstream DNS server `ADDR:PORT[;weight=N][;proxy-v2]` (repeatable, in order; required)")
	fs.StringVar(&f.policy, "policy", "first-available", "upstream policy: first-available, round-robin, least-outstanding or consistent-hash")
	fs.IntVar(&f.failThreshold, "health-fails", upstream.DefaultFailThreshold, "consecutive timeouts/errors that mark an upstream down")
	fs.IntVar(&f.rise, "health-rise", upstream.DefaultRiseThreshold, "consecutive good probes that bring a down upstream back")
	fs.DurationVar(&f.probeInterval, "probe-interval", upstream.DefaultProbeInterval, "active probe interval for down upstreams")
	fs.BoolVar(&f.probeAlways, "probe-always", false, "probe every upstream every interval, not only down ones")
	fs.StringVar(&f.probeName, "probe-name", ".", "probe question name (type NS)")
	fs.StringVar(&f.allDown, "all-down", "least-bad", "when every upstream is down: least-bad (keep trying the one that failed longest ago) or servfail (answer SERVFAIL at once)")
	fs.Var(&f.allow, "allow", "client ACL `CIDR` list (repeatable; \"any\" allows all); default: loopback, RFC 1918, RFC 6598, link-local, ULA")
	fs.StringVar(&f.aclAction, "acl-action", "refuse", "for clients outside the ACL: refuse (REFUSED, never larger than the query) or drop")
	fs.IntVar(&f.workers, "workers", runtime.NumCPU(), "UDP sockets (SO_REUSEPORT) and workers per listen address")
	fs.DurationVar(&f.timeout, "timeout", upstream.DefaultTimeout, "per-query upstream timeout")
	fs.IntVar(&f.maxInflight, "max-inflight", upstream.DefaultMaxInflight, "in-flight queries per worker (a full table is a counted drop)")
	fs.IntVar(&f.upSockets, "upstream-sockets", upstream.DefaultSocketsPerUpstream, "upstream UDP sockets per worker, each on a random source port")
	fs.BoolVar(&f.servfail, "servfail-on-timeout", false, "answer SERVFAIL when the upstream times out (default: send nothing)")
	fs.IntVar(&f.rcvbuf, "rcvbuf", 0, "socket receive buffer `BYTES` (SO_RCVBUFFORCE when permitted; 0: kernel default)")
	fs.IntVar(&f.sndbuf, "sndbuf", 0, "socket send buffer `BYTES` (0: kernel default)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	f.dnstap.register(fs)
	applyTCP := registerTCPFlags(fs) // serve_tcp.go
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tapproxy: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		fmt.Fprintf(stderr, "tapproxy: --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	cfg, err := f.config(log)
	if err == nil {
		err = applyTCP(&cfg) // serve_tcp.go
	}
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy: %v\n", err)
		return 2
	}
	dt, err := f.dnstap.build(log)
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy: %v\n", err)
		return 2
	}
	cfg.Sink = dt.sink()
	srv, err := server.New(ctx, cfg)
	if err != nil {
		log.Error("start-up failed", "err", err)
		_, _ = dt.shutdown()
		if errors.Is(err, server.ErrLoop) {
			return 2 // a configuration error, not a runtime one
		}
		return 1
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Info("SIGHUP: reopening the dnstap file")
			dt.reopen()
		}
	}()
	runErr := srv.Run(ctx)
	// Every transaction has been handed to the sink once Run returns:
	// drain the dnstap queue, then report everything in one line.
	dtAttrs, dtErr := dt.shutdown()
	log.Info("final counters", append(srv.Counters().Attrs(), dtAttrs...)...)
	if dtErr != nil {
		log.Warn("dnstap shutdown", "err", dtErr)
	}
	if runErr != nil {
		log.Error("stopped with errors", "err", runErr)
		return 1
	}
	return 0
}

func (f *serveFlags) config(log *slog.Logger) (server.Config, error) {
	var cfg server.Config
	var err error
	if len(f.upstreams) == 0 {
		return cfg, server.ErrNoUpstream
	}
	if len(f.listen) == 0 {
		return cfg, server.ErrNoListen
	}
	if cfg.Listen, err = parseAddrPorts("listen", f.listen); err != nil {
		return cfg, err
	}
	for _, u := range f.upstreams {
		sp, err := upstream.ParseSpec(u)
		if err != nil {
			return cfg, err
		}
		cfg.UpstreamSpecs = append(cfg.UpstreamSpecs, sp)
		cfg.Upstreams = append(cfg.Upstreams, sp.Addr)
	}
	if cfg.Policy, err = upstream.ParsePolicy(f.policy); err != nil {
		return cfg, err
	}
	allDown, err := upstream.ParseAllDown(f.allDown)
	if err != nil {
		return cfg, err
	}
	if f.failThreshold < 1 || f.rise < 1 || f.probeInterval <= 0 {
		return cfg, fmt.Errorf("--health-fails, --health-rise and --probe-interval must be positive")
	}
	cfg.Health = upstream.HealthConfig{FailThreshold: f.failThreshold, RiseThreshold: f.rise,
		ProbeInterval: f.probeInterval, ProbeAlways: f.probeAlways, ProbeName: f.probeName, AllDown: allDown}
	allow := []string(f.allow)
	if len(allow) == 0 {
		allow = listener.DefaultAllow
	}
	if cfg.ACL, err = listener.ParseACL(allow); err != nil {
		return cfg, err
	}
	if cfg.ACLAction, err = listener.ParseACLAction(f.aclAction); err != nil {
		return cfg, err
	}
	if f.workers < 1 {
		return cfg, fmt.Errorf("--workers %d: want at least 1", f.workers)
	}
	if f.timeout <= 0 {
		return cfg, fmt.Errorf("--timeout %v: want a positive duration", f.timeout)
	}
	if f.maxInflight < 1 || f.maxInflight > 65535 {
		return cfg, fmt.Errorf("--max-inflight %d: want 1..65535", f.maxInflight)
	}
	if f.upSockets < 1 || f.upSockets > 256 {
		return cfg, fmt.Errorf("--upstream-sockets %d: want 1..256", f.upSockets)
	}
	cfg.Workers = f.workers
	cfg.Socket = listener.Options{RcvBuf: f.rcvbuf, SndBuf: f.sndbuf}
	cfg.Upstream = upstream.Config{Timeout: f.timeout, MaxInflight: f.maxInflight,
		SocketsPerUpstream: f.upSockets, ServfailOnTimeout: f.servfail,
		Socket: listener.Options{RcvBuf: f.rcvbuf, SndBuf: f.sndbuf}}
	cfg.Log = log
	cfg.Ready = func(s *server.Server) {
		attrs := []any{"listen", fmt.Sprint(s.Addrs()), "upstreams", fmt.Sprint(cfg.Upstreams), "workers", cfg.Workers}
		log.Info("ready", attrs...)
	}
	return cfg, nil
}
