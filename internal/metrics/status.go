package metrics

import (
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/tap"
)

// Latency components of the live page, in the order they are stacked:
// the Observer histogram each one is read from.
var latencyParts = []struct{ key, metric string }{
	{"queue", annotate.MetricClientQueueDelay},
	{"proxy", annotate.MetricProxyTime},
	{"upstream", annotate.MetricUpstreamRTT},
	{"upstream_queue", annotate.MetricUpstreamQueueDelay},
	{"total", annotate.MetricQueryDuration},
}

// Sample is one point of the live page's history: rates and means over
// the interval that ended at T.
type Sample struct {
	T float64 `json:"t"` // Unix seconds
	// Per second over the interval.
	QPS         float64 `json:"qps"`          // client queries received (UDP datagrams + TCP messages)
	Answered    float64 `json:"answered"`     // answered (UDP + TCP)
	Drops       float64 `json:"drops"`        // queries dropped without a reply, plus kernel drops
	Timeouts    float64 `json:"timeouts"`     // forwarded queries that timed out (UDP + TCP)
	Refused     float64 `json:"refused"`      // ACL refusals (UDP + TCP)
	DnstapDrops float64 `json:"dnstap_drops"` // dnstap records dropped, every reason
	// Mean of each latency component over the interval, in seconds (keys
	// queue, proxy, upstream, upstream_queue, total); a component with no
	// observations in the interval is absent.
	Mean map[string]float64 `json:"mean"`
	// P50 and P99 of the total latency over the interval, in seconds,
	// interpolated within histogram buckets as PromQL's
	// histogram_quantile does; absent without observations.
	P50 *float64 `json:"p50,omitempty"`
	P99 *float64 `json:"p99,omitempty"`
	// InFlight is queries waiting for an upstream (UDP + TCP) at T.
	InFlight  uint64           `json:"in_flight"`
	Upstreams []UpstreamStatus `json:"upstreams"`
}

// UpstreamStatus is one upstream's state at a point in time.
type UpstreamStatus struct {
	Addr     string  `json:"addr"`
	Up       bool    `json:"up"`
	InFlight int64   `json:"in_flight"`
	SRTT     float64 `json:"srtt"` // seconds
	Queries  uint64  `json:"queries"`
	Timeouts uint64  `json:"timeouts"`
	Errors   uint64  `json:"errors"`
}

// Status is the /status.json document.
type Status struct {
	Version  string  `json:"version"`
	Start    float64 `json:"start"` // Unix seconds
	Now      float64 `json:"now"`
	Interval float64 `json:"interval"` // seconds between samples
	// Counters are server.Counters under their documented names.
	Counters  map[string]uint64   `json:"counters"`
	Dnstap    *DnstapStatus       `json:"dnstap,omitempty"`
	Zone      *annotate.ZoneStats `json:"zone,omitempty"`
	Upstreams []UpstreamStatus    `json:"upstreams"`
	// History holds the last samples, oldest first.
	History []Sample `json:"history"`
}

// DnstapStatus is the dnstap pipeline's state.
type DnstapStatus struct {
	Stats *tap.Stats `json:"stats,omitempty"`
	Sink  *SinkState `json:"sink,omitempty"`
}

// histTotal is one latency histogram summed over its label sets.
type histTotal struct {
	count  uint64
	sum    float64
	bounds []float64
	cum    []uint64
}

// snapshot is everything one sample is computed from.
type snapshot struct {
	at     time.Time
	c      server.Counters
	hasC   bool
	tap    tap.Stats
	hasTap bool
	lat    map[string]*histTotal
	ups    []UpstreamStatus
}

func (m *Metrics) snapshot(now time.Time) *snapshot {
	s := &snapshot{at: now}
	if m.src.Counters != nil {
		s.c, s.hasC = m.src.Counters(), true
	}
	if m.src.Tap != nil {
		s.tap, s.hasTap = m.src.Tap(), true
	}
	s.ups = m.upstreams()
	if m.obsReg != nil {
		s.lat = gatherHistograms(m.obsReg)
	}
	return s
}

func (m *Metrics) upstreams() []UpstreamStatus {
	if m.src.Upstreams == nil {
		return []UpstreamStatus{}
	}
	var out []UpstreamStatus
	for _, u := range m.src.Upstreams() {
		out = append(out, UpstreamStatus{Addr: u.Addr.String(), Up: u.Up(), InFlight: u.InFlight.Load(),
			SRTT: u.RTT().Seconds(), Queries: u.Queries.Load(), Timeouts: u.Timeouts.Load(), Errors: u.Errors.Load()})
	}
	return out
}

// gatherHistograms sums each Observer histogram over its label sets.
func gatherHistograms(g prometheus.Gatherer) map[string]*histTotal {
	out := map[string]*histTotal{}
	mfs, err := g.Gather()
	if err != nil {
		return out // a registry of one known collector: cannot fail in practice
	}
	for _, mf := range mfs {
		if mf.GetType() != dto.MetricType_HISTOGRAM {
			continue
		}
		h := &histTotal{}
		for _, m := range mf.GetMetric() {
			mh := m.GetHistogram()
			h.count += mh.GetSampleCount()
			h.sum += mh.GetSampleSum()
			bs := mh.GetBucket()
			if h.bounds == nil {
				for _, b := range bs {
					h.bounds = append(h.bounds, b.GetUpperBound())
				}
				h.cum = make([]uint64, len(bs))
			}
			for i, b := range bs {
				if i < len(h.cum) {
					h.cum[i] += b.GetCumulativeCount()
				}
			}
		}
		// client_golang leaves the +Inf bucket implicit (it is the
		// sample count); make it explicit for quantile.
		if n := len(h.bounds); n == 0 || !math.IsInf(h.bounds[n-1], 1) {
			h.bounds = append(h.bounds, math.Inf(1))
			h.cum = append(h.cum, h.count)
		}
		out[mf.GetName()] = h
	}
	return out
}

// drops is every query dropped without a reply (client and upstream side)
// plus the kernel's drops.
func drops(c server.Counters) uint64 {
	return c.DroppedShort + c.DroppedQR + c.DroppedACL + c.DroppedInflightFull + c.SendFailed + c.KernelDrops +
		c.TCP.DroppedQR + c.TCP.DroppedInflightFull + c.TCP.SendFailed
}

func delta(a, b uint64) float64 {
	if b < a {
		return 0 // a counter that went backwards (cannot happen): no negative rate
	}
	return float64(b - a)
}

// sample computes the interval from prev to cur.
func sample(prev, cur *snapshot) Sample {
	s := Sample{T: float64(cur.at.UnixNano()) / 1e9, Mean: map[string]float64{}, Upstreams: cur.ups}
	dt := cur.at.Sub(prev.at).Seconds()
	if dt <= 0 {
		dt = 1
	}
	if cur.hasC {
		p, c := prev.c, cur.c
		s.QPS = delta(p.Received+p.TCP.Received, c.Received+c.TCP.Received) / dt
		s.Answered = delta(p.Answered+p.TCP.Answered, c.Answered+c.TCP.Answered) / dt
		s.Drops = delta(drops(p), drops(c)) / dt
		s.Timeouts = delta(p.TimedOut+p.TCP.TimedOut, c.TimedOut+c.TCP.TimedOut) / dt
		s.Refused = delta(p.RefusedACL+p.TCP.RefusedACL, c.RefusedACL+c.TCP.RefusedACL) / dt
		s.InFlight = c.InFlight + c.TCP.InFlight
	}
	if cur.hasTap {
		s.DnstapDrops = delta(prev.tap.Dropped(), cur.tap.Dropped()) / dt
	}
	for _, part := range latencyParts {
		a, b := prev.lat[part.metric], cur.lat[part.metric]
		if b == nil {
			continue
		}
		var pc uint64
		var ps float64
		if a != nil {
			pc, ps = a.count, a.sum
		}
		if b.count > pc {
			s.Mean[part.key] = (b.sum - ps) / float64(b.count-pc)
		}
	}
	if b := cur.lat[annotate.MetricQueryDuration]; b != nil {
		d := bucketDelta(prev.lat[annotate.MetricQueryDuration], b)
		if q, ok := quantile(0.5, b.bounds, d); ok {
			s.P50 = &q
		}
		if q, ok := quantile(0.99, b.bounds, d); ok {
			s.P99 = &q
		}
	}
	return s
}

func bucketDelta(a, b *histTotal) []uint64 {
	d := make([]uint64, len(b.cum))
	for i := range b.cum {
		d[i] = b.cum[i]
		if a != nil && i < len(a.cum) && a.cum[i] <= d[i] {
			d[i] -= a.cum[i]
		}
	}
	return d
}

// quantile estimates the q-quantile from cumulative bucket counts (the
// last bound +Inf) with linear interpolation inside the bucket, as PromQL's
// histogram_quantile: the lowest bucket is taken to start at 0, and a rank
// in the +Inf bucket returns the last finite bound. It reports false
// without observations.
func quantile(q float64, bounds []float64, cum []uint64) (float64, bool) {
	if len(cum) == 0 || len(bounds) != len(cum) {
		return 0, false
	}
	total := cum[len(cum)-1]
	if total == 0 {
		return 0, false
	}
	rank := q * float64(total)
	for i, c := range cum {
		if float64(c) >= rank {
			lo, prevC := 0.0, uint64(0)
			if i > 0 {
				lo, prevC = bounds[i-1], cum[i-1]
			}
			hi := bounds[i]
			if math.IsInf(hi, 1) {
				return lo, true
			}
			inBucket := float64(c - prevC)
			if inBucket == 0 {
				return hi, true
			}
			return lo + (hi-lo)*(rank-float64(prevC))/inBucket, true
		}
	}
	return bounds[len(bounds)-1], true
}

// history is a ring of the last samples.
type history struct {
	mu   sync.Mutex
	buf  []Sample
	next int
	full bool
	prev *snapshot
}

func (h *history) add(s Sample) {
	h.buf[h.next] = s
	h.next = (h.next + 1) % len(h.buf)
	if h.next == 0 {
		h.full = true
	}
}

func (h *history) list() []Sample {
	if !h.full {
		return append([]Sample(nil), h.buf[:h.next]...)
	}
	return append(append([]Sample(nil), h.buf[h.next:]...), h.buf[:h.next]...)
}

// takeSample records one sample; the first call only sets the baseline.
func (m *Metrics) takeSample(now time.Time) {
	cur := m.snapshot(now)
	m.hist.mu.Lock()
	prev := m.hist.prev
	m.hist.prev = cur
	if prev != nil {
		m.hist.add(sample(prev, cur))
	}
	n := m.hist.next
	if m.hist.full {
		n = len(m.hist.buf)
	}
	m.hist.mu.Unlock()
	if prev != nil && m.opts.OnSample != nil {
		m.opts.OnSample(n)
	}
}

// Status returns the current status document.
func (m *Metrics) Status() Status {
	now := time.Now()
	st := Status{Version: m.src.Version, Start: float64(m.start.UnixNano()) / 1e9, Now: float64(now.UnixNano()) / 1e9,
		Interval: m.opts.Interval.Seconds(), Counters: map[string]uint64{}, Upstreams: m.upstreams()}
	if m.src.Counters != nil {
		a := m.src.Counters().Attrs()
		for i := 0; i+1 < len(a); i += 2 {
			k, _ := a[i].(string)
			if v, ok := toFloat(a[i+1]); ok {
				st.Counters[k] = uint64(v)
			}
		}
	}
	if m.src.Tap != nil || m.src.Sink != nil {
		st.Dnstap = &DnstapStatus{}
		if m.src.Tap != nil {
			s := m.src.Tap()
			st.Dnstap.Stats = &s
		}
		if m.src.Sink != nil {
			s := m.src.Sink()
			st.Dnstap.Sink = &s
		}
	}
	if m.src.Zone != nil {
		z := m.src.Zone()
		st.Zone = &z
	}
	m.hist.mu.Lock()
	st.History = m.hist.list()
	m.hist.mu.Unlock()
	return st
}
