package metrics

import (
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/tap"
	"github.com/tapproxy/tapproxy/upstream"
)

// Namespace prefixes every tapproxy metric.
const Namespace = "tapproxy"

// SinkState is the dnstap output's connection state.
type SinkState struct {
	// Kind is "file" or "socket" (unix or TCP collector).
	Kind string
	// Up: the output accepts frames now (a file that is not failing, a
	// socket with at least one collector connection).
	Up bool
	// Connections is the number of collector connections up (0 for a file).
	Connections int
	// FramesLost counts frames the output accepted and then lost (buffered
	// when a connection died, or not written when a file was closed).
	FramesLost uint64
}

// Sources are the functions the collectors call on each scrape. A nil
// field leaves its metrics out of the registry.
type Sources struct {
	// Version is exported as tapproxy_build_info{version}.
	Version string
	// Counters returns the server's fate counters (server.Server.Counters).
	Counters func() server.Counters
	// Upstreams returns the pool's upstreams (upstream.Pool.Upstreams).
	Upstreams func() []*upstream.Upstream
	// SocketDrops returns each UDP socket's kernel drop count
	// (server.Server.SocketDrops); nil leaves the per-socket metric out.
	SocketDrops func() []server.SocketDrop
	// Tap returns the dnstap Logger's counters (tap.Logger.Stats).
	Tap func() tap.Stats
	// Sink returns the dnstap output's state.
	Sink func() SinkState
	// Zone returns the zone cut cache's counters (annotate.ZoneCache.Stats).
	Zone func() annotate.ZoneStats
	// Observer holds the latency histograms; it must be the Observer that
	// the server's sink feeds.
	Observer *annotate.Observer
}

// serverGauges are the server.Counters keys that go up and down.
var serverGauges = map[string]bool{
	"in_flight": true, "tcp_open": true, "tcp_in_flight": true, "tcp_unsent": true, "tcp_up_open": true,
}

// serverHelp documents the server.Counters keys (README "Counters: every
// datagram has exactly one fate"). Keys without an entry get a generic
// help naming the key, so a counter added to server.Counters is exported
// at once and the README test points at the missing documentation.
var serverHelp = map[string]string{
	"received":                "Client UDP datagrams received (the sum of the client fates below).",
	"dropped_short":           "Client datagrams shorter than the 12-byte DNS header: dropped.",
	"dropped_qr":              "Client datagrams with QR=1 (responses): dropped.",
	"refused_acl":             "Client queries outside the ACL answered REFUSED.",
	"dropped_acl":             "Client queries outside the ACL dropped (--acl-action drop).",
	"dropped_inflight_full":   "Client queries dropped because the in-flight table was full.",
	"send_failed":             "Client queries that could not be sent upstream.",
	"forwarded":               "Client queries sent upstream (answered + timed out + reply failed + in flight).",
	"malformed":               "Forwarded queries whose question did not parse (informational).",
	"servfail_all_down":       "Client queries answered SERVFAIL because every upstream was down.",
	"loop_detected":           "Queries that came from tapproxy's own upstream socket, answered SERVFAIL.",
	"failovers":               "Queries re-sent to another upstream after an ICMP unreachable (informational).",
	"retries_denied":          "Failovers refused by the retry budget (informational).",
	"answered":                "Forwarded queries whose upstream answer was relayed to the client.",
	"timed_out":               "Forwarded queries without an acceptable answer within the timeout.",
	"servfail_sent":           "Timed-out queries answered SERVFAIL by tapproxy (informational, part of timed out).",
	"servfail_send_failed":    "Queries whose upstream send failed, answered SERVFAIL by tapproxy (--servfail-on-timeout; informational, part of send failed).",
	"reply_failed":            "Answered queries whose reply to the client could not be sent.",
	"in_flight":               "UDP queries waiting for an upstream answer now.",
	"resp_received":           "Datagrams received on upstream sockets (the sum of the response fates below).",
	"resp_matched":            "Upstream responses accepted for an in-flight query (RFC 5452 section 9.1).",
	"resp_short":              "Upstream datagrams shorter than the DNS header: dropped.",
	"resp_not_response":       "Upstream datagrams with QR=0: dropped.",
	"resp_wrong_source":       "Upstream datagrams from an address or port the query was not sent to: dropped.",
	"resp_unknown_id":         "Upstream responses with an ID not in flight (forged or very late): dropped.",
	"resp_late":               "Upstream responses to a query that had already timed out: dropped.",
	"resp_question_mismatch":  "Upstream responses whose question differs from the query's: dropped.",
	"resp_read_errors":        "Read errors on upstream sockets (informational).",
	"dropped_panic":           "Client queries dropped because handling them panicked (a bug; recovered, logged with the stack).",
	"resp_panic":              "Upstream datagrams dropped because classifying them panicked (a bug; recovered, logged with the stack).",
	"complete_panic":          "Recovered panics while completing UDP queries whose fate was already counted (relaying the answer, health update, dnstap record, timeout, failover); fates stay counted once, the batch's dnstap records may be missing (a bug).",
	"panics":                  "Recovered panics on the DNS path, UDP and TCP (informational; each also counts in a *_panic counter).",
	"port_rotations":          "Upstream sockets replaced by one on a fresh random source port (--upstream-port-rotate; informational).",
	"port_rotations_deferred": "Upstream queries sent on a socket past its rotation point because its replacement was not ready (the previous port still had queries in flight, or opening failed; informational).",
	"port_bind_retries":       "Random upstream source ports found in use (EADDRINUSE), each followed by a new draw (informational).",
	"port_bind_fallbacks":     "Upstream sockets left to the kernel's port choice after too many random ports in use (informational).",
	"port_open_errors":        "Failed attempts to open an upstream socket for a new source port, retried with backoff (informational).",
	"kernel_drops":            "Datagrams the kernel dropped on a full socket receive queue (SO_MEMINFO, SO_RXQ_OVFL), summed over all client and upstream UDP sockets.",
}

func serverMetricName(key string) (string, prometheus.ValueType) {
	if serverGauges[key] {
		return Namespace + "_" + key, prometheus.GaugeValue
	}
	return Namespace + "_" + key + "_total", prometheus.CounterValue
}

func serverHelpText(key string) string {
	if h, ok := serverHelp[key]; ok {
		return h
	}
	if rest, ok := strings.CutPrefix(key, "tcp_"); ok {
		return "DNS over TCP: " + strings.ReplaceAll(rest, "_", " ") + " (server counter " + key + ")."
	}
	return "Server counter " + key + " (README, Counters)."
}

// serverCollector exports server.Counters: every key of Counters.Attrs,
// read once per scrape.
type serverCollector struct {
	counters func() server.Counters
	keys     []string
	descs    map[string]*prometheus.Desc
	types    map[string]prometheus.ValueType
}

func newServerCollector(f func() server.Counters) (*serverCollector, error) {
	c := &serverCollector{counters: f, descs: map[string]*prometheus.Desc{}, types: map[string]prometheus.ValueType{}}
	attrs := f().Attrs()
	for i := 0; i+1 < len(attrs); i += 2 {
		key, ok := attrs[i].(string)
		if !ok {
			return nil, fmt.Errorf("metrics: server counter attribute %d is not a string key", i)
		}
		if _, dup := c.descs[key]; dup {
			return nil, fmt.Errorf("metrics: server counter %q appears twice", key)
		}
		name, typ := serverMetricName(key)
		c.keys = append(c.keys, key)
		c.descs[key] = prometheus.NewDesc(name, serverHelpText(key), nil, nil)
		c.types[key] = typ
	}
	return c, nil
}

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, k := range c.keys {
		ch <- c.descs[k]
	}
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	attrs := c.counters().Attrs()
	for i := 0; i+1 < len(attrs); i += 2 {
		key, _ := attrs[i].(string)
		d, ok := c.descs[key]
		if !ok {
			continue // a key that appeared after start-up: cannot be described now
		}
		v, ok := toFloat(attrs[i+1])
		if !ok {
			continue
		}
		ch <- prometheus.MustNewConstMetric(d, c.types[key], v)
	}
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case uint64:
		return float64(x), true
	case int64:
		return float64(x), true
	case int:
		return float64(x), true
	case uint32:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// socketCollector exports the kernel's receive-queue drop counter per UDP
// socket, for the sockets where SO_RXQ_OVFL took (the count itself is also
// read with SO_MEMINFO: listener.Conn.KernelDrops).
type socketCollector struct {
	drops func() []server.SocketDrop
	desc  *prometheus.Desc
}

func newSocketCollector(f func() []server.SocketDrop) *socketCollector {
	return &socketCollector{drops: f, desc: prometheus.NewDesc(Namespace+"_socket_kernel_drops_total",
		"Datagrams the kernel dropped on full UDP socket receive queues (SO_MEMINFO, SO_RXQ_OVFL), per client listen address (kind=client) and per upstream (kind=upstream, socket is the upstream's address: its sockets' source ports rotate; closed sockets included); only where the option took.",
		[]string{"kind", "socket"}, nil)}
}

func (c *socketCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *socketCollector) Collect(ch chan<- prometheus.Metric) {
	for _, d := range c.drops() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(d.Drops), d.Kind, d.Local.String())
	}
}

// upstreamCollector exports the pool's per-upstream figures.
type upstreamCollector struct {
	ups                                         func() []*upstream.Upstream
	up, inflight, srtt, queries, timeouts, errs *prometheus.Desc
	transitions                                 *prometheus.Desc
}

func newUpstreamCollector(f func() []*upstream.Upstream) *upstreamCollector {
	l := []string{"upstream"}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(Namespace+"_upstream_"+name, help, l, nil)
	}
	return &upstreamCollector{ups: f,
		up:          d("up", "1 when the upstream is considered healthy, 0 when down (passive and active health checks)."),
		inflight:    d("in_flight", "Queries sent to the upstream and not yet answered or timed out."),
		srtt:        d("srtt_seconds", "Smoothed upstream round-trip time (EWMA, alpha 1/8), 0 before the first answer."),
		queries:     d("queries_total", "Queries sent to the upstream, failovers included."),
		timeouts:    d("timeouts_total", "Queries to the upstream that timed out."),
		errs:        d("errors_total", "Fast failures: refused sends and ICMP unreachable on the upstream's sockets."),
		transitions: d("transitions_total", "Health state changes (up to down and back)."),
	}
}

func (c *upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.inflight, c.srtt, c.queries, c.timeouts, c.errs, c.transitions} {
		ch <- d
	}
}

func (c *upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.ups() {
		a := u.Addr.String()
		up := 0.0
		if u.Up() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, a)
		ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(u.InFlight.Load()), a)
		ch <- prometheus.MustNewConstMetric(c.srtt, prometheus.GaugeValue, u.RTT().Seconds(), a)
		ch <- prometheus.MustNewConstMetric(c.queries, prometheus.CounterValue, float64(u.Queries.Load()), a)
		ch <- prometheus.MustNewConstMetric(c.timeouts, prometheus.CounterValue, float64(u.Timeouts.Load()), a)
		ch <- prometheus.MustNewConstMetric(c.errs, prometheus.CounterValue, float64(u.Errors.Load()), a)
		ch <- prometheus.MustNewConstMetric(c.transitions, prometheus.CounterValue, float64(u.Transitions.Load()), a)
	}
}

// DnstapDropReasons are the reason label values of
// tapproxy_dnstap_records_dropped_total, in tap.Stats order.
var DnstapDropReasons = []string{"queue_full", "too_large", "write_error", "shutdown", "panic"}

// tapCollector exports tap.Logger's Stats and the output's state.
type tapCollector struct {
	stats                                          func() tap.Stats
	sink                                           func() SinkState
	submitted, sampled, produced, written, dropped *prometheus.Desc
	flushes, flushErrs                             *prometheus.Desc
	up, conns, lost                                *prometheus.Desc
}

func newTapCollector(stats func() tap.Stats, sink func() SinkState) *tapCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(Namespace+"_dnstap_"+name, help, labels, nil)
	}
	c := &tapCollector{stats: stats, sink: sink}
	if stats != nil {
		c.submitted = d("transactions_total", "Transactions handed to the dnstap logger.")
		c.sampled = d("sampled_out_total", "Transactions skipped by --dnstap-sample (no records produced).")
		c.produced = d("records_produced_total", "dnstap records produced (written + dropped + queued).")
		c.written = d("records_written_total", "dnstap records accepted by the output.")
		c.dropped = d("records_dropped_total", "dnstap records dropped, by reason: queue_full (the queue had no room), too_large (frame above the size limit), write_error (the output refused it), shutdown (still queued at the drain deadline), panic (encoding it panicked: a bug, recovered).", "reason")
		c.flushes = d("flushes_total", "Successful flushes of the dnstap output.")
		c.flushErrs = d("flush_errors_total", "Failed flushes of the dnstap output.")
	}
	if sink != nil {
		c.up = d("sink_up", "1 when the dnstap output accepts frames (file writable, or at least one collector connection).", "kind")
		c.conns = d("connections", "dnstap collector connections up (0 for a file output).", "kind")
		c.lost = d("frames_lost_total", "dnstap frames the output accepted and then lost (connection died, file not closable).", "kind")
	}
	return c
}

func (c *tapCollector) descs() []*prometheus.Desc {
	var out []*prometheus.Desc
	for _, d := range []*prometheus.Desc{c.submitted, c.sampled, c.produced, c.written, c.dropped, c.flushes, c.flushErrs, c.up, c.conns, c.lost} {
		if d != nil {
			out = append(out, d)
		}
	}
	return out
}

func (c *tapCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
}

func (c *tapCollector) Collect(ch chan<- prometheus.Metric) {
	if c.stats != nil {
		s := c.stats()
		cv := prometheus.CounterValue
		ch <- prometheus.MustNewConstMetric(c.submitted, cv, float64(s.Submitted))
		ch <- prometheus.MustNewConstMetric(c.sampled, cv, float64(s.SampledOut))
		ch <- prometheus.MustNewConstMetric(c.produced, cv, float64(s.Produced))
		ch <- prometheus.MustNewConstMetric(c.written, cv, float64(s.Written))
		for i, v := range []uint64{s.DroppedQueueFull, s.DroppedTooLarge, s.DroppedWriteError, s.DroppedShutdown, s.DroppedPanic} {
			ch <- prometheus.MustNewConstMetric(c.dropped, cv, float64(v), DnstapDropReasons[i])
		}
		ch <- prometheus.MustNewConstMetric(c.flushes, cv, float64(s.Flushes))
		ch <- prometheus.MustNewConstMetric(c.flushErrs, cv, float64(s.FlushErrors))
	}
	if c.sink != nil {
		st := c.sink()
		up := 0.0
		if st.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, st.Kind)
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(st.Connections), st.Kind)
		ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(st.FramesLost), st.Kind)
	}
}

// zoneCollector exports the zone cut cache's counters.
type zoneCollector struct {
	stats                                           func() annotate.ZoneStats
	entries, lookups, hits, learned, renewed, outBw *prometheus.Desc
	malformed                                       *prometheus.Desc
}

func newZoneCollector(f func() annotate.ZoneStats) *zoneCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(Namespace+"_zone_cache_"+name, help, nil, nil)
	}
	return &zoneCollector{stats: f,
		entries:   d("entries", "Zone apexes in the zone cut cache."),
		lookups:   d("lookups_total", "Zone cut lookups (query_zone for dnstap records)."),
		hits:      d("hits_total", "Zone cut lookups that found an enclosing zone."),
		learned:   d("learned_total", "New zone apexes learned from SOA and NS owners in answers."),
		renewed:   d("renewed_total", "SOA and NS owners seen again for a known apex."),
		outBw:     d("out_of_bailiwick_total", "SOA and NS owners ignored because they do not enclose the question name."),
		malformed: d("malformed_total", "Answers the zone cut cache could not parse (ignored)."),
	}
}

func (c *zoneCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.entries, c.lookups, c.hits, c.learned, c.renewed, c.outBw, c.malformed} {
		ch <- d
	}
}

func (c *zoneCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	cv := prometheus.CounterValue
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Entries))
	ch <- prometheus.MustNewConstMetric(c.lookups, cv, float64(s.Lookups))
	ch <- prometheus.MustNewConstMetric(c.hits, cv, float64(s.Hits))
	ch <- prometheus.MustNewConstMetric(c.learned, cv, float64(s.Learned))
	ch <- prometheus.MustNewConstMetric(c.renewed, cv, float64(s.Renewed))
	ch <- prometheus.MustNewConstMetric(c.outBw, cv, float64(s.OutOfBailiwick))
	ch <- prometheus.MustNewConstMetric(c.malformed, cv, float64(s.Malformed))
}

// NewRegistry builds a registry with the collectors for src, plus the Go
// runtime and process collectors (go_*, process_*) and
// tapproxy_build_info.
func NewRegistry(src Sources) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	bi := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "build_info",
		Help: "Always 1; the version label is the running tapproxy's.", ConstLabels: prometheus.Labels{"version": src.Version}})
	bi.Set(1)
	cs = append(cs, bi)
	if src.Counters != nil {
		sc, err := newServerCollector(src.Counters)
		if err != nil {
			return nil, err
		}
		cs = append(cs, sc)
	}
	if src.Upstreams != nil {
		cs = append(cs, newUpstreamCollector(src.Upstreams))
	}
	if src.SocketDrops != nil {
		cs = append(cs, newSocketCollector(src.SocketDrops))
	}
	if src.Tap != nil || src.Sink != nil {
		cs = append(cs, newTapCollector(src.Tap, src.Sink))
	}
	if src.Zone != nil {
		cs = append(cs, newZoneCollector(src.Zone))
	}
	if src.Observer != nil {
		cs = append(cs, src.Observer)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: registering %T: %w", c, err)
		}
	}
	return reg, nil
}
