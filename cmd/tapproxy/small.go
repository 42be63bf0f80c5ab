//go:build tapproxy_small

// The small build (-tags tapproxy_small, for routers: packaging/cross.sh)
// leaves out the Prometheus endpoint and the report command, which bring
// in most of the binary's size. Logging, reading and everything on the DNS
// path are the same; run `tapproxy report` on a workstation.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/upstream"
)

var errSmall = errors.New("this tapproxy was built without metrics and report (-tags tapproxy_small)")

type metricsFlags struct {
	addr  string
	pprof bool
}

func (m *metricsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&m.addr, "metrics", "", "not available in this build (-tags tapproxy_small)")
	fs.BoolVar(&m.pprof, "metrics-pprof", false, "not available in this build (-tags tapproxy_small)")
}

func (m *metricsFlags) validate() error {
	if m.addr != "" || m.pprof {
		return errSmall
	}
	return nil
}

type metricsOutput struct{}

func (m *metricsFlags) build() (*metricsOutput, error) { return nil, m.validate() }

func (o *metricsOutput) sink(next txn.Sink) txn.Sink { return next }

type metricsDeps struct {
	srv       *server.Server
	upstreams func() []*upstream.Upstream
	dnstap    *dnstapOutput
	zone      *annotate.ZoneCache
}

func (o *metricsOutput) start(*slog.Logger, metricsDeps) error { return nil }

func (o *metricsOutput) stop() error { return nil }

func runReport(_ context.Context, _ []string, _, stderr io.Writer) int {
	fmt.Fprintln(stderr, "tapproxy:", errSmall)
	return 1
}
