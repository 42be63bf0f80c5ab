package metrics

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/internal/testenv"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/listener"
	"github.com/tapproxy/tapproxy/tap"
	"github.com/tapproxy/tapproxy/upstream"
)

// memWriter is a tap.FrameWriter that counts frames in memory.
type memWriter struct {
	mu     sync.Mutex
	frames int
}

func (w *memWriter) WriteFrame(p []byte) error {
	w.mu.Lock()
	w.frames++
	w.mu.Unlock()
	return nil
}
func (w *memWriter) Flush() error { return nil }
func (w *memWriter) Close() error { return nil }

// proxy is an in-process tapproxy with an Observer and a dnstap Logger
// feeding from its sink, in front of a scripted fake upstream.
type proxy struct {
	srv    *server.Server
	obs    *annotate.Observer
	logger *tap.Logger
	frames *memWriter
	fake   *testenv.Fake
	addr   netip.AddrPort
	stop   func() // stops the server (waits for Run), then drains the logger
}

// Fake upstream behaviour by query name.
const (
	nameOK      = "ok.test."
	nameNX      = "nx.test."
	nameTimeout = "timeout.test."
)

func fakeHandler(q []byte, _ netip.AddrPort, reply func([]byte), _ func(int, []byte)) {
	var m dns.Msg
	if err := m.Unpack(q); err != nil || len(m.Question) != 1 {
		return
	}
	switch strings.ToLower(m.Question[0].Name) {
	case nameTimeout:
		return
	case nameNX:
		reply(testenv.Reply(q, dns.RcodeNameError))
	default:
		reply(testenv.Reply(q, dns.RcodeSuccess))
	}
}

// startProxy runs a proxy that allows only 127.0.0.1 as a client.
func startProxy(t *testing.T) *proxy {
	t.Helper()
	p := &proxy{fake: testenv.FakeUpstream(t, "udp4", "127.0.0.1:0", fakeHandler)}
	acl, err := listener.ParseACL([]string{"127.0.0.1/32"})
	if err != nil {
		t.Fatal(err)
	}
	p.obs = annotate.NewObserver(annotate.ObserverOptions{})
	p.frames = &memWriter{}
	p.logger = tap.NewLogger(tap.LoggerOptions{}, tap.NewEncoder(tap.EncoderOptions{Identity: []byte("test"), Types: tap.DefaultTypes}), p.frames, nil)
	p.logger.Start()
	ctx, cancel := context.WithCancel(context.Background())
	p.srv, err = server.New(ctx, server.Config{
		Listen:    []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Upstreams: []netip.AddrPort{p.fake.Addr},
		Workers:   1, ACL: acl, ACLAction: listener.ACLRefuse,
		Sink:     annotate.NewTee(p.obs, p.logger),
		Upstream: upstream.Config{Timeout: 200 * time.Millisecond},
		// The workload's timeouts come in a row: keep the upstream up.
		Health: upstream.HealthConfig{FailThreshold: 100},
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	p.addr = p.srv.Addrs()[0]
	done := make(chan error, 1)
	go func() { done <- p.srv.Run(ctx) }()
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("server Run: %v", err)
			}
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer scancel()
			if err := p.logger.Shutdown(sctx); err != nil {
				t.Errorf("logger Shutdown: %v", err)
			}
		})
	}
	t.Cleanup(p.stop)
	return p
}

// poolOf returns the server's upstream pool when server.Server has the
// Pool accessor the metrics wiring needs (see the report: the lead adds
// it); nil otherwise.
func poolOf(s *server.Server) *upstream.Pool {
	if p, ok := any(s).(interface{ Pool() *upstream.Pool }); ok {
		return p.Pool()
	}
	return nil
}

// client is a UDP client socket bound to a given loopback address.
type client struct {
	c  *net.UDPConn
	id uint16
}

func newClient(t *testing.T, from string, to netip.AddrPort) *client {
	t.Helper()
	c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(from+":0")), net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatalf("dial from %s: %v", from, err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{c: c}
}

func query(t testing.TB, id uint16, name string) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("pack: %v", err)
	}
	return b
}

// ask sends a query and, when wantReply, waits (bounded) for the reply and
// returns its rcode.
func (c *client) ask(t *testing.T, name string, wantReply bool) int {
	t.Helper()
	c.id++
	if _, err := c.c.Write(query(t, c.id, name)); err != nil {
		t.Fatalf("send: %v", err)
	}
	if !wantReply {
		return -1
	}
	buf := make([]byte, 4096)
	if err := c.c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for {
		n, err := c.c.Read(buf)
		if err != nil {
			t.Fatalf("waiting for the reply to %s: %v", name, err)
		}
		if n >= 12 && binary.BigEndian.Uint16(buf) == c.id {
			return int(buf[3] & 0x0F)
		}
	}
}

// scrape fetches /metrics from h and parses the text exposition.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	ts := newTestServer(t, m)
	resp, err := ts.Client().Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs
}

// value returns the value of the series of family name whose labels
// include want (counter, gauge or untyped), failing when absent.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	m := series(t, mfs, name, want)
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	t.Fatalf("%s%v: no value", name, want)
	return 0
}

func series(t *testing.T, mfs map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("metric %s not exported", name)
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		return m
	}
	t.Fatalf("metric %s has no series with labels %v", name, want)
	return nil
}

// sumSeries sums every series of a counter family, or the sample counts of
// a histogram family, whose labels include want.
func sumSeries(mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	var s float64
next:
	for _, m := range mfs[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			s += m.GetCounter().GetValue()
		case m.Histogram != nil:
			s += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return s
}

// fakeCounters returns server.Counters with the TCP reason slices sized as
// the server sizes them (Attrs indexes them).
func fakeCounters() server.Counters {
	var c server.Counters
	c.TCP.Closed = make([]uint64, len(listener.CloseReasons()))
	c.TCP.UpClosed = make([]uint64, len(upstream.UpCloseReasons()))
	return c
}

var _ = txn.Discard{}
