package annotate

import (
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tapproxy/tapproxy/internal/txn"
)

// Metric names the Observer registers. The latency breakdown is the one of
// the annotation (FromTransaction), so a histogram and a dnstap record never
// disagree about what "rtt" or "proxy" means.
const (
	MetricClientQueueDelay   = "tapproxy_client_queue_delay_seconds"
	MetricUpstreamRTT        = "tapproxy_upstream_rtt_seconds"
	MetricUpstreamQueueDelay = "tapproxy_upstream_queue_delay_seconds"
	MetricProxyTime          = "tapproxy_proxy_time_seconds"
	MetricQueryDuration      = "tapproxy_query_duration_seconds"
	MetricResponseSize       = "tapproxy_response_size_bytes"
	MetricResponses          = "tapproxy_responses_total"
	MetricTruncated          = "tapproxy_responses_truncated_total"
)

// Label names of the Observer's metrics.
const (
	LabelListener  = "listener"  // txn.Transaction.Local: the address the query arrived on
	LabelUpstream  = "upstream"  // txn.Transaction.Upstream, or "none" when nothing went upstream
	LabelTransport = "transport" // "udp" or "tcp"
	LabelRcode     = "rcode"     // header rcode of the reply to the client (RFC 6895 §2.3 mnemonic)
)

// LabelOther replaces the listener and upstream labels once MaxSeries label
// sets exist; LabelNone is the upstream of a transaction that never went
// upstream (ACL refusal, all upstreams down, loop).
const (
	LabelOther = "other"
	LabelNone  = "none"
)

// LatencyBuckets are the upper bounds, in seconds, of the latency
// histograms: 1, 2, 3 and 5 in every decade from 10 µs to 10 s (25 buckets
// plus +Inf). Loopback round trips and queue delays are tens of
// microseconds, cache misses tens to hundreds of milliseconds, timeouts
// seconds; adjacent bounds differ by at most a factor of 2, so a quantile
// estimated from the buckets is off by less than that.
var LatencyBuckets = []float64{
	10e-6, 20e-6, 30e-6, 50e-6,
	100e-6, 200e-6, 300e-6, 500e-6,
	1e-3, 2e-3, 3e-3, 5e-3,
	10e-3, 20e-3, 30e-3, 50e-3,
	100e-3, 200e-3, 300e-3, 500e-3,
	1, 2, 3, 5,
	10,
}

// SizeBuckets are the upper bounds, in bytes, of the response size
// histogram: the classic 512-byte UDP limit (RFC 1035 §4.2.1), the 1232-byte
// EDNS buffer recommended to avoid fragmentation (DNS flag day 2020), an
// Ethernet MTU's worth, and powers of two up to the 64 KiB maximum.
var SizeBuckets = []float64{64, 128, 256, 512, 1024, 1232, 1500, 2048, 4096, 8192, 16384, 32768, 65535}

// DefaultMaxSeries bounds the label sets (listener × upstream × transport)
// an Observer creates; transactions beyond it are counted under "other".
const DefaultMaxSeries = 256

// rcodeNames are the RFC 6895 §2.3 mnemonics of the 4-bit header rcode.
var rcodeNames = [16]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
	"YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE", "DSOTYPENI",
	"RCODE12", "RCODE13", "RCODE14", "RCODE15"}

// ObserverOptions configure an Observer. Zero values mean the defaults.
type ObserverOptions struct {
	// MaxSeries bounds the label sets (DefaultMaxSeries).
	MaxSeries int
	// Buckets overrides LatencyBuckets (seconds, increasing).
	Buckets []float64
}

// seriesKey is what the labels are made of; hashing it allocates nothing.
type seriesKey struct {
	local, up netip.AddrPort
	tr        txn.Transport
}

// series holds the label children of one label set, resolved once so that
// Submit only does atomic adds.
type series struct {
	qdelay, rtt, uqdelay, proxy, total prometheus.Observer
	size                               prometheus.Observer
	truncated                          prometheus.Counter
	rcodes                             [16]atomic.Pointer[rcodeChild]
	labels                             [3]string
}

type rcodeChild struct{ c prometheus.Counter }

// Observer is a txn.Sink that turns each finished transaction into
// Prometheus observations: the latency breakdown of the annotation
// (client-socket queue delay, upstream RTT, upstream-socket queue delay,
// time inside tapproxy, total), the reply's rcode and size, and truncation,
// labelled by listener address, upstream and transport.
//
// Submit runs on the forwarding workers. In steady state it takes no lock
// and allocates nothing: the label set is found in a copy-on-write map
// (published through an atomic pointer), and the histograms and counters are
// client_golang's, which update with atomic adds. A new label set takes a
// mutex once to build its children.
type Observer struct {
	vecs struct {
		qdelay, rtt, uqdelay, proxy, total, size *prometheus.HistogramVec
		rcode, truncated                         *prometheus.CounterVec
	}
	max   int
	m     atomic.Pointer[map[seriesKey]*series]
	full  atomic.Bool
	mu    sync.Mutex // serialises building series and rcode children
	other [2]*series // per transport, once MaxSeries is reached
}

// NewObserver returns an Observer; register it (it is a
// prometheus.Collector) to export its metrics.
func NewObserver(opts ObserverOptions) *Observer {
	if opts.MaxSeries <= 0 {
		opts.MaxSeries = DefaultMaxSeries
	}
	if len(opts.Buckets) == 0 {
		opts.Buckets = LatencyBuckets
	}
	o := &Observer{max: opts.MaxSeries}
	labels := []string{LabelListener, LabelUpstream, LabelTransport}
	hist := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	}
	o.vecs.qdelay = hist(MetricClientQueueDelay, "Client-socket queue delay: kernel receive of the query to the worker's read (SO_TIMESTAMPNS).", opts.Buckets)
	o.vecs.rtt = hist(MetricUpstreamRTT, "Upstream round trip: query handed to the upstream socket to kernel receive of the answer.", opts.Buckets)
	o.vecs.uqdelay = hist(MetricUpstreamQueueDelay, "Upstream-socket queue delay: kernel receive of the answer to the worker's read.", opts.Buckets)
	o.vecs.proxy = hist(MetricProxyTime, "Time inside tapproxy: total minus upstream round trip minus client-socket queue delay.", opts.Buckets)
	o.vecs.total = hist(MetricQueryDuration, "Kernel receive of the query to the reply handed to the client socket.", opts.Buckets)
	o.vecs.size = hist(MetricResponseSize, "Size of the reply sent to the client, in bytes.", SizeBuckets)
	o.vecs.rcode = prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricResponses,
		Help: "Replies sent to clients, by header rcode."}, append(labels, LabelRcode))
	o.vecs.truncated = prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricTruncated,
		Help: "Replies sent to clients with TC=1."}, labels)
	m := map[seriesKey]*series{}
	o.m.Store(&m)
	for tr := range o.other {
		o.other[tr] = o.newSeries(LabelOther, LabelOther, txn.Transport(tr).String())
	}
	return o
}

func (o *Observer) collectors() []prometheus.Collector {
	return []prometheus.Collector{o.vecs.qdelay, o.vecs.rtt, o.vecs.uqdelay, o.vecs.proxy, o.vecs.total,
		o.vecs.size, o.vecs.rcode, o.vecs.truncated}
}

// Describe implements prometheus.Collector.
func (o *Observer) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range o.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (o *Observer) Collect(ch chan<- prometheus.Metric) {
	for _, c := range o.collectors() {
		c.Collect(ch)
	}
}

func (o *Observer) newSeries(listener, up, tr string) *series {
	s := &series{labels: [3]string{listener, up, tr}}
	s.qdelay = o.vecs.qdelay.WithLabelValues(listener, up, tr)
	s.rtt = o.vecs.rtt.WithLabelValues(listener, up, tr)
	s.uqdelay = o.vecs.uqdelay.WithLabelValues(listener, up, tr)
	s.proxy = o.vecs.proxy.WithLabelValues(listener, up, tr)
	s.total = o.vecs.total.WithLabelValues(listener, up, tr)
	s.size = o.vecs.size.WithLabelValues(listener, up, tr)
	s.truncated = o.vecs.truncated.WithLabelValues(listener, up, tr)
	return s
}

func addrLabel(a netip.AddrPort, none string) string {
	if !a.IsValid() {
		return none
	}
	return a.String()
}

// lookup returns the series of t's label set, creating it on first sight.
func (o *Observer) lookup(t *txn.Transaction) *series {
	tr := t.Transport
	if int(tr) >= len(o.other) {
		tr = txn.UDP // unknown transports are not produced; keep the index in range
	}
	k := seriesKey{local: t.Local, up: t.Upstream, tr: tr}
	if s, ok := (*o.m.Load())[k]; ok {
		return s
	}
	if o.full.Load() {
		return o.other[tr]
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	old := *o.m.Load()
	if s, ok := old[k]; ok {
		return s
	}
	if len(old) >= o.max {
		o.full.Store(true)
		return o.other[tr]
	}
	s := o.newSeries(addrLabel(k.local, LabelNone), addrLabel(k.up, LabelNone), tr.String())
	m := make(map[seriesKey]*series, len(old)+1)
	for kk, v := range old {
		m[kk] = v
	}
	m[k] = s
	o.m.Store(&m)
	return s
}

func (o *Observer) rcode(s *series, rc uint8) prometheus.Counter {
	if c := s.rcodes[rc].Load(); c != nil {
		return c.c
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if c := s.rcodes[rc].Load(); c != nil {
		return c.c
	}
	c := &rcodeChild{o.vecs.rcode.WithLabelValues(s.labels[0], s.labels[1], s.labels[2], rcodeNames[rc])}
	s.rcodes[rc].Store(c)
	return c.c
}

const nsPerSecond = 1e9

// Submit implements txn.Sink. It never blocks and, once the transaction's
// label set and rcode have been seen, never allocates.
func (o *Observer) Submit(t *txn.Transaction) {
	s := o.lookup(t)
	a := FromTransaction(t)
	observe(s.qdelay, a.QueueDelay)
	observe(s.rtt, a.RTT)
	observe(s.uqdelay, a.UpstreamQueueDelay)
	observe(s.proxy, a.Proxy)
	observe(s.total, a.Total)
	if len(t.Response) >= 4 { // header through the rcode octet (RFC 1035 §4.1.1)
		s.size.Observe(float64(len(t.Response)))
		o.rcode(s, t.Response[3]&0x0F).Inc()
	}
	if a.Truncated {
		s.truncated.Inc()
	}
}

func observe(h prometheus.Observer, ns int64) {
	if ns >= 0 {
		h.Observe(float64(ns) / nsPerSecond)
	}
}

// RcodeName returns the label value used for a 4-bit header rcode.
func RcodeName(rc uint8) string {
	if int(rc) < len(rcodeNames) {
		return rcodeNames[rc]
	}
	return strconv.Itoa(int(rc))
}

// Tee is a txn.Sink that hands each transaction to several sinks in order
// (the Observer, then the dnstap Logger). Each must honour the txn.Sink
// contract (never block, copy what it keeps); Tee adds nothing to it.
type Tee []txn.Sink

// NewTee returns a sink for the sinks that do something (nil and
// txn.Discard are left out): txn.Discard when none is left, the sink
// itself when one is, a Tee otherwise.
func NewTee(sinks ...txn.Sink) txn.Sink {
	var out Tee
	for _, s := range sinks {
		if _, discard := s.(txn.Discard); s != nil && !discard {
			out = append(out, s)
		}
	}
	switch len(out) {
	case 0:
		return txn.Discard{}
	case 1:
		return out[0]
	}
	return out
}

// Submit implements txn.Sink.
func (t Tee) Submit(x *txn.Transaction) {
	for _, s := range t {
		s.Submit(x)
	}
}
