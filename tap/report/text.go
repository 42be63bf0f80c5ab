package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// WriteJSON writes the report as one indented JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// textBarWidth is the widest bar of the terminal charts.
const textBarWidth = 40

// maxTextRows bounds the rows of the terminal query-rate chart; buckets
// are merged to fit.
const maxTextRows = 40

func bar(n, max int) string {
	if max <= 0 || n <= 0 {
		return ""
	}
	w := n * textBarWidth / max
	if w == 0 {
		w = 1
	}
	return strings.Repeat("#", w)
}

func pct(n, of int) string {
	if of == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(of))
}

func distRow(d Dist) string {
	if d.N == 0 {
		return fmt.Sprintf("%7d %9s %9s %9s %9s %9s %9s", 0, "-", "-", "-", "-", "-", "-")
	}
	f := FormatDuration
	return fmt.Sprintf("%7d %9s %9s %9s %9s %9s %9s", d.N, f(d.Mean), f(d.P50), f(d.P90), f(d.P99), f(d.P999), f(d.Max))
}

const distHeader = "      n      mean       p50       p90       p99     p99.9       max"

// boundLabel names a histogram bin.
func boundLabel(le int64, prev int64) string {
	if le < 0 {
		return "> " + shortDuration(prev)
	}
	return "≤ " + shortDuration(le)
}

// shortDuration renders a round bound compactly: 20µs, 5ms, 1s.
func shortDuration(ns int64) string {
	switch {
	case ns >= 1e9:
		return strconv.FormatFloat(float64(ns)/1e9, 'g', -1, 64) + "s"
	case ns >= 1e6:
		return strconv.FormatFloat(float64(ns)/1e6, 'g', -1, 64) + "ms"
	case ns >= 1e3:
		return strconv.FormatFloat(float64(ns)/1e3, 'g', -1, 64) + "µs"
	}
	return strconv.FormatInt(ns, 10) + "ns"
}

// WriteText writes the terminal report.
func (r *Report) WriteText(w io.Writer) error {
	b := bufio.NewWriter(w)
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	title := r.File
	if title == "" {
		title = "(stdin)"
	}
	p("dnstap report: %s\n", title)
	var types []string
	for _, c := range r.Types {
		types = append(types, fmt.Sprintf("%s %d", c.Key, c.N))
	}
	p("messages    %d (%s)\n", r.Messages, strings.Join(types, ", "))
	for _, c := range r.Producers {
		p("producer    %s (%d)\n", c.Key, c.N)
	}
	if r.First != nil {
		p("time        %s → %s (%s)\n", r.First.UTC().Format(time.RFC3339Nano), r.Last.UTC().Format(time.RFC3339Nano), r.Last.Sub(*r.First).Round(time.Millisecond))
	}
	if r.Error != "" {
		p("damaged     %s (bad frames skipped: %d); figures cover the messages before the damage\n", r.Error, r.BadFrames)
	}
	p("\nclient queries %d, answered %d, unanswered %d (timeout marker: %d), responses without a query %d\n",
		r.Queries, r.Answered, r.Unanswered, r.TimeoutMarked, r.Orphans)
	if r.UpstreamQueries > 0 || r.UpstreamOrphans > 0 {
		p("upstream queries %d, upstream responses without a query %d\n", r.UpstreamQueries, r.UpstreamOrphans)
	}
	p("\nlatency (query_time → response_time of the answered client queries)\n%s\n%s\n", distHeader, distRow(r.Latency))
	var within []string
	for _, x := range r.Within {
		within = append(within, fmt.Sprintf("≤ %gms %s (%d)", x.MaxMS, pct(x.N, r.Latency.N), x.N))
	}
	p("within      %s\n", strings.Join(within, "   "))

	if r.Latency.N > 0 {
		p("\nlatency histogram\n")
		lo, hi, max := -1, -1, 0
		for i, bin := range r.Histogram {
			if bin.N > 0 {
				if lo < 0 {
					lo = i
				}
				hi = i
				max = maxOf(max, bin.N)
			}
		}
		for i := lo; i <= hi; i++ {
			prev := int64(0)
			if i > 0 {
				prev = r.Histogram[i-1].Le
			}
			p("  %10s |%-*s %d\n", boundLabel(r.Histogram[i].Le, prev), textBarWidth, bar(r.Histogram[i].N, max), r.Histogram[i].N)
		}
	}

	if len(r.QPS) > 0 {
		rows, width := mergePoints(r.QPS, maxTextRows, r.Bucket)
		step := time.Duration(width * float64(time.Second))
		p("\nqueries per second (rows of %s; bar = queries)\n", step)
		max := 0.0
		for _, pt := range rows {
			max = maxOf(max, float64(pt.Queries)/width)
		}
		for _, pt := range rows {
			rate := float64(pt.Queries) / width
			t := time.Unix(0, int64(pt.T*1e9)).UTC().Format("15:04:05")
			p("  %s |%-*s %8.1f q/s  answered %.1f/s\n", t, textBarWidth, bar(int(rate*1000), int(max*1000)), rate, float64(pt.Answered)/width)
		}
	}

	if bd := r.Breakdown; bd != nil {
		p("\nbreakdown of tapproxy transactions (annotation, %d transactions)\n  %-15s%s\n", bd.Transactions, "", distHeader)
		for _, row := range []struct {
			name string
			d    Dist
		}{{"client queue", bd.Queue}, {"inside tapproxy", bd.Proxy}, {"upstream rtt", bd.Upstream}, {"upstream queue", bd.UpstreamQueue}, {"total", bd.Total}} {
			p("  %-15s%s\n", row.name, distRow(row.d))
		}
	}
	groupTable := func(title, key string, gs []Group) {
		if len(gs) == 0 {
			return
		}
		p("\n%s\n  %-24s %7s %8s %10s %8s %s\n", title, key, "queries", "answered", "unanswered", "timeouts", distHeader)
		for _, g := range gs {
			p("  %-24s %7d %8d %10d %8d %s\n", g.Key, g.Queries, g.Answered, g.Unanswered, g.Timeouts, distRow(g.Latency))
		}
	}
	groupTable("per upstream (latency = upstream round trip)", "upstream", r.PerUpstream)
	groupTable("per query type (latency as seen by the client)", "qtype", r.PerQtype)

	counts := func(title string, cs []Count, of int) {
		if len(cs) == 0 {
			return
		}
		p("\n%s\n", title)
		for _, c := range cs {
			p("  %-40s %7d %7s\n", c.Key, c.N, pct(c.N, of))
		}
	}
	counts("rcodes (client-leg responses)", r.Rcodes, r.Responses)
	counts("top query names", r.TopNames, r.Queries)
	counts("top clients", r.TopClients, r.Queries)
	if len(r.Notes) > 0 {
		p("\nnotes\n")
		for _, n := range r.Notes {
			p("  %s\n", n)
		}
	}
	return b.Flush()
}

// mergePoints merges adjacent buckets so that at most rows remain; it
// returns them and the width of a row in seconds.
func mergePoints(pts []Point, rows int, width float64) ([]Point, float64) {
	k := (len(pts) + rows - 1) / rows
	if k <= 1 {
		return pts, width
	}
	var out []Point
	for i := 0; i < len(pts); i += k {
		m := Point{T: pts[i].T}
		for j := i; j < i+k && j < len(pts); j++ {
			m.Queries += pts[j].Queries
			m.Answered += pts[j].Answered
		}
		out = append(out, m)
	}
	return out, width * float64(k)
}

func maxOf[T int | float64](a, b T) T {
	if a > b {
		return a
	}
	return b
}
