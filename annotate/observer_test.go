package annotate

import (
	"fmt"
	"math"
	"net/netip"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tapproxy/tapproxy/internal/txn"
)

var (
	lis1 = netip.MustParseAddrPort("127.0.0.1:53")
	lis2 = netip.MustParseAddrPort("[::1]:53")
	up1  = netip.MustParseAddrPort("127.0.0.2:5353")
	up2  = netip.MustParseAddrPort("127.0.0.3:5353")
)

// answered builds an answered transaction whose spans are, in
// microseconds: qdelay, then rtt after proxyBefore, then uqdelay, then the
// rest until the reply. The response is n bytes with the given rcode.
func answered(local, up netip.AddrPort, tr txn.Transport, qdelay, proxyBefore, rtt, uqdelay, proxyAfter int64, rcode byte, n int) *txn.Transaction {
	const us = 1000
	t0 := int64(1_700_000_000_000_000_000)
	t := &txn.Transaction{Transport: tr, Local: local, Upstream: up, Outcome: txn.Answered}
	t.QueryKernel = t0
	t.QueryRead = t0 + qdelay*us
	t.UpstreamSent = t.QueryRead + proxyBefore*us
	t.ResponseKernel = t.UpstreamSent + rtt*us
	t.ResponseRead = t.ResponseKernel + uqdelay*us
	t.ReplySent = t.ResponseRead + proxyAfter*us
	t.Query = make([]byte, 30)
	if n >= 4 {
		t.Response = make([]byte, n)
		t.Response[2] = 0x80
		t.Response[3] = rcode
	}
	return t
}

// family gathers one metric family from reg.
func family(t *testing.T, reg *prometheus.Registry, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

func labelsOf(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

// metricWith returns the metric of mf with exactly the given labels.
func metricWith(t *testing.T, mf *dto.MetricFamily, want map[string]string) *dto.Metric {
	t.Helper()
	if mf == nil {
		t.Fatalf("family missing (want %v)", want)
	}
next:
	for _, m := range mf.GetMetric() {
		l := labelsOf(m)
		if len(l) != len(want) {
			continue
		}
		for k, v := range want {
			if l[k] != v {
				continue next
			}
		}
		return m
	}
	t.Fatalf("%s: no series %v", mf.GetName(), want)
	return nil
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-12+1e-9*math.Abs(b) }

func TestObserverHistograms(t *testing.T) {
	o := NewObserver(ObserverOptions{})
	reg := prometheus.NewRegistry()
	reg.MustRegister(o)

	// Two answered UDP queries on lis1 via up1, one TCP on lis2 via up2
	// (truncated flag set), one timeout (no response), one ACL refusal.
	a := answered(lis1, up1, txn.UDP, 10, 5, 1000, 3, 7, 0, 100)
	b := answered(lis1, up1, txn.UDP, 30, 5, 3000, 1, 9, 3, 600)
	c := answered(lis2, up2, txn.TCP, 2, 1, 20000, 0, 1, 0, 2000)
	c.Flags |= txn.Truncated
	to := answered(lis1, up1, txn.UDP, 4, 2, 0, 0, 0, 0, 0)
	to.Outcome, to.Response, to.ResponseKernel, to.ResponseRead, to.ReplySent = txn.TimedOut, nil, 0, 0, 0
	ref := &txn.Transaction{Transport: txn.UDP, Local: lis1, Outcome: txn.Refused,
		QueryKernel: 1000, QueryRead: 3000, ReplySent: 9000, Response: []byte{0, 0, 0x80, 5}}
	for _, x := range []*txn.Transaction{a, b, c, to, ref} {
		o.Submit(x)
	}

	l1u1 := map[string]string{LabelListener: "127.0.0.1:53", LabelUpstream: "127.0.0.2:5353", LabelTransport: "udp"}
	l2u2 := map[string]string{LabelListener: "[::1]:53", LabelUpstream: "127.0.0.3:5353", LabelTransport: "tcp"}
	l1none := map[string]string{LabelListener: "127.0.0.1:53", LabelUpstream: LabelNone, LabelTransport: "udp"}
	type want struct {
		metric string
		labels map[string]string
		count  uint64
		sum    float64 // seconds (or bytes)
	}
	for _, w := range []want{
		{MetricClientQueueDelay, l1u1, 3, (10 + 30 + 4) * 1e-6},
		{MetricUpstreamRTT, l1u1, 2, (1000 + 3000) * 1e-6},
		{MetricUpstreamQueueDelay, l1u1, 2, (3 + 1) * 1e-6},
		{MetricProxyTime, l1u1, 2, (5 + 3 + 7 + 5 + 1 + 9) * 1e-6},
		{MetricQueryDuration, l1u1, 2, (10 + 5 + 1000 + 3 + 7 + 30 + 5 + 3000 + 1 + 9) * 1e-6},
		{MetricResponseSize, l1u1, 2, 700},
		{MetricUpstreamRTT, l2u2, 1, 20000e-6},
		{MetricQueryDuration, l2u2, 1, 20004e-6},
		{MetricResponseSize, l2u2, 1, 2000},
		{MetricClientQueueDelay, l1none, 1, 2e-6},
		{MetricQueryDuration, l1none, 1, 8e-6},
		{MetricUpstreamRTT, l1none, 0, 0},
		{MetricProxyTime, l1none, 0, 0},
	} {
		h := metricWith(t, family(t, reg, w.metric), w.labels).GetHistogram()
		if h.GetSampleCount() != w.count || !near(h.GetSampleSum(), w.sum) {
			t.Errorf("%s%v: count %d sum %g, want %d %g", w.metric, w.labels, h.GetSampleCount(), h.GetSampleSum(), w.count, w.sum)
		}
	}
	// The 1000 µs RTT falls in the le=0.001 bucket, the 3000 µs one in le=0.003.
	h := metricWith(t, family(t, reg, MetricUpstreamRTT), l1u1).GetHistogram()
	for _, bk := range h.GetBucket() {
		var want uint64
		switch ub := bk.GetUpperBound(); {
		case ub >= 0.003:
			want = 2
		case ub >= 0.001:
			want = 1
		}
		if bk.GetCumulativeCount() != want {
			t.Errorf("rtt bucket le=%g: %d, want %d", bk.GetUpperBound(), bk.GetCumulativeCount(), want)
		}
	}
	rc := family(t, reg, MetricResponses)
	for _, w := range []struct {
		labels map[string]string
		n      float64
	}{
		{map[string]string{LabelListener: "127.0.0.1:53", LabelUpstream: "127.0.0.2:5353", LabelTransport: "udp", LabelRcode: "NOERROR"}, 1},
		{map[string]string{LabelListener: "127.0.0.1:53", LabelUpstream: "127.0.0.2:5353", LabelTransport: "udp", LabelRcode: "NXDOMAIN"}, 1},
		{map[string]string{LabelListener: "[::1]:53", LabelUpstream: "127.0.0.3:5353", LabelTransport: "tcp", LabelRcode: "NOERROR"}, 1},
		{map[string]string{LabelListener: "127.0.0.1:53", LabelUpstream: LabelNone, LabelTransport: "udp", LabelRcode: "REFUSED"}, 1},
	} {
		if got := metricWith(t, rc, w.labels).GetCounter().GetValue(); got != w.n {
			t.Errorf("responses%v = %g, want %g", w.labels, got, w.n)
		}
	}
	if n := len(rc.GetMetric()); n != 4 {
		t.Errorf("%d rcode series, want 4 (only rcodes seen are exported)", n)
	}
	tc := family(t, reg, MetricTruncated)
	if got := metricWith(t, tc, l2u2).GetCounter().GetValue(); got != 1 {
		t.Errorf("truncated tcp = %g, want 1", got)
	}
	if got := metricWith(t, tc, l1u1).GetCounter().GetValue(); got != 0 {
		t.Errorf("truncated udp = %g, want 0", got)
	}
}

func TestObserverMaxSeries(t *testing.T) {
	o := NewObserver(ObserverOptions{MaxSeries: 2})
	reg := prometheus.NewRegistry()
	reg.MustRegister(o)
	for i := 0; i < 5; i++ {
		local := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(10 + i)}), 53)
		o.Submit(answered(local, up1, txn.UDP, 1, 1, 1, 1, 1, 0, 50))
	}
	o.Submit(answered(netip.MustParseAddrPort("127.0.0.10:53"), up1, txn.UDP, 1, 1, 1, 1, 1, 0, 50))
	mf := family(t, reg, MetricQueryDuration)
	if n := len(mf.GetMetric()); n != 2+2 { // two real, two "other" (udp, tcp) made up front
		t.Fatalf("%d series, want 4", n)
	}
	other := metricWith(t, mf, map[string]string{LabelListener: LabelOther, LabelUpstream: LabelOther, LabelTransport: "udp"})
	if got := other.GetHistogram().GetSampleCount(); got != 3 {
		t.Errorf("other = %d, want 3", got)
	}
	first := metricWith(t, mf, map[string]string{LabelListener: "127.0.0.10:53", LabelUpstream: "127.0.0.2:5353", LabelTransport: "udp"})
	if got := first.GetHistogram().GetSampleCount(); got != 2 {
		t.Errorf("first series = %d, want 2", got)
	}
}

func TestObserverSubmitAllocs(t *testing.T) {
	o := NewObserver(ObserverOptions{})
	txs := []*txn.Transaction{
		answered(lis1, up1, txn.UDP, 10, 5, 1000, 3, 7, 0, 100),
		answered(lis1, up2, txn.UDP, 10, 5, 1000, 3, 7, 3, 100),
		answered(lis2, up1, txn.TCP, 10, 5, 1000, 3, 7, 2, 100),
	}
	txs[2].Flags |= txn.Truncated
	for _, x := range txs { // first sight builds the label children
		o.Submit(x)
	}
	if n := testing.AllocsPerRun(1000, func() {
		for _, x := range txs {
			o.Submit(x)
		}
	}); n != 0 {
		t.Errorf("Submit allocates %.1f times per 3 transactions in steady state, want 0", n)
	}
	tee := Tee{o, txn.Discard{}}
	if n := testing.AllocsPerRun(1000, func() { tee.Submit(txs[0]) }); n != 0 {
		t.Errorf("Tee.Submit allocates %.1f times, want 0", n)
	}
}

// TestObserverConcurrent submits from several goroutines, creating label
// sets concurrently; run with -race. Every transaction must be counted
// exactly once.
func TestObserverConcurrent(t *testing.T) {
	o := NewObserver(ObserverOptions{MaxSeries: 8})
	reg := prometheus.NewRegistry()
	reg.MustRegister(o)
	const workers, per = 8, 500
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				local := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(1 + i%12)}), 53)
				o.Submit(answered(local, up1, txn.Transport(i%2), 1, 1, 1, 1, 1, byte(i%6), 50))
			}
		}()
	}
	wg.Wait()
	var total, other uint64
	for _, m := range family(t, reg, MetricQueryDuration).GetMetric() {
		total += m.GetHistogram().GetSampleCount()
		if labelsOf(m)[LabelListener] == LabelOther {
			other += m.GetHistogram().GetSampleCount()
		}
	}
	if total != workers*per {
		t.Errorf("counted %d transactions, want %d", total, workers*per)
	}
	if other == 0 {
		t.Errorf("nothing counted under %q, want some (12 label sets > 8)", LabelOther)
	}
	var rcodes float64
	for _, m := range family(t, reg, MetricResponses).GetMetric() {
		rcodes += m.GetCounter().GetValue()
	}
	if rcodes != workers*per {
		t.Errorf("rcode counters sum to %g, want %d", rcodes, workers*per)
	}
}

func TestNewTee(t *testing.T) {
	if _, ok := NewTee().(txn.Discard); !ok {
		t.Errorf("NewTee() is not Discard")
	}
	o := NewObserver(ObserverOptions{})
	if s := NewTee(nil, o, txn.Discard{}); s != txn.Sink(o) {
		t.Errorf("NewTee(nil, o, Discard) = %T, want the observer itself", s)
	}
	var got []string
	rec := func(name string) txn.Sink { return sinkFunc(func(*txn.Transaction) { got = append(got, name) }) }
	NewTee(rec("a"), nil, rec("b")).Submit(&txn.Transaction{})
	if fmt.Sprint(got) != "[a b]" {
		t.Errorf("order %v, want [a b]", got)
	}
}

type sinkFunc func(*txn.Transaction)

func (f sinkFunc) Submit(t *txn.Transaction) { f(t) }

func TestRcodeName(t *testing.T) {
	for rc, want := range map[uint8]string{0: "NOERROR", 3: "NXDOMAIN", 5: "REFUSED", 11: "DSOTYPENI", 15: "RCODE15", 16: "16"} {
		if got := RcodeName(rc); got != want {
			t.Errorf("RcodeName(%d) = %q, want %q", rc, got, want)
		}
	}
}

// BenchmarkObserverSubmitParallel: Submit from many workers at once, as the
// forwarding workers call it (atomic histogram updates, no lock).
func BenchmarkObserverSubmitParallel(b *testing.B) {
	o := NewObserver(ObserverOptions{})
	txs := []*txn.Transaction{
		answered(lis1, up1, txn.UDP, 10, 5, 1000, 3, 7, 0, 100),
		answered(lis1, up2, txn.UDP, 10, 5, 2000, 3, 7, 3, 100),
		answered(lis2, up1, txn.TCP, 10, 5, 500, 3, 7, 0, 100),
	}
	for _, x := range txs {
		o.Submit(x)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			o.Submit(txs[i%len(txs)])
			i++
		}
	})
}
