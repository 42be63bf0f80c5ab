//go:build !tapproxy_small

package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/tapproxy/tapproxy/internal/metrics"
	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/internal/testenv"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
)

func TestMetricsFlags(t *testing.T) {
	var off metricsFlags
	o, err := off.build()
	if err != nil || o != nil {
		t.Fatalf("no --metrics: %v %v, want nil, nil", o, err)
	}
	if s := o.sink(txn.Discard{}); s != (txn.Discard{}) {
		t.Errorf("sink without metrics = %T, want the next sink itself", s)
	}
	if err := o.start(slog.New(slog.DiscardHandler), metricsDeps{}); err != nil || o.stop() != nil {
		t.Errorf("start/stop on nil output must do nothing")
	}
	bad := metricsFlags{addr: "localhost:9153"}
	if _, err := bad.build(); !errors.Is(err, metrics.ErrAddr) {
		t.Errorf("--metrics localhost:9153: %v, want ErrAddr", err)
	}
	if err := bad.validate(); !errors.Is(err, metrics.ErrAddr) {
		t.Errorf("validate --metrics localhost:9153: %v, want ErrAddr", err)
	}
	if err := (&metricsFlags{addr: "[::1]:9153"}).validate(); err != nil {
		t.Errorf("validate [::1]:9153: %v", err)
	}

	fake := testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", nil)
	f := metricsFlags{addr: "127.0.0.1:0"}
	o, err = f.build()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(context.Background(), server.Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Upstreams: []netip.AddrPort{fake.Addr}, ACL: listener.AllowAll(), Sink: o.sink(nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := o.start(slog.New(slog.DiscardHandler), metricsDeps{srv: srv}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + o.ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "tapproxy_received_total 0") {
		t.Errorf("/metrics: %s\n%s", resp.Status, body)
	}
	if err := o.stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	if _, err := http.Get("http://" + o.ln.Addr().String() + "/metrics"); err == nil {
		t.Errorf("endpoint still answers after stop")
	}
}
