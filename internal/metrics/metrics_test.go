package metrics

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/internal/testenv"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/tap"
	"github.com/tapproxy/tapproxy/upstream"
)

func newTestServer(t *testing.T, m *Metrics) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(m.Handler())
	t.Cleanup(ts.Close)
	return ts
}

// allSources returns sources for every collector: counters from a real
// in-process server (so the TCP keys are the real ones), a pool, a logger,
// a sink state, a zone cache and an Observer that has seen one
// transaction (a histogram family without series is not exported).
func allSources(t *testing.T) Sources {
	t.Helper()
	p := startProxy(t)
	pool, err := upstream.NewPool([]upstream.Spec{{Addr: netip.MustParseAddrPort("127.0.0.1:5353"), Weight: 1}}, upstream.FirstAvailable, upstream.HealthConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.obs.Submit(&txn.Transaction{Local: p.addr, Upstream: p.fake.Addr, QueryKernel: 1, QueryRead: 2, UpstreamSent: 3,
		ResponseKernel: 4, ResponseRead: 5, ReplySent: 6, Response: []byte{0, 0, 0x80, 0}, Flags: txn.Truncated})
	z := annotate.NewZoneCache(16)
	return Sources{
		Version:     "test",
		Counters:    p.srv.Counters,
		Upstreams:   pool.Upstreams,
		SocketDrops: p.srv.SocketDrops,
		Tap:         p.logger.Stats,
		Sink:        func() SinkState { return SinkState{Kind: "file", Up: true} },
		Zone:        z.Stats,
		Observer:    p.obs,
	}
}

func TestPromlint(t *testing.T) {
	reg, err := NewRegistry(allSources(t))
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	if len(mfs) < 50 {
		t.Errorf("only %d metric families gathered; the collectors are not all registered", len(mfs))
	}
}

// readmeMetrics returns the metric names listed in the "## Metrics"
// section of a README: the first backquoted word of each table row; nil
// when the file has no such section.
func readmeMetrics(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile("^\\| *`([a-z_:][a-z0-9_:]*)`")
	var names []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = line == "## Metrics"
			continue
		}
		if m := row.FindStringSubmatch(line); in && m != nil {
			names = append(names, m[1])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

var updateReadme = flag.Bool("update-readme", false, "rewrite the metric table of internal/metrics/README.md from the registry")

// TestREADMEMetricList keeps the README's metric table and the registry in
// step (every tapproxy_* family registered is documented and vice versa).
// After adding a counter: go test ./internal/metrics -run TestREADMEMetricList -update-readme
func TestREADMEMetricList(t *testing.T) {
	reg, err := NewRegistry(allSources(t))
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if *updateReadme {
		rewriteReadmeTable(t, mfs)
	}
	var registered []string
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), Namespace+"_") {
			registered = append(registered, mf.GetName())
		}
	}
	root := testenv.ModuleRoot(t)
	own := filepath.Join(root, "internal", "metrics", "README.md")
	files := []string{own}
	// The top-level README carries a copy of the section once pasted
	// there; it is checked too when it has one.
	if top := filepath.Join(root, "README.md"); readmeMetrics(t, top) != nil {
		files = append(files, top)
	}
	for _, path := range files {
		documented := readmeMetrics(t, path)
		if documented == nil {
			t.Fatalf("%s has no \"## Metrics\" section with a table of `metric` rows", path)
		}
		for _, n := range registered {
			if !slices.Contains(documented, n) {
				t.Errorf("%s is registered but not in %s's metric table", n, path)
			}
		}
		for _, n := range documented {
			if !slices.Contains(registered, n) {
				t.Errorf("%s lists %s, which is not registered", path, n)
			}
		}
	}
}

// TestWorkload runs a known workload through an in-process tapproxy and
// checks that every exported figure equals the count expected from it.
func TestWorkload(t *testing.T) {
	p := startProxy(t)
	const nOK, nNX, nTimeout, nRefused, nShort, nQR = 20, 5, 3, 4, 2, 1
	allowed := newClient(t, "127.0.0.1", p.addr)
	refused := newClient(t, "127.0.0.3", p.addr)
	for i := 0; i < nOK; i++ {
		if rc := allowed.ask(t, nameOK, true); rc != 0 {
			t.Fatalf("ok query: rcode %d", rc)
		}
	}
	for i := 0; i < nNX; i++ {
		if rc := allowed.ask(t, nameNX, true); rc != 3 {
			t.Fatalf("nx query: rcode %d", rc)
		}
	}
	for i := 0; i < nRefused; i++ {
		if rc := refused.ask(t, nameOK, true); rc != 5 {
			t.Fatalf("query from outside the ACL: rcode %d, want REFUSED", rc)
		}
	}
	for i := 0; i < nShort; i++ {
		if _, err := allowed.c.Write([]byte{1, 2, 3, 4, 5}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < nQR; i++ {
		q := query(t, 999, nameOK)
		q[2] |= 0x80
		if _, err := allowed.c.Write(q); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < nTimeout; i++ {
		allowed.ask(t, nameTimeout, false)
	}
	// The fake has seen every forwarded query once it has nOK+nNX+nTimeout.
	p.fake.WaitReceived(t, nOK+nNX+nTimeout, 10*time.Second)
	// Stopping waits for the timeouts and drains the dnstap queue, so
	// every figure below is final.
	p.stop()

	var ups func() []*upstream.Upstream
	if pool := poolOf(p.srv); pool != nil {
		ups = pool.Upstreams
	} else {
		t.Errorf("server.Server has no Pool() accessor: add `func (s *Server) Pool() *upstream.Pool { return s.pool }` to internal/server/server.go (the serve command needs it for the per-upstream metrics)")
	}
	m, err := New(Sources{Version: "test", Counters: p.srv.Counters, Upstreams: ups, SocketDrops: p.srv.SocketDrops, Tap: p.logger.Stats, Observer: p.obs}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mfs := scrape(t, m)
	const received = nOK + nNX + nTimeout + nRefused + nShort + nQR
	const forwarded = nOK + nNX + nTimeout
	for name, want := range map[string]float64{
		"tapproxy_received_total":            received,
		"tapproxy_dropped_short_total":       nShort,
		"tapproxy_dropped_qr_total":          nQR,
		"tapproxy_refused_acl_total":         nRefused,
		"tapproxy_dropped_acl_total":         0,
		"tapproxy_forwarded_total":           forwarded,
		"tapproxy_answered_total":            nOK + nNX,
		"tapproxy_timed_out_total":           nTimeout,
		"tapproxy_servfail_sent_total":       0,
		"tapproxy_in_flight":                 0,
		"tapproxy_resp_received_total":       nOK + nNX,
		"tapproxy_resp_matched_total":        nOK + nNX,
		"tapproxy_resp_unknown_id_total":     0,
		"tapproxy_kernel_drops_total":        0,
		"tapproxy_dnstap_transactions_total": nOK + nNX + nTimeout + nRefused,
		// CLIENT_QUERY for every transaction, CLIENT_RESPONSE for each reply.
		"tapproxy_dnstap_records_written_total": 2*(nOK+nNX+nRefused) + nTimeout,
	} {
		if got := value(t, mfs, name, nil); got != want {
			t.Errorf("%s = %g, want %g", name, got, want)
		}
	}
	if got := p.frames.frames; got != 2*(nOK+nNX+nRefused)+nTimeout {
		t.Errorf("frames written to the output = %d, want %d", got, 2*(nOK+nNX+nRefused)+nTimeout)
	}
	for _, r := range DnstapDropReasons {
		if got := value(t, mfs, "tapproxy_dnstap_records_dropped_total", map[string]string{"reason": r}); got != 0 {
			t.Errorf("dnstap dropped %s = %g, want 0", r, got)
		}
	}
	lis, up := p.addr.String(), p.fake.Addr.String()
	viaUp := map[string]string{annotate.LabelListener: lis, annotate.LabelUpstream: up, annotate.LabelTransport: "udp"}
	noUp := map[string]string{annotate.LabelListener: lis, annotate.LabelUpstream: annotate.LabelNone, annotate.LabelTransport: "udp"}
	for _, c := range []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{annotate.MetricQueryDuration, viaUp, nOK + nNX},
		{annotate.MetricQueryDuration, noUp, nRefused},
		{annotate.MetricUpstreamRTT, viaUp, nOK + nNX},
		{annotate.MetricUpstreamQueueDelay, viaUp, nOK + nNX},
		{annotate.MetricProxyTime, viaUp, nOK + nNX},
		// Timed-out queries were read too: their queue delay is known.
		{annotate.MetricClientQueueDelay, viaUp, nOK + nNX + nTimeout},
		{annotate.MetricClientQueueDelay, noUp, nRefused},
		{annotate.MetricResponseSize, viaUp, nOK + nNX},
		{annotate.MetricResponses, merge(viaUp, annotate.LabelRcode, "NOERROR"), nOK},
		{annotate.MetricResponses, merge(viaUp, annotate.LabelRcode, "NXDOMAIN"), nNX},
		{annotate.MetricResponses, merge(noUp, annotate.LabelRcode, "REFUSED"), nRefused},
		{annotate.MetricTruncated, viaUp, 0},
	} {
		if got := value(t, mfs, c.metric, c.labels); got != c.want {
			t.Errorf("%s%v = %g, want %g", c.metric, c.labels, got, c.want)
		}
	}
	if got, want := sumSeries(mfs, annotate.MetricResponses, nil), float64(nOK+nNX+nRefused); got != want {
		t.Errorf("sum of %s = %g, want %g", annotate.MetricResponses, got, want)
	}
	// The query duration's sum is the sum of the per-transaction totals
	// (at least the upstream RTTs it contains).
	total := series(t, mfs, annotate.MetricQueryDuration, viaUp).GetHistogram()
	rtt := series(t, mfs, annotate.MetricUpstreamRTT, viaUp).GetHistogram()
	if total.GetSampleSum() < rtt.GetSampleSum() || rtt.GetSampleSum() <= 0 {
		t.Errorf("sum of totals %g < sum of RTTs %g (or RTT sum not positive)", total.GetSampleSum(), rtt.GetSampleSum())
	}
	if ups != nil {
		l := map[string]string{"upstream": up}
		for name, want := range map[string]float64{
			"tapproxy_upstream_queries_total":     forwarded,
			"tapproxy_upstream_timeouts_total":    nTimeout,
			"tapproxy_upstream_errors_total":      0,
			"tapproxy_upstream_in_flight":         0,
			"tapproxy_upstream_up":                1,
			"tapproxy_upstream_transitions_total": 0,
		} {
			if got := value(t, mfs, name, l); got != want {
				t.Errorf("%s = %g, want %g", name, got, want)
			}
		}
		if v := value(t, mfs, "tapproxy_upstream_srtt_seconds", l); v <= 0 {
			t.Errorf("srtt = %g, want > 0 after answers", v)
		}
	}
	if err := p.srv.Counters().Check(); err != nil {
		t.Errorf("counter invariants: %v", err)
	}
}

// rewriteReadmeTable replaces the rows of the "## Metrics" table with one
// row per registered tapproxy_* family (name, type, labels, help).
func rewriteReadmeTable(t *testing.T, mfs []*dto.MetricFamily) {
	t.Helper()
	path := filepath.Join(testenv.ModuleRoot(t), "internal", "metrics", "README.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), Namespace+"_") {
			continue
		}
		var labels []string
		if len(mf.GetMetric()) > 0 {
			for _, l := range mf.GetMetric()[0].GetLabel() {
				labels = append(labels, l.GetName())
			}
		}
		rows = append(rows, fmt.Sprintf("| `%s` | %s | %s | %s |", mf.GetName(), strings.ToLower(mf.GetType().String()),
			strings.Join(labels, ", "), strings.ReplaceAll(mf.GetHelp(), "|", "\\|")))
	}
	slices.Sort(rows)
	lines := strings.Split(string(b), "\n")
	var out []string
	in, done := false, false
	for _, l := range lines {
		if strings.HasPrefix(l, "## ") {
			in = l == "## Metrics"
		}
		if in && strings.HasPrefix(l, "| `") {
			if !done {
				out = append(out, rows...)
				done = true
			}
			continue
		}
		out = append(out, l)
	}
	if !done {
		t.Fatalf("README.md: no metric table rows under \"## Metrics\" to replace")
	}
	if err := os.WriteFile(path, []byte(strings.Join(out, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("rewrote %d rows of %s", len(rows), path)
}

func merge(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for kk, vv := range m {
		out[kk] = vv
	}
	return out
}

// TestUpstreamCollector drives a pool's health state by hand.
func TestUpstreamCollector(t *testing.T) {
	a, b := netip.MustParseAddrPort("127.0.0.1:5301"), netip.MustParseAddrPort("[::1]:5302")
	pool, err := upstream.NewPool([]upstream.Spec{{Addr: a, Weight: 1}, {Addr: b, Weight: 1}}, upstream.FirstAvailable,
		upstream.HealthConfig{FailThreshold: 2, RiseThreshold: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ua, ub := pool.Upstreams()[0], pool.Upstreams()[1]
	pool.Success(ua, 4*time.Millisecond)
	pool.Failure(ub, true)
	pool.Failure(ub, false) // second consecutive failure: down
	ub.InFlight.Store(7)
	ua.Queries.Store(11)
	m, err := New(Sources{Upstreams: pool.Upstreams}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mfs := scrape(t, m)
	for _, c := range []struct {
		name, up string
		want     float64
	}{
		{"tapproxy_upstream_up", a.String(), 1},
		{"tapproxy_upstream_up", b.String(), 0},
		{"tapproxy_upstream_srtt_seconds", a.String(), 0.004},
		{"tapproxy_upstream_srtt_seconds", b.String(), 0},
		{"tapproxy_upstream_in_flight", b.String(), 7},
		{"tapproxy_upstream_queries_total", a.String(), 11},
		{"tapproxy_upstream_timeouts_total", b.String(), 1},
		{"tapproxy_upstream_errors_total", b.String(), 1},
		{"tapproxy_upstream_transitions_total", b.String(), 1},
		{"tapproxy_upstream_transitions_total", a.String(), 0},
	} {
		if got := value(t, mfs, c.name, map[string]string{"upstream": c.up}); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("%s{upstream=%s} = %g, want %g", c.name, c.up, got, c.want)
		}
	}
	pool.ProbeResult(ub, true)
	mfs = scrape(t, m)
	if got := value(t, mfs, "tapproxy_upstream_up", map[string]string{"upstream": b.String()}); got != 1 {
		t.Errorf("after a good probe (rise 1): up = %g, want 1", got)
	}
}

// TestTapAndZoneCollectors checks the dnstap and zone figures against
// hand-made stats.
func TestTapAndZoneCollectors(t *testing.T) {
	st := tap.Stats{Submitted: 10, SampledOut: 1, Produced: 17, Written: 12, DroppedQueueFull: 2, DroppedTooLarge: 1,
		DroppedWriteError: 1, DroppedShutdown: 1, Flushes: 3, FlushErrors: 1}
	zs := annotate.ZoneStats{Learned: 5, Renewed: 6, OutOfBailiwick: 7, Malformed: 8, Lookups: 9, Hits: 4, Entries: 5}
	m, err := New(Sources{
		Tap:  func() tap.Stats { return st },
		Sink: func() SinkState { return SinkState{Kind: "socket", Up: true, Connections: 2, FramesLost: 3} },
		Zone: func() annotate.ZoneStats { return zs },
	}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mfs := scrape(t, m)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tapproxy_dnstap_transactions_total", nil, 10},
		{"tapproxy_dnstap_sampled_out_total", nil, 1},
		{"tapproxy_dnstap_records_produced_total", nil, 17},
		{"tapproxy_dnstap_records_written_total", nil, 12},
		{"tapproxy_dnstap_records_dropped_total", map[string]string{"reason": "queue_full"}, 2},
		{"tapproxy_dnstap_records_dropped_total", map[string]string{"reason": "too_large"}, 1},
		{"tapproxy_dnstap_records_dropped_total", map[string]string{"reason": "write_error"}, 1},
		{"tapproxy_dnstap_records_dropped_total", map[string]string{"reason": "shutdown"}, 1},
		{"tapproxy_dnstap_flushes_total", nil, 3},
		{"tapproxy_dnstap_flush_errors_total", nil, 1},
		{"tapproxy_dnstap_sink_up", map[string]string{"kind": "socket"}, 1},
		{"tapproxy_dnstap_connections", map[string]string{"kind": "socket"}, 2},
		{"tapproxy_dnstap_frames_lost_total", map[string]string{"kind": "socket"}, 3},
		{"tapproxy_zone_cache_entries", nil, 5},
		{"tapproxy_zone_cache_learned_total", nil, 5},
		{"tapproxy_zone_cache_renewed_total", nil, 6},
		{"tapproxy_zone_cache_out_of_bailiwick_total", nil, 7},
		{"tapproxy_zone_cache_malformed_total", nil, 8},
		{"tapproxy_zone_cache_lookups_total", nil, 9},
		{"tapproxy_zone_cache_hits_total", nil, 4},
	} {
		if got := value(t, mfs, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %g, want %g", c.name, c.labels, got, c.want)
		}
	}
	// The produced = written + dropped invariant holds in the export too.
	if w, d := value(t, mfs, "tapproxy_dnstap_records_written_total", nil), sumSeries(mfs, "tapproxy_dnstap_records_dropped_total", nil); w+d != 17 {
		t.Errorf("written %g + dropped %g != produced 17", w, d)
	}
}

func TestQuantile(t *testing.T) {
	inf := math.Inf(1)
	bounds := []float64{1, 2, 4, inf}
	for _, c := range []struct {
		name string
		q    float64
		cum  []uint64
		want float64
		ok   bool
	}{
		{"empty", 0.5, []uint64{0, 0, 0, 0}, 0, false},
		{"all in first bucket: interpolate from 0", 0.5, []uint64{10, 10, 10, 10}, 0.5, true},
		{"middle of second bucket", 0.5, []uint64{0, 10, 10, 10}, 1.5, true},
		{"p99 in third bucket", 0.99, []uint64{50, 50, 100, 100}, 2 + 2*(99-50)/50.0, true},
		{"rank in +Inf bucket gives the last finite bound", 0.99, []uint64{1, 1, 1, 10}, 4, true},
	} {
		got, ok := quantile(c.q, bounds, c.cum)
		if ok != c.ok || math.Abs(got-c.want) > 1e-12 {
			t.Errorf("%s: quantile = %g %v, want %g %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

// TestStatusJSON takes samples by hand over two known intervals and checks
// the rates, means and quantiles /status.json reports.
func TestStatusJSON(t *testing.T) {
	c := fakeCounters()
	obs := annotate.NewObserver(annotate.ObserverOptions{})
	pool, err := upstream.NewPool([]upstream.Spec{{Addr: netip.MustParseAddrPort("127.0.0.1:5353"), Weight: 1}}, upstream.FirstAvailable, upstream.HealthConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := tap.Stats{}
	var nSamples []int
	m, err := New(Sources{Version: "v-test", Counters: func() server.Counters { return c }, Upstreams: pool.Upstreams,
		Tap: func() tap.Stats { return st }, Observer: obs}, Options{History: 3, OnSample: func(n int) { nSamples = append(nSamples, n) }})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_700_000_000, 0)
	m.takeSample(t0) // baseline only
	// Interval 1 (2 s): 40 received, 30 answered, 4 short, 2 kernel drops,
	// 1 timeout, 3 dnstap drops; 4 transactions with known spans.
	c.Received, c.Answered, c.DroppedShort, c.KernelDrops, c.TimedOut, c.InFlight = 40, 30, 4, 2, 1, 5
	c.TCP.Received, c.TCP.Answered = 10, 10
	st.DroppedQueueFull = 3
	lis, up := netip.MustParseAddrPort("127.0.0.1:53"), netip.MustParseAddrPort("127.0.0.1:5353")
	for i := int64(1); i <= 4; i++ {
		// qdelay i µs, rtt 1000·i µs, proxy 10 µs, total = sum.
		base := int64(1_700_000_000_000_000_000)
		obs.Submit(&txn.Transaction{Local: lis, Upstream: up, QueryKernel: base, QueryRead: base + i*1000,
			UpstreamSent: base + i*1000 + 5000, ResponseKernel: base + i*1000 + 5000 + i*1_000_000,
			ResponseRead: base + i*1000 + 5000 + i*1_000_000, ReplySent: base + i*1000 + 10000 + i*1_000_000,
			Response: []byte{0, 0, 0x80, 0}})
	}
	m.takeSample(t0.Add(2 * time.Second))
	// Interval 2 (1 s): nothing observed, 5 more received.
	c.Received += 5
	pool.Upstreams()[0].InFlight.Store(2)
	m.takeSample(t0.Add(3 * time.Second))

	ts := newTestServer(t, m)
	resp, err := ts.Client().Get(ts.URL + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var got Status
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Version != "v-test" || got.Counters["received"] != 45 || got.Counters["tcp_received"] != 10 {
		t.Errorf("version %q, counters received %d tcp_received %d", got.Version, got.Counters["received"], got.Counters["tcp_received"])
	}
	if len(got.History) != 2 {
		t.Fatalf("%d samples, want 2", len(got.History))
	}
	s1, s2 := got.History[0], got.History[1]
	near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"t", s1.T, 1_700_000_002},
		{"qps", s1.QPS, 50 / 2.0},
		{"answered", s1.Answered, 40 / 2.0},
		{"drops", s1.Drops, 6 / 2.0},
		{"timeouts", s1.Timeouts, 1 / 2.0},
		{"dnstap_drops", s1.DnstapDrops, 3 / 2.0},
		{"in_flight", float64(s1.InFlight), 5},
		{"mean queue", s1.Mean["queue"], 2.5e-6},
		{"mean upstream", s1.Mean["upstream"], 2.5e-3},
		{"mean proxy", s1.Mean["proxy"], 10e-6},
		{"mean total", s1.Mean["total"], 2.5e-6 + 2.5e-3 + 10e-6},
		{"s2 qps", s2.QPS, 5},
		{"s2 upstream in flight", float64(s2.Upstreams[0].InFlight), 2},
	} {
		if !near(c.got, c.want) {
			t.Errorf("%s = %g, want %g", c.name, c.got, c.want)
		}
	}
	// Totals 1.011, 2.012, 3.013, 4.014 ms: cumulative counts 1 at
	// le=2ms, 2 at le=3ms, 4 at le=5ms. p50 (rank 2) is the top of the
	// (2, 3] ms bucket; p99 (rank 3.96) lies in (3, 5] ms, which holds
	// ranks 2–4: 3 + 2·(3.96−2)/2 ms.
	if s1.P50 == nil || !near(*s1.P50, 3e-3) {
		t.Errorf("p50 = %v, want %g", deref(s1.P50), 3e-3)
	}
	if s1.P99 == nil || !near(*s1.P99, 3e-3+2e-3*(3.96-2)/2) {
		t.Errorf("p99 = %v, want %g", deref(s1.P99), 3e-3+2e-3*(3.96-2)/2)
	}
	if len(s2.Mean) != 0 || s2.P50 != nil {
		t.Errorf("interval without observations has means %v p50 %v, want none", s2.Mean, s2.P50)
	}
	if !slices.Equal(nSamples, []int{1, 2}) {
		t.Errorf("OnSample saw %v, want [1 2]", nSamples)
	}
	// The ring keeps History samples, oldest first.
	for i := 0; i < 3; i++ {
		m.takeSample(t0.Add(time.Duration(4+i) * time.Second))
	}
	h := m.Status().History
	if len(h) != 3 || h[0].T != 1_700_000_004 || h[2].T != 1_700_000_006 {
		t.Errorf("ring after overflow: %d samples from %v", len(h), h)
	}
}

func TestHandlerRoutes(t *testing.T) {
	m, err := New(Sources{Version: "x"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, m)
	for _, c := range []struct {
		path, ctype string
		code        int
		contains    string
	}{
		{"/", "text/html; charset=utf-8", 200, "status.json"},
		{"/metrics", "", 200, "tapproxy_build_info{version=\"x\"} 1"},
		{"/status.json", "application/json", 200, "\"history\""},
		{"/nope", "", 404, ""},
	} {
		resp, err := ts.Client().Get(ts.URL + c.path)
		if err != nil {
			t.Fatal(err)
		}
		body := new(strings.Builder)
		_, _ = bufio.NewReader(resp.Body).WriteTo(body)
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("%s: %d, want %d", c.path, resp.StatusCode, c.code)
		}
		if c.ctype != "" && resp.Header.Get("Content-Type") != c.ctype {
			t.Errorf("%s: Content-Type %q, want %q", c.path, resp.Header.Get("Content-Type"), c.ctype)
		}
		if !strings.Contains(body.String(), c.contains) {
			t.Errorf("%s: body lacks %q", c.path, c.contains)
		}
	}
	// The page must not reference anything outside itself.
	b, err := page.ReadFile("page/index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"http://", "https://", "<link", "src=", "@import"} {
		if strings.Contains(string(b), bad) {
			t.Errorf("page contains %q: it must be self-contained", bad)
		}
	}
	resp, err := ts.Client().Post(ts.URL+"/status.json", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /status.json: %d, want 405", resp.StatusCode)
	}
}

func TestListen(t *testing.T) {
	for _, bad := range []string{"localhost:9153", "9153", ":9153", "127.0.0.1"} {
		if ln, err := Listen(bad); err == nil {
			ln.Close()
			t.Errorf("Listen(%q) accepted a non-literal address", bad)
		}
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

var _ = dto.MetricType_COUNTER

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}
