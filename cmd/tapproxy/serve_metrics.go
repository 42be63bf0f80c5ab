//go:build !tapproxy_small

package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/metrics"
	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/upstream"
)

// metricsFlags are the diagnostics settings of the serve command.
type metricsFlags struct {
	addr  string
	pprof bool
}

func (m *metricsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&m.addr, "metrics", "", "serve Prometheus /metrics, /status.json and a live page on `IP:PORT` (e.g. 127.0.0.1:9153; off when empty)")
	fs.BoolVar(&m.pprof, "metrics-pprof", false, "also serve Go's profiler at /debug/pprof/ on the --metrics address (for chasing CPU or memory problems; off by default)")
}

// validate checks --metrics without binding (check-config).
func (m *metricsFlags) validate() error {
	if m.addr == "" {
		if m.pprof {
			return fmt.Errorf("--metrics-pprof needs --metrics")
		}
		return nil
	}
	if _, err := netip.ParseAddrPort(m.addr); err != nil {
		return fmt.Errorf("%w: --metrics %q: %v", metrics.ErrAddr, m.addr, err)
	}
	return nil
}

// metricsOutput is the diagnostics endpoint, or nil when off.
type metricsOutput struct {
	obs    *annotate.Observer
	ln     net.Listener
	cancel context.CancelFunc
	done   chan error
	pprof  bool
}

// build binds the metrics address, so that a malformed or busy address is
// a start-up error, and makes the Observer. It returns nil when --metrics
// is not given.
func (m *metricsFlags) build() (*metricsOutput, error) {
	if m.addr == "" {
		return nil, nil
	}
	ln, err := metrics.Listen(m.addr)
	if err != nil {
		return nil, err
	}
	return &metricsOutput{obs: annotate.NewObserver(annotate.ObserverOptions{}), ln: ln, pprof: m.pprof}, nil
}

// sink puts the Observer in front of next (the dnstap sink), so the
// histograms see every transaction, sampled out of dnstap or not.
func (o *metricsOutput) sink(next txn.Sink) txn.Sink {
	if o == nil {
		return next
	}
	return annotate.NewTee(o.obs, next)
}

// metricsDeps are the running pieces the endpoint reads. upstreams is the
// pool's Upstreams (srv.Pool().Upstreams); dnstap and zone may be nil.
type metricsDeps struct {
	srv       *server.Server
	upstreams func() []*upstream.Upstream
	dnstap    *dnstapOutput
	zone      *annotate.ZoneCache
}

// start serves until stop is called. It runs on its own context, not the
// serve command's, so that the page and /metrics stay up while the server
// drains after SIGTERM.
func (o *metricsOutput) start(log *slog.Logger, d metricsDeps) error {
	if o == nil {
		return nil
	}
	src := metrics.Sources{Version: version, Counters: d.srv.Counters, Upstreams: d.upstreams,
		SocketDrops: d.srv.SocketDrops, Observer: o.obs}
	if dt := d.dnstap; dt != nil {
		src.Tap = dt.logger.Stats
		src.Sink = dt.sinkState
	}
	if d.zone != nil {
		src.Zone = d.zone.Stats
	}
	m, err := metrics.New(src, metrics.Options{Log: log.With("component", "metrics"), Pprof: o.pprof})
	if err != nil {
		_ = o.ln.Close()
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	o.cancel, o.done = cancel, make(chan error, 1)
	go func() { o.done <- m.Serve(ctx, o.ln) }()
	log.Info("metrics endpoint up", "addr", o.ln.Addr().String())
	return nil
}

// stop shuts the endpoint down (bounded by metrics.Serve) and returns its
// error. It also releases a listener that start never used.
func (o *metricsOutput) stop() error {
	if o == nil {
		return nil
	}
	if o.cancel == nil {
		return o.ln.Close()
	}
	o.cancel()
	return <-o.done
}

// sinkState reports the dnstap output's state for the metrics.
func (o *dnstapOutput) sinkState() metrics.SinkState {
	switch {
	case o.file != nil:
		s := o.file.Stats()
		return metrics.SinkState{Kind: "file", Up: !s.Failing, FramesLost: s.FramesLost}
	case o.sock != nil:
		s := o.sock.Stats()
		return metrics.SinkState{Kind: "socket", Up: s.Connected > 0, Connections: s.Connected, FramesLost: s.FramesLost}
	}
	return metrics.SinkState{}
}
