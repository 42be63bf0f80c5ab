package report

import (
	"fmt"
	"html"
	"html/template"
	"io"
	"math"
	"strings"
	"time"
)

// Chart geometry (SVG user units = CSS pixels).
const (
	chartW, chartH = 960.0, 300.0
	padL, padR     = 70.0, 20.0
	padT, padB     = 30.0, 40.0
)

var palette = struct{ queue, proxy, upstream, p50, p99, dots, queries, answered string }{
	queue: "#e8a33d", proxy: "#9b6bd8", upstream: "#3f8fe0", p50: "#2ca05a", p99: "#d9434f",
	dots: "rgba(63,143,224,0.55)", queries: "#3f8fe0", answered: "#2ca05a",
}

// svgChart maps data to an SVG plot area.
type svgChart struct {
	b                      strings.Builder
	xmin, xmax, ymin, ymax float64
	logY                   bool
}

func newChart(xmin, xmax, ymin, ymax float64, logY bool) *svgChart {
	if xmax <= xmin {
		xmax = xmin + 1
	}
	if ymax <= ymin {
		ymax = ymin + 1
	}
	c := &svgChart{xmin: xmin, xmax: xmax, ymin: ymin, ymax: ymax, logY: logY}
	fmt.Fprintf(&c.b, `<svg viewBox="0 0 %g %g" width="%g" height="%g" font-family="sans-serif" font-size="11">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&c.b, `<rect x="%g" y="%g" width="%g" height="%g" fill="#fafbfc" stroke="#d0d7de"/>`, padL, padT, chartW-padL-padR, chartH-padT-padB)
	return c
}

func (c *svgChart) X(v float64) float64 {
	return padL + (v-c.xmin)/(c.xmax-c.xmin)*(chartW-padL-padR)
}

func (c *svgChart) Y(v float64) float64 {
	h := chartH - padT - padB
	if c.logY {
		if v <= c.ymin {
			return padT + h
		}
		return padT + h - (math.Log10(v)-math.Log10(c.ymin))/(math.Log10(c.ymax)-math.Log10(c.ymin))*h
	}
	return padT + h - (v-c.ymin)/(c.ymax-c.ymin)*h
}

func (c *svgChart) text(x, y float64, anchor, s string) {
	fmt.Fprintf(&c.b, `<text x="%.1f" y="%.1f" text-anchor="%s" fill="#57606a">%s</text>`, x, y, anchor, html.EscapeString(s))
}

func (c *svgChart) hline(v float64, label string) {
	y := c.Y(v)
	fmt.Fprintf(&c.b, `<line x1="%g" x2="%g" y1="%.1f" y2="%.1f" stroke="#e1e4e8"/>`, padL, chartW-padR, y, y)
	c.text(padL-6, y+4, "end", label)
}

func (c *svgChart) vtick(v float64, label string) {
	x := c.X(v)
	fmt.Fprintf(&c.b, `<line x1="%.1f" x2="%.1f" y1="%g" y2="%g" stroke="#e1e4e8"/>`, x, x, padT, chartH-padB)
	c.text(x, chartH-padB+14, "middle", label)
}

func (c *svgChart) axisTitle(s string) { c.text(chartW/2, chartH-6, "middle", s) }

func (c *svgChart) polyline(xs, ys []float64, color string, width float64) {
	if len(xs) == 0 {
		return
	}
	var pts []string
	for i := range xs {
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", c.X(xs[i]), c.Y(ys[i])))
	}
	fmt.Fprintf(&c.b, `<polyline fill="none" stroke="%s" stroke-width="%g" points="%s"/>`, color, width, strings.Join(pts, " "))
}

func (c *svgChart) rect(x0, x1, y0, y1 float64, color string) {
	xa, xb, ya, yb := c.X(x0), c.X(x1), c.Y(y1), c.Y(y0)
	fmt.Fprintf(&c.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`, xa, ya, math.Max(xb-xa, 0.5), math.Max(yb-ya, 0), color)
}

func (c *svgChart) legend(items ...[2]string) {
	x := padL + 8
	for _, it := range items {
		fmt.Fprintf(&c.b, `<rect x="%.1f" y="8" width="10" height="10" fill="%s"/>`, x, it[1])
		c.text(x+14, 17, "start", it[0])
		x += 24 + 6.5*float64(len(it[0]))
	}
}

func (c *svgChart) done() template.HTML {
	c.b.WriteString(`</svg>`)
	return template.HTML(c.b.String()) // every text node above is escaped
}

// niceTicks returns round tick values from 0 to at least max.
func niceTicks(max float64, n int) []float64 {
	if max <= 0 {
		max = 1
	}
	raw := max / float64(n)
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	var step float64
	switch f := raw / p; {
	case f <= 1:
		step = p
	case f <= 2:
		step = 2 * p
	case f <= 5:
		step = 5 * p
	default:
		step = 10 * p
	}
	var out []float64
	for v := 0.0; v < max+step; v += step {
		out = append(out, v)
		if v >= max {
			break
		}
	}
	return out
}

func fmtCount(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2g", v)
}

// timeTicks labels a time axis from t0 to t1 (Unix seconds) relative to t0.
func (c *svgChart) timeTicks(t0, t1 float64) {
	for _, v := range niceTicks(t1-t0, 8) {
		if v > t1-t0+1e-9 {
			break
		}
		c.vtick(t0+v, "+"+time.Duration(v*float64(time.Second)).Round(time.Millisecond).String())
	}
}

// logRange returns decade bounds around positive values (ns).
func logRange(vals []int64) (lo, hi float64) {
	lo, hi = math.Inf(1), 0
	for _, v := range vals {
		if v > 0 {
			lo = math.Min(lo, float64(v))
			hi = math.Max(hi, float64(v))
		}
	}
	if hi == 0 {
		return 1e3, 1e6
	}
	lo = math.Pow(10, math.Floor(math.Log10(lo)))
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	if hi <= lo {
		hi = lo * 10
	}
	return lo, hi
}

func (r *Report) histogramSVG() template.HTML {
	lo, hi := -1, -1
	maxN := 0
	for i, b := range r.Histogram {
		if b.N > 0 {
			if lo < 0 {
				lo = i
			}
			hi = i
			maxN = max(maxN, b.N)
		}
	}
	if lo < 0 {
		return ""
	}
	ticks := niceTicks(float64(maxN), 5)
	c := newChart(float64(lo), float64(hi+1), 0, ticks[len(ticks)-1], false)
	for _, v := range ticks {
		c.hline(v, fmtCount(v))
	}
	for i := lo; i <= hi; i++ {
		b := r.Histogram[i]
		c.rect(float64(i)+0.08, float64(i)+0.92, 0, float64(b.N), palette.upstream)
		prev := int64(0)
		if i > 0 {
			prev = r.Histogram[i-1].Le
		}
		c.text(c.X(float64(i)+0.5), chartH-padB+14, "middle", boundLabel(b.Le, prev))
	}
	c.axisTitle("latency bin (upper bound) → answers")
	return c.done()
}

func (r *Report) latencyOverTimeSVG() template.HTML {
	if len(r.LatencyOverTime) == 0 {
		return ""
	}
	vals := []int64{}
	for _, s := range r.Scatter {
		vals = append(vals, s.Latency)
	}
	for _, p := range r.LatencyOverTime {
		vals = append(vals, p.P50, p.P99, p.Max)
	}
	lo, hi := logRange(vals)
	t0 := r.QPS[0].T
	t1 := r.QPS[len(r.QPS)-1].T + r.Bucket
	c := newChart(t0, t1, lo, hi, true)
	for v := lo; v <= hi*1.0001; v *= 10 {
		c.hline(v, shortDuration(int64(v)))
	}
	c.timeTicks(t0, t1)
	for _, s := range r.Scatter {
		v := math.Max(float64(s.Latency), lo)
		fmt.Fprintf(&c.b, `<circle cx="%.1f" cy="%.1f" r="2" fill="%s"/>`, c.X(s.T), c.Y(v), palette.dots)
	}
	var xs, p50, p99 []float64
	for _, p := range r.LatencyOverTime {
		xs = append(xs, p.T+r.Bucket/2)
		p50 = append(p50, math.Max(float64(p.P50), lo))
		p99 = append(p99, math.Max(float64(p.P99), lo))
	}
	c.polyline(xs, p50, palette.p50, 2)
	c.polyline(xs, p99, palette.p99, 2)
	c.legend([2]string{"answers", palette.upstream}, [2]string{"p50", palette.p50}, [2]string{"p99", palette.p99})
	c.axisTitle("time since the first message (log latency scale)")
	return c.done()
}

func (r *Report) qpsSVG() template.HTML {
	if len(r.QPS) == 0 {
		return ""
	}
	maxR := 0.0
	for _, p := range r.QPS {
		maxR = math.Max(maxR, float64(p.Queries)/r.Bucket)
	}
	ticks := niceTicks(maxR, 5)
	t0 := r.QPS[0].T
	t1 := r.QPS[len(r.QPS)-1].T + r.Bucket
	c := newChart(t0, t1, 0, ticks[len(ticks)-1], false)
	for _, v := range ticks {
		c.hline(v, fmtCount(v))
	}
	c.timeTicks(t0, t1)
	for _, p := range r.QPS {
		c.rect(p.T, p.T+r.Bucket*0.9, 0, float64(p.Queries)/r.Bucket, palette.queries)
	}
	var xs, ys []float64
	for _, p := range r.QPS {
		xs = append(xs, p.T+r.Bucket*0.45)
		ys = append(ys, float64(p.Answered)/r.Bucket)
	}
	c.polyline(xs, ys, palette.answered, 2)
	c.legend([2]string{"queries/s", palette.queries}, [2]string{"answered/s", palette.answered})
	c.axisTitle(fmt.Sprintf("time since the first message (buckets of %gs)", r.Bucket))
	return c.done()
}

func (r *Report) breakdownSVG() template.HTML {
	if len(r.BreakdownOverTime) == 0 {
		return ""
	}
	maxV := 0.0
	for _, b := range r.BreakdownOverTime {
		maxV = math.Max(maxV, float64(b.Queue+b.Proxy+b.Upstream))
	}
	// Scale in the unit of the largest value.
	unit, name := 1e3, "µs"
	switch {
	case maxV >= 1e9:
		unit, name = 1e9, "s"
	case maxV >= 1e6:
		unit, name = 1e6, "ms"
	}
	ticks := niceTicks(maxV/unit, 5)
	t0 := r.QPS[0].T
	t1 := r.QPS[len(r.QPS)-1].T + r.Bucket
	c := newChart(t0, t1, 0, ticks[len(ticks)-1], false)
	for _, v := range ticks {
		c.hline(v, fmtCount(v)+" "+name)
	}
	c.timeTicks(t0, t1)
	for _, b := range r.BreakdownOverTime {
		x0, x1 := b.T, b.T+r.Bucket*0.9
		q, p, u := float64(b.Queue)/unit, float64(b.Proxy)/unit, float64(b.Upstream)/unit
		c.rect(x0, x1, 0, q, palette.queue)
		c.rect(x0, x1, q, q+p, palette.proxy)
		c.rect(x0, x1, q+p, q+p+u, palette.upstream)
	}
	c.legend([2]string{"client queue", palette.queue}, [2]string{"inside tapproxy", palette.proxy}, [2]string{"upstream rtt", palette.upstream})
	c.axisTitle("mean per bucket, stacked: queue + proxy + upstream = total − upstream-socket wait")
	return c.done()
}

// breakdownBarsSVG compares the components at each percentile.
func (r *Report) breakdownBarsSVG() template.HTML {
	bd := r.Breakdown
	if bd == nil || bd.Total.N == 0 {
		return ""
	}
	rows := []struct {
		name string
		d    Dist
		col  string
	}{{"client queue", bd.Queue, palette.queue}, {"inside tapproxy", bd.Proxy, palette.proxy}, {"upstream rtt", bd.Upstream, palette.upstream}, {"total", bd.Total, palette.p99}}
	var vals []int64
	for _, row := range rows {
		vals = append(vals, row.d.P50, row.d.P99, row.d.Max)
	}
	lo, hi := logRange(vals)
	c := newChart(0, float64(len(rows)*4), lo, hi, true)
	for v := lo; v <= hi*1.0001; v *= 10 {
		c.hline(v, shortDuration(int64(v)))
	}
	for i, row := range rows {
		for j, v := range []int64{row.d.P50, row.d.P90, row.d.P99} {
			x := float64(i*4) + 0.4 + float64(j)
			c.rect(x, x+0.9, lo, math.Max(float64(v), lo), row.col)
			c.text(c.X(x+0.45), chartH-padB+26, "middle", []string{"p50", "p90", "p99"}[j])
		}
		c.text(c.X(float64(i*4)+1.85), chartH-padB+12, "middle", row.name)
	}
	return c.done()
}

var htmlTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"dur": FormatDuration,
	"pct": pct,
	"utc": func(t *time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dnstap report: {{.R.File}}</title>
<style>
body{font:14px/1.45 sans-serif;color:#1f2328;max-width:1000px;margin:24px auto;padding:0 16px}
h1{font-size:20px} h2{font-size:16px;margin-top:28px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:6px 0}
td,th{padding:2px 10px;border-bottom:1px solid #eaeef2;text-align:right} td:first-child,th:first-child{text-align:left}
.kv td{text-align:left} .warn{color:#b35900} svg{max-width:100%;height:auto;display:block}
</style></head><body>
<h1>dnstap report: {{.R.File}}</h1>
<table class="kv">
<tr><td>messages</td><td>{{.R.Messages}} ({{range $i, $c := .R.Types}}{{if $i}}, {{end}}{{$c.Key}} {{$c.N}}{{end}})</td></tr>
{{range .R.Producers}}<tr><td>producer</td><td>{{.Key}} ({{.N}})</td></tr>{{end}}
{{if .R.First}}<tr><td>time</td><td>{{utc .R.First}} → {{utc .R.Last}}</td></tr>{{end}}
<tr><td>client queries</td><td>{{.R.Queries}}: answered {{.R.Answered}}, unanswered {{.R.Unanswered}} (timeout marker {{.R.TimeoutMarked}}), responses without a query {{.R.Orphans}}</td></tr>
{{if .R.Error}}<tr><td class="warn">damaged</td><td class="warn">{{.R.Error}} (bad frames skipped: {{.R.BadFrames}})</td></tr>{{end}}
</table>

<h2>Latency</h2>
<table><tr><th></th><th>n</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>
<tr><td>answered client queries</td>{{template "dist" .R.Latency}}</tr></table>
<table><tr>{{range .R.Within}}<td>≤ {{.MaxMS}} ms: {{pct .N $.R.Latency.N}} ({{.N}})</td>{{end}}</tr></table>
{{.Hist}}
<h2>Latency over time</h2>
{{.Over}}
<h2>Queries per second</h2>
{{.QPS}}
{{if .R.Breakdown}}<h2>Breakdown: client queue vs inside tapproxy vs upstream (tapproxy annotations)</h2>
<table><tr><th>{{.R.Breakdown.Transactions}} transactions</th><th>n</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>
<tr><td>client queue</td>{{template "dist" .R.Breakdown.Queue}}</tr>
<tr><td>inside tapproxy</td>{{template "dist" .R.Breakdown.Proxy}}</tr>
<tr><td>upstream rtt</td>{{template "dist" .R.Breakdown.Upstream}}</tr>
<tr><td>upstream queue</td>{{template "dist" .R.Breakdown.UpstreamQueue}}</tr>
<tr><td>total</td>{{template "dist" .R.Breakdown.Total}}</tr></table>
{{.BDBars}}
{{.BD}}{{end}}
{{if .R.PerUpstream}}<h2>Per upstream (latency = upstream round trip)</h2>{{template "groups" .R.PerUpstream}}{{end}}
<h2>Per query type</h2>{{template "groups" .R.PerQtype}}
<h2>Rcodes</h2><table>{{range .R.Rcodes}}<tr><td>{{.Key}}</td><td>{{.N}}</td><td>{{pct .N $.R.Responses}}</td></tr>{{end}}</table>
<h2>Top query names</h2><table>{{range .R.TopNames}}<tr><td>{{.Key}}</td><td>{{.N}}</td><td>{{pct .N $.R.Queries}}</td></tr>{{end}}</table>
<h2>Top clients</h2><table>{{range .R.TopClients}}<tr><td>{{.Key}}</td><td>{{.N}}</td><td>{{pct .N $.R.Queries}}</td></tr>{{end}}</table>
{{if .R.Notes}}<h2>Notes</h2><ul>{{range .R.Notes}}<li>{{.}}</li>{{end}}</ul>{{end}}
</body></html>
{{define "dist"}}<td>{{.N}}</td>{{if .N}}<td>{{dur .Mean}}</td><td>{{dur .P50}}</td><td>{{dur .P90}}</td><td>{{dur .P99}}</td><td>{{dur .P999}}</td><td>{{dur .Max}}</td>{{else}}<td colspan="6">–</td>{{end}}{{end}}
{{define "groups"}}<table><tr><th></th><th>queries</th><th>answered</th><th>unanswered</th><th>timeouts</th><th>n</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>
{{range .}}<tr><td>{{.Key}}</td><td>{{.Queries}}</td><td>{{.Answered}}</td><td>{{.Unanswered}}</td><td>{{.Timeouts}}</td>{{template "dist" .Latency}}</tr>{{end}}</table>{{end}}
`))

// WriteHTML writes a self-contained HTML report: tables and inline SVG
// plots, no scripts, nothing loaded from elsewhere.
func (r *Report) WriteHTML(w io.Writer) error {
	return htmlTmpl.Execute(w, struct {
		R                           *Report
		Hist, Over, QPS, BD, BDBars template.HTML
	}{r, r.histogramSVG(), r.latencyOverTimeSVG(), r.qpsSVG(), r.breakdownSVG(), r.breakdownBarsSVG()})
}
