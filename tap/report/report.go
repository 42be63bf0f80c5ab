package report

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/tap/reader"
)

// Options tune a report. Zero values mean the defaults.
type Options struct {
	// Top is the number of query names and clients listed (default 10).
	Top int
	// Bucket is the width of the time series buckets; 0 picks 1 s, or a
	// wider round value so that there are at most MaxBuckets.
	Bucket time.Duration
	// MaxScatter bounds the points of the HTML latency scatter plot
	// (default 4000; evenly thinned beyond).
	MaxScatter int
}

// MaxBuckets bounds the automatic time series length.
const MaxBuckets = 300

// Dist summarises latencies (nanoseconds). Percentiles are nearest-rank.
type Dist struct {
	N    int   `json:"n"`
	Mean int64 `json:"mean_ns"`
	P50  int64 `json:"p50_ns"`
	P90  int64 `json:"p90_ns"`
	P99  int64 `json:"p99_ns"`
	P999 int64 `json:"p999_ns"`
	Max  int64 `json:"max_ns"`
}

// Count is a key and how often it occurred.
type Count struct {
	Key string `json:"key"`
	N   int    `json:"n"`
}

// Group is the traffic and latency of one upstream or query type.
type Group struct {
	Key        string `json:"key"`
	Queries    int    `json:"queries"`
	Answered   int    `json:"answered"`
	Unanswered int    `json:"unanswered"`
	// Timeouts counts unanswered tapproxy queries carrying the timeout
	// marker (flags=timeout).
	Timeouts int  `json:"timeouts"`
	Latency  Dist `json:"latency"`
}

// Within is the share of answers with a latency at most MaxMS.
type Within struct {
	MaxMS float64 `json:"max_ms"`
	N     int     `json:"n"`
	Share float64 `json:"share"` // of Report.Latency.N; 0 when that is 0
}

// Bin is one bar of the latency histogram: latencies in (previous Le, Le];
// Le is -1 for the last, unbounded bin.
type Bin struct {
	Le int64 `json:"le_ns"`
	N  int   `json:"n"`
}

// Point is one time bucket of the query rate.
type Point struct {
	T        float64 `json:"t"` // bucket start, Unix seconds
	Queries  int     `json:"queries"`
	Answered int     `json:"answered"`
}

// TimeLatency is the latency of the answers whose query fell in a bucket.
type TimeLatency struct {
	T   float64 `json:"t"`
	N   int     `json:"n"`
	P50 int64   `json:"p50_ns"`
	P99 int64   `json:"p99_ns"`
	Max int64   `json:"max_ns"`
}

// TimeBreakdown is the mean of each tapproxy latency component over the
// transactions whose query fell in a bucket and had all three known.
type TimeBreakdown struct {
	T        float64 `json:"t"`
	N        int     `json:"n"`
	Queue    int64   `json:"queue_ns"`
	Proxy    int64   `json:"proxy_ns"`
	Upstream int64   `json:"upstream_ns"`
}

// Breakdown is the latency breakdown of tapproxy transactions, from the
// annotation of each client-leg query record.
type Breakdown struct {
	Transactions  int  `json:"transactions"`
	Queue         Dist `json:"queue"`          // qdelay: client-socket queue delay
	Proxy         Dist `json:"proxy"`          // proxy: time inside tapproxy
	Upstream      Dist `json:"upstream"`       // rtt: upstream round trip
	UpstreamQueue Dist `json:"upstream_queue"` // uqdelay: upstream-socket queue delay
	Total         Dist `json:"total"`          // total: kernel receive to reply sent
}

// Scatter is one answered query for the latency-over-time plot.
type Scatter struct {
	T       float64 `json:"t"`
	Latency int64   `json:"latency_ns"`
}

// Report is the summary of one dnstap file.
type Report struct {
	File     string `json:"file,omitempty"`
	Messages int    `json:"messages"`
	// BadFrames are data frames that did not decode (skipped); Error is
	// the decoder's final error when the file is damaged or incomplete.
	BadFrames int    `json:"bad_frames"`
	Error     string `json:"error,omitempty"`

	Types     []Count    `json:"types"`     // messages by dnstap type
	Producers []Count    `json:"producers"` // "identity / version"
	First     *time.Time `json:"first,omitempty"`
	Last      *time.Time `json:"last,omitempty"`
	Bucket    float64    `json:"bucket_seconds"`

	// Client leg.
	Queries       int `json:"queries"`
	Responses     int `json:"responses"`
	Answered      int `json:"answered"` // queries paired with a response
	Unanswered    int `json:"unanswered"`
	TimeoutMarked int `json:"timeout_marked"` // unanswered with tapproxy's timeout marker
	Orphans       int `json:"responses_without_query"`
	// Latency is over the answered queries whose latency is known.
	Latency   Dist     `json:"latency"`
	Within    []Within `json:"within"`
	Histogram []Bin    `json:"histogram"`

	// Upstream leg.
	UpstreamQueries int     `json:"upstream_queries"`
	UpstreamOrphans int     `json:"upstream_responses_without_query"`
	PerUpstream     []Group `json:"per_upstream"`
	PerQtype        []Group `json:"per_qtype"`

	Breakdown *Breakdown `json:"breakdown,omitempty"`

	Rcodes     []Count `json:"rcodes"`
	TopNames   []Count `json:"top_names"`
	TopClients []Count `json:"top_clients"`

	QPS               []Point         `json:"qps"`
	LatencyOverTime   []TimeLatency   `json:"latency_over_time"`
	BreakdownOverTime []TimeBreakdown `json:"breakdown_over_time,omitempty"`
	Scatter           []Scatter       `json:"-"`

	Notes []string `json:"notes,omitempty"`
}

// WithinLimits are the "answered within" thresholds, in milliseconds.
var WithinLimits = []float64{1, 10, 100}

// HistogramBounds are the upper bounds of the latency histogram bins: 1, 2
// and 5 of every decade from 1 µs to 10 s (then one unbounded bin).
var HistogramBounds = func() []int64 {
	var b []int64
	for d := int64(1000); d <= 1e9; d *= 10 {
		b = append(b, d, 2*d, 5*d)
	}
	return append(b, 10e9)
}()

// upstreamLeg reports whether t is a server's own query or response to
// another server.
func upstreamLeg(t dnstap.Message_Type) bool {
	switch t {
	case dnstap.Message_RESOLVER_QUERY, dnstap.Message_RESOLVER_RESPONSE,
		dnstap.Message_FORWARDER_QUERY, dnstap.Message_FORWARDER_RESPONSE:
		return true
	}
	return false
}

// Read decodes a dnstap Frame Streams file from r and builds its report.
// Undecodable frames are skipped and counted; a damaged or incomplete file
// is summarised up to the damage. err is the decoder's first error other
// than io.EOF (map it with reader.ExitCode); the report is never nil.
func Read(r io.Reader, o Options) (*Report, error) {
	dec := reader.NewDecoder(r, 0)
	var msgs []*reader.Message
	var firstErr error
	for {
		m, err := dec.Next()
		if err == nil {
			msgs = append(msgs, m)
			continue
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if firstErr == nil {
			firstErr = err
		}
		if errors.Is(err, reader.ErrBadDnstap) {
			continue
		}
		break
	}
	rep := Build(msgs, o)
	rep.BadFrames = dec.BadFrames
	if firstErr != nil {
		rep.Error = firstErr.Error()
	}
	return rep, firstErr
}

// query is one client-leg query as the report counts it.
type query struct {
	m    *reader.Message // the message holding the query
	dns  *reader.DNS
	t    time.Time
	pair *reader.Pair
}

// Build computes the report for decoded messages.
func Build(msgs []*reader.Message, o Options) *Report {
	if o.Top <= 0 {
		o.Top = 10
	}
	if o.MaxScatter <= 0 {
		o.MaxScatter = 4000
	}
	rep := &Report{Messages: len(msgs)}
	pairs, uq, ur := reader.Match(msgs)

	types, producers := map[string]int{}, map[string]int{}
	notes := map[string]bool{}
	var first, last time.Time
	see := func(t time.Time) {
		if t.IsZero() {
			return
		}
		if first.IsZero() || t.Before(first) {
			first = t
		}
		if last.IsZero() || t.After(last) {
			last = t
		}
	}
	rcodes := map[string]int{}
	for _, m := range msgs {
		types[m.Type.String()]++
		producers[string(m.Tap.GetIdentity())+" / "+string(m.Tap.GetVersion())]++
		for _, n := range m.Notes() {
			notes[n] = true
		}
		see(m.QueryTime)
		see(m.ResponseTime)
		switch {
		case upstreamLeg(m.Type):
			if m.IsQuery() {
				rep.UpstreamQueries++
			}
		case m.IsResponse():
			rep.Responses++
			rcodes[rcodeOf(m.ResponseMsg)]++
		}
	}
	rep.Types = sortedCounts(types, 0)
	rep.Producers = sortedCounts(producers, 0)
	if !first.IsZero() {
		rep.First, rep.Last = &first, &last
	}
	rep.Rcodes = sortedCounts(rcodes, 0)

	// The client-leg queries: query messages, and the query half of
	// self-contained responses.
	var queries []*query
	byMsg := map[*reader.Message]*query{}
	for _, m := range msgs {
		if m.IsQuery() && !upstreamLeg(m.Type) {
			q := &query{m: m, dns: m.QueryMsg, t: m.QueryTime}
			queries = append(queries, q)
			byMsg[m] = q
		}
	}
	var upPairs []*reader.Pair
	for i := range pairs {
		p := &pairs[i]
		if upstreamLeg(p.Query.Type) {
			upPairs = append(upPairs, p)
			continue
		}
		q := byMsg[p.Query]
		if q == nil { // self-contained: the response carries the query
			q = &query{m: p.Query, dns: p.Query.QueryMsg, t: p.Query.QueryTime}
			queries = append(queries, q)
		}
		q.pair = p
	}
	rep.Queries = len(queries)
	for _, m := range uq {
		if !upstreamLeg(m.Type) {
			rep.Unanswered++
			if m.Annotation != nil && m.Annotation.Timeout {
				rep.TimeoutMarked++
			}
		}
	}
	for _, m := range ur {
		if !m.IsResponse() {
			continue
		}
		if upstreamLeg(m.Type) {
			rep.UpstreamOrphans++
		} else {
			rep.Orphans++
		}
	}

	// Time buckets.
	width := o.Bucket
	if width <= 0 && !first.IsZero() {
		width = autoBucket(last.Sub(first))
	}
	if width <= 0 {
		width = time.Second
	}
	rep.Bucket = width.Seconds()
	origin := first.Truncate(width)
	nb := 0
	if !first.IsZero() {
		nb = int(last.Sub(origin)/width) + 1
	}
	bucketOf := func(t time.Time) int {
		if t.IsZero() || nb == 0 {
			return -1
		}
		return min(max(int(t.Sub(origin)/width), 0), nb-1)
	}
	rep.QPS = make([]Point, nb)
	bucketLat := make([][]int64, nb)
	type acc struct{ n, q, p, u int64 }
	bucketBD := make([]acc, nb)
	for i := range rep.QPS {
		rep.QPS[i].T = seconds(origin.Add(time.Duration(i) * width))
	}

	names, clients := map[string]int{}, map[string]int{}
	qtypes := map[string]*groupAcc{}
	var lat []int64
	var scatter []Scatter
	for _, q := range queries {
		qt, name := "-", "-"
		if q.dns != nil && q.dns.Question != nil {
			qt = typeName(q.dns.Question.Type)
			name = presentation(q.dns.Question.NameBytes())
		}
		names[name]++
		client := "-"
		if q.m.QueryAddr.IsValid() {
			client = q.m.QueryAddr.String()
		}
		clients[client]++
		g := qtypes[qt]
		if g == nil {
			g = &groupAcc{}
			qtypes[qt] = g
		}
		g.queries++
		b := bucketOf(q.t)
		if b >= 0 {
			rep.QPS[b].Queries++
		}
		if q.pair == nil {
			g.unanswered++
			if q.m.Annotation != nil && q.m.Annotation.Timeout {
				g.timeouts++
			}
			continue
		}
		rep.Answered++
		g.answered++
		if b >= 0 {
			rep.QPS[b].Answered++
		}
		if !q.pair.LatencyKnown {
			continue
		}
		l := int64(q.pair.Latency)
		lat = append(lat, l)
		g.lat = append(g.lat, l)
		if b >= 0 {
			bucketLat[b] = append(bucketLat[b], l)
			scatter = append(scatter, Scatter{T: seconds(q.t), Latency: l})
		}
	}
	rep.Latency = distOf(lat)
	for _, lim := range WithinLimits {
		w := Within{MaxMS: lim}
		for _, l := range lat {
			if float64(l) <= lim*1e6 {
				w.N++
			}
		}
		if len(lat) > 0 {
			w.Share = float64(w.N) / float64(len(lat))
		}
		rep.Within = append(rep.Within, w)
	}
	rep.Histogram = histogram(lat)
	rep.TopNames = sortedCounts(names, o.Top)
	rep.TopClients = sortedCounts(clients, o.Top)
	rep.PerQtype = groups(qtypes)
	for i, ls := range bucketLat {
		if len(ls) == 0 {
			continue
		}
		d := distOf(ls)
		rep.LatencyOverTime = append(rep.LatencyOverTime, TimeLatency{T: rep.QPS[i].T, N: d.N, P50: d.P50, P99: d.P99, Max: d.Max})
	}
	if len(scatter) > o.MaxScatter {
		thin := make([]Scatter, 0, o.MaxScatter)
		for i := 0; i < o.MaxScatter; i++ {
			thin = append(thin, scatter[i*len(scatter)/o.MaxScatter])
		}
		scatter = thin
	}
	rep.Scatter = scatter

	// Per upstream: tapproxy annotations on the client leg, and the
	// other producers' own upstream-leg pairs.
	ups := map[string]*groupAcc{}
	up := func(k string) *groupAcc {
		g := ups[k]
		if g == nil {
			g = &groupAcc{}
			ups[k] = g
		}
		return g
	}
	var bd Breakdown
	var bq, bp, bu, buq, bt []int64
	for _, q := range queries {
		a := q.m.Annotation
		if a == nil {
			continue
		}
		bd.Transactions++
		appendKnown(&bq, a.QueueDelay)
		appendKnown(&bp, a.Proxy)
		appendKnown(&bu, a.RTT)
		appendKnown(&buq, a.UpstreamQueueDelay)
		appendKnown(&bt, a.Total)
		if b := bucketOf(q.t); b >= 0 && a.QueueDelay >= 0 && a.Proxy >= 0 && a.RTT >= 0 {
			x := &bucketBD[b]
			x.n++
			x.q += a.QueueDelay
			x.p += a.Proxy
			x.u += a.RTT
		}
		if !a.Upstream.IsValid() {
			continue
		}
		g := up(a.Upstream.String())
		g.queries++
		switch {
		case a.RTT >= 0:
			g.answered++
			g.lat = append(g.lat, a.RTT)
		case q.pair == nil:
			g.unanswered++
			if a.Timeout {
				g.timeouts++
			}
		default:
			g.answered++ // answered (e.g. SERVFAIL after a timeout) without an upstream RTT
		}
	}
	upAnswered := map[*reader.Message]bool{}
	for _, p := range upPairs {
		upAnswered[p.Query] = true
		if p.Query.Annotation != nil {
			continue // counted once, from the client leg's annotation
		}
		g := up(serverOf(p.Query))
		g.answered++
		if p.LatencyKnown {
			g.lat = append(g.lat, int64(p.Latency))
		}
	}
	for _, m := range msgs {
		if m.IsQuery() && upstreamLeg(m.Type) && m.Annotation == nil {
			g := up(serverOf(m))
			g.queries++
			if !upAnswered[m] {
				g.unanswered++
			}
		}
	}
	rep.PerUpstream = groups(ups)
	if bd.Transactions > 0 {
		bd.Queue, bd.Proxy, bd.Upstream, bd.UpstreamQueue, bd.Total = distOf(bq), distOf(bp), distOf(bu), distOf(buq), distOf(bt)
		rep.Breakdown = &bd
		for i, x := range bucketBD {
			if x.n > 0 {
				rep.BreakdownOverTime = append(rep.BreakdownOverTime, TimeBreakdown{T: rep.QPS[i].T, N: int(x.n),
					Queue: x.q / x.n, Proxy: x.p / x.n, Upstream: x.u / x.n})
			}
		}
	}
	for n := range notes {
		rep.Notes = append(rep.Notes, n)
	}
	slices.Sort(rep.Notes)
	return rep
}

type groupAcc struct {
	queries, answered, unanswered, timeouts int
	lat                                     []int64
}

func groups(m map[string]*groupAcc) []Group {
	var out []Group
	for k, g := range m {
		out = append(out, Group{Key: k, Queries: g.queries, Answered: g.answered, Unanswered: g.unanswered,
			Timeouts: g.timeouts, Latency: distOf(g.lat)})
	}
	slices.SortFunc(out, func(a, b Group) int {
		if c := cmp.Compare(b.Queries, a.Queries); c != 0 {
			return c
		}
		return cmp.Compare(a.Key, b.Key)
	})
	return out
}

func appendKnown(dst *[]int64, v int64) {
	if v >= 0 {
		*dst = append(*dst, v)
	}
}

// serverOf names the server an upstream-leg query went to.
func serverOf(m *reader.Message) string {
	if !m.ResponseAddr.IsValid() {
		return "-"
	}
	if m.ResponsePort >= 0 && m.ResponsePort <= math.MaxUint16 {
		return netip.AddrPortFrom(m.ResponseAddr, uint16(m.ResponsePort)).String()
	}
	return m.ResponseAddr.String()
}

// distOf summarises v (nanoseconds) with nearest-rank percentiles.
func distOf(v []int64) Dist {
	if len(v) == 0 {
		return Dist{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	var sum float64
	for _, x := range s {
		sum += float64(x)
	}
	rank := func(p float64) int64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return Dist{N: len(s), Mean: int64(math.Round(sum / float64(len(s)))), P50: rank(0.5), P90: rank(0.9),
		P99: rank(0.99), P999: rank(0.999), Max: s[len(s)-1]}
}

func histogram(lat []int64) []Bin {
	bins := make([]Bin, len(HistogramBounds)+1)
	for i, b := range HistogramBounds {
		bins[i].Le = b
	}
	bins[len(bins)-1].Le = -1
	for _, l := range lat {
		i, _ := slices.BinarySearch(HistogramBounds, l) // first bound >= l
		bins[i].N++
	}
	return bins
}

// sortedCounts returns the counts by decreasing N, then key; top > 0 keeps
// that many.
func sortedCounts(m map[string]int, top int) []Count {
	out := make([]Count, 0, len(m))
	for k, n := range m {
		out = append(out, Count{k, n})
	}
	slices.SortFunc(out, func(a, b Count) int {
		if c := cmp.Compare(b.N, a.N); c != 0 {
			return c
		}
		return cmp.Compare(a.Key, b.Key)
	})
	if top > 0 && len(out) > top {
		out = out[:top]
	}
	return out
}

func rcodeOf(d *reader.DNS) string {
	if d == nil || !d.HasHeader {
		return "-"
	}
	rc := int(d.Header.Rcode())
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(rc)
}

func typeName(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return "TYPE" + strconv.Itoa(int(t))
}

// presentation turns a lower-cased uncompressed wire name into text.
func presentation(wire []byte) string {
	s, _, err := dns.UnpackDomainName(wire, 0)
	if err != nil {
		return "-"
	}
	return s
}

func seconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// autoBucket picks 1 s, or the smallest round width that keeps the series
// within MaxBuckets.
func autoBucket(span time.Duration) time.Duration {
	for _, w := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second,
		time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour,
		3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour} {
		if span/w < MaxBuckets {
			return w
		}
	}
	return time.Duration(int64(span)/MaxBuckets + 1)
}

// FormatDuration renders nanoseconds for people: µs below 1 ms, ms below
// 1 s, s above.
func FormatDuration(ns int64) string {
	switch d := float64(ns); {
	case ns == 0:
		return "0"
	case d < 1e3:
		return fmt.Sprintf("%dns", ns)
	case d < 1e6:
		return fmt.Sprintf("%.1fµs", d/1e3)
	case d < 1e9:
		return fmt.Sprintf("%.2fms", d/1e6)
	}
	return fmt.Sprintf("%.3fs", float64(ns)/1e9)
}
