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
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/tapproxy/tapproxy/internal/config"
	"github.com/tapproxy/tapproxy/internal/privdrop"
	"github.com/tapproxy/tapproxy/internal/sdnotify"
	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/listener"
	"github.com/tapproxy/tapproxy/upstream"
)

// listFlag is a repeatable flag; each use may also hold a comma list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

// List implements config.Lister, so the config file takes a YAML list.
func (l *listFlag) List() []string { return *l }
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
	portRotate               int
	servfail                 bool
	rcvbuf, sndbuf           int
	logLevel                 string
	policy, allDown          string
	failThreshold, rise      int
	probeInterval            time.Duration
	probeAlways              bool
	probeName                string
	dnstap                   dnstapFlags
	metrics                  metricsFlags
	configPath               string
	configData               []byte // the config file as last read (for SIGHUP diffs)
	checkOnly                bool
	user, group              string
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

// newServeFlags registers every serve flag on a fresh FlagSet. The config
// file's keys are these flag names (internal/config).
func newServeFlags(stderr io.Writer) (*serveFlags, *flag.FlagSet, func(*server.Config) error) {
	f := &serveFlags{}
	fs := flag.NewFlagSet("tapproxy serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.configPath, "config", "", "read settings from this YAML `FILE` (keys are these flag names; flags given here win)")
	fs.BoolVar(&f.checkOnly, "check-config", false, "validate the configuration and exit without binding any socket")
	fs.StringVar(&f.user, "user", "", "after binding, drop root privileges to this `USER` (all threads, groups cleared)")
	fs.StringVar(&f.group, "group", "", "with --user: the `GROUP` (default: the user's primary group)")
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
	fs.IntVar(&f.portRotate, "upstream-port-rotate", upstream.DefaultPortRotation, "queries per upstream socket before its source port is replaced by a new random one (RFC 5452: a forger must guess port and ID); 0 keeps fixed ports")
	fs.BoolVar(&f.servfail, "servfail-on-timeout", false, "answer SERVFAIL when the upstream times out or the query cannot be sent to it (default: send nothing)")
	fs.IntVar(&f.rcvbuf, "rcvbuf", 0, "socket receive buffer `BYTES` (SO_RCVBUFFORCE when permitted; 0: kernel default)")
	fs.IntVar(&f.sndbuf, "sndbuf", 0, "socket send buffer `BYTES` (0: kernel default)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	f.dnstap.register(fs)
	f.metrics.register(fs)
	applyTCP := registerTCPFlags(fs) // serve_tcp.go
	return f, fs, applyTCP
}

// parseServe parses the command line, then the config file (if any) for the
// flags not given on the command line. code is -1 when the caller should
// go on, else the exit code.
func parseServe(args []string, stderr io.Writer) (f *serveFlags, fs *flag.FlagSet, applyTCP func(*server.Config) error, code int) {
	f, fs, applyTCP = newServeFlags(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, nil, 0
		}
		return nil, nil, nil, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tapproxy: unexpected argument %q\n", fs.Arg(0))
		return nil, nil, nil, 2
	}
	if f.configPath != "" {
		given := map[string]bool{}
		fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
		data, err := os.ReadFile(f.configPath)
		if err == nil {
			f.configData = data
			err = config.Apply(fs, f.configPath, data, given)
		}
		if err != nil {
			fmt.Fprintf(stderr, "tapproxy: %v\n", err)
			return nil, nil, nil, 2
		}
	}
	return f, fs, applyTCP, -1
}

// runCheckConfig is "tapproxy check-config": the serve flags and config
// file, validated exactly as serve would, without binding any socket or
// opening any file. --print shows the effective configuration.
func runCheckConfig(args []string, stdout, stderr io.Writer) int {
	print := false
	var rest []string
	for _, a := range args {
		if a == "--print" || a == "-print" {
			print = true
			continue
		}
		rest = append(rest, a)
	}
	f, fs, applyTCP, code := parseServe(rest, stderr)
	if code >= 0 {
		return code
	}
	return f.check(fs, applyTCP, print, stdout, stderr)
}

func (f *serveFlags) check(fs *flag.FlagSet, applyTCP func(*server.Config) error, print bool, stdout, stderr io.Writer) int {
	log := slog.New(slog.DiscardHandler)
	cfg, err := f.config(log)
	if err == nil {
		err = applyTCP(&cfg)
	}
	if err == nil {
		err = f.dnstap.validate()
	}
	if err == nil {
		err = f.metrics.validate()
	}
	if err == nil {
		err = server.Validate(cfg)
	}
	if err == nil && f.user == "" && f.group != "" {
		err = errors.New("--group needs --user")
	}
	if err == nil && f.user != "" {
		_, _, err = privdrop.Lookup(f.user, f.group)
	}
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy: configuration error: %v\n", err)
		return 2
	}
	if print {
		_, _ = stdout.Write(config.Dump(fs))
	}
	fmt.Fprintln(stdout, "tapproxy: configuration OK")
	return 0
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, fs, applyTCP, code := parseServe(args, stderr)
	if code >= 0 {
		return code
	}
	if f.checkOnly {
		return f.check(fs, applyTCP, false, stdout, stderr)
	}
	var level slog.LevelVar
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		fmt.Fprintf(stderr, "tapproxy: --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: &level}))
	setGCPercent()

	cfg, err := f.config(log)
	if err == nil {
		err = applyTCP(&cfg) // serve_tcp.go
	}
	if err == nil && f.group != "" && f.user == "" {
		err = errors.New("--group needs --user")
	}
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy: %v\n", err)
		return 2
	}
	notify := sdnotify.FromEnv()
	ready := cfg.Ready
	cfg.Ready = func(s *server.Server) {
		ready(s)
		_ = notify.Ready("serving")
	}
	// The dnstap file is opened and the sockets bound before privileges
	// are dropped (port 53, /var/log): later files (rotation, reopen) and
	// reconnects happen as the unprivileged user.
	dt, err := f.dnstap.build(log)
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy: %v\n", err)
		return 2
	}
	mo, err := f.metrics.build() // binds --metrics before privileges are dropped
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy: %v\n", err)
		_, _ = dt.shutdown()
		return 2
	}
	cfg.Sink = mo.sink(dt.sink())
	srv, err := server.New(ctx, cfg)
	if err != nil {
		log.Error("start-up failed", "err", err)
		_ = mo.stop()
		_, _ = dt.shutdown()
		if errors.Is(err, server.ErrLoop) {
			return 2 // a configuration error, not a runtime one
		}
		return 1
	}
	if f.user != "" {
		if err := privdrop.Drop(f.user, f.group); err != nil {
			log.Error("dropping privileges failed", "err", err)
			srv.Close()
			_ = mo.stop()
			_, _ = dt.shutdown()
			return 1
		}
		log.Info("dropped privileges", "uid", os.Getuid(), "gid", os.Getgid())
	}
	if err := mo.start(log, metricsDeps{srv: srv, upstreams: srv.Pool().Upstreams, dnstap: dt, zone: dt.zoneCache()}); err != nil {
		log.Error("metrics endpoint", "err", err)
		srv.Close()
		_, _ = dt.shutdown()
		return 1
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			_ = notify.Reloading()
			dt.reopen()
			f.reload(args, cfg.ACL, dt, &level, log, stderr)
			_ = notify.Ready("serving")
		}
	}()
	runErr := srv.Run(ctx)
	_ = notify.Stopping()
	// Every transaction has been handed to the sink once Run returns:
	// drain the dnstap queue, then report everything in one line.
	dtAttrs, dtErr := dt.shutdown()
	log.Info("final counters", append(srv.Counters().Attrs(), dtAttrs...)...)
	if err := mo.stop(); err != nil {
		log.Warn("metrics endpoint", "err", err)
	}
	if dtErr != nil {
		log.Warn("dnstap shutdown", "err", dtErr)
	}
	if runErr != nil {
		log.Error("stopped with errors", "err", runErr)
		return 1
	}
	return 0
}

// reload handles SIGHUP: it re-reads the command line and config file and
// applies what can change without a restart (ACL and ACL action, dnstap
// sampling, log level); every other change is named in the log as needing
// a restart. A config that no longer parses changes nothing.
func (f *serveFlags) reload(args []string, acl *listener.ACL, dt *dnstapOutput, level *slog.LevelVar, log *slog.Logger, stderr io.Writer) {
	nf, nfs, _, code := parseServe(args, io.Discard)
	if code >= 0 {
		// Parse again to a buffer only to say why.
		var b strings.Builder
		parseServe(args, &b)
		log.Error("SIGHUP: configuration not reloaded: it does not parse", "err", strings.TrimSpace(b.String()))
		return
	}
	_, ofs, _ := newServeFlags(io.Discard)
	_ = ofs.Parse(args)
	if f.configPath != "" {
		given := map[string]bool{}
		ofs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
		_ = config.Apply(ofs, f.configPath, f.configData, given)
	}
	var applied, restart []string
	nfs.VisitAll(func(fl *flag.Flag) {
		old := ofs.Lookup(fl.Name).Value.String()
		if old == fl.Value.String() {
			return
		}
		switch fl.Name {
		case "allow", "acl-action", "dnstap-sample", "log-level":
			applied = append(applied, fl.Name)
		default:
			restart = append(restart, fl.Name)
		}
	})
	allow := []string(nf.allow)
	if len(allow) == 0 {
		allow = listener.DefaultAllow
	}
	na, err := listener.ParseACL(allow)
	if err == nil {
		var act listener.ACLAction
		if act, err = listener.ParseACLAction(nf.aclAction); err == nil {
			acl.Replace(na)
			acl.SetAction(act)
		}
	}
	if err != nil {
		log.Error("SIGHUP: ACL not reloaded", "err", err)
	}
	if dt != nil && nf.dnstap.sample > 0 {
		dt.logger.SetSampleRate(nf.dnstap.sample)
	}
	if err := level.UnmarshalText([]byte(nf.logLevel)); err != nil {
		log.Error("SIGHUP: log level not reloaded", "err", err)
	}
	// Remember the file as now read, so the next SIGHUP compares with it.
	f.configData = nf.configData
	log.Info("SIGHUP: configuration reloaded", "applied", strings.Join(applied, ","), "acl", acl.String())
	if len(restart) > 0 {
		log.Warn("SIGHUP: these settings changed but need a restart to take effect", "keys", strings.Join(restart, ","))
	}
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
	if f.portRotate < 0 || f.portRotate > 1<<24 {
		return cfg, fmt.Errorf("--upstream-port-rotate %d: want 0 (fixed ports) to %d", f.portRotate, 1<<24)
	}
	cfg.Workers = f.workers
	cfg.Socket = listener.Options{RcvBuf: f.rcvbuf, SndBuf: f.sndbuf}
	cfg.Upstream = upstream.Config{Timeout: f.timeout, MaxInflight: f.maxInflight,
		SocketsPerUpstream: f.upSockets, PortRotation: f.portRotate, ServfailOnTimeout: f.servfail,
		Socket: listener.Options{RcvBuf: f.rcvbuf, SndBuf: f.sndbuf}}
	cfg.Log = log
	cfg.Ready = func(s *server.Server) {
		attrs := []any{"listen", fmt.Sprint(s.Addrs()), "upstreams", fmt.Sprint(cfg.Upstreams), "workers", cfg.Workers}
		log.Info("ready", attrs...)
	}
	return cfg, nil
}

// defaultGCPercent is the garbage collector's target when GOGC is not set.
// tapproxy's heap is almost all long-lived tables and queues made at start
// (in-flight slots, the dnstap queue); garbage comes only from rare events
// (a socket opened for a new upstream source port, a metrics scrape). Go's
// default lets garbage grow to the size of that live heap before a
// collection, which shows as resident memory: measured at full load with
// ports rotating, peak RSS 25.6 MiB with the default against 21-22 MiB
// with 25 (bench/RESULTS.md). Collections stay rare, so the CPU cost is
// nil. GOGC in the environment wins.
const defaultGCPercent = 25

func setGCPercent() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
}
