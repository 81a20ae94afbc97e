package main

import (
	"fmt"
	"html/template"
	"math"
	"os"
	"strings"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// The -report page: inline SVG charts and the figures, no script and no
// network, so it can be attached to a ticket or opened offline.

const chartW, chartH, padL, padB, padT, padR = 720.0, 280.0, 64.0, 34.0, 40.0, 36.0

type series struct {
	Name, Color, Path string
	LegendX           float64
}

type chart struct {
	Title                string
	Series               []series
	XTicks, YTicks       []tick
	XLabel, YLabel       string
	Empty                string // why there is nothing to draw, if so
	W, H, X0, Y0, X1, Y1 float64
}

type tick struct {
	Pos   float64
	Label string
}

// The legend's squares and lines take their colour from a style attribute:
// a presentation attribute (fill=) would lose to the stylesheet's text rule.
// chartSVG draws one chart; the run, compare and chaos pages share it.
const chartSVG = `{{define "chart"}}
<h2>{{.Title}}</h2>
<svg width="{{.W}}" height="{{.H}}" viewBox="0 0 {{.W}} {{.H}}" xmlns="http://www.w3.org/2000/svg">
{{$c := .}}{{range .YTicks}}<line class="grid" x1="{{$c.X0}}" x2="{{$c.X1}}" y1="{{.Pos}}" y2="{{.Pos}}"/><text x="{{$c.X0}}" dx="-4" y="{{.Pos}}" dy="4" text-anchor="end">{{.Label}}</text>
{{end}}{{range .XTicks}}<line class="grid" x1="{{.Pos}}" x2="{{.Pos}}" y1="{{$c.Y0}}" y2="{{$c.Y1}}"/><text x="{{.Pos}}" y="{{$c.Y0}}" dy="14" text-anchor="middle">{{.Label}}</text>
{{end}}<line class="axis" x1="{{.X0}}" x2="{{.X1}}" y1="{{.Y0}}" y2="{{.Y0}}"/><line class="axis" x1="{{.X0}}" x2="{{.X0}}" y1="{{.Y0}}" y2="{{.Y1}}"/>
<text x="{{.X1}}" y="{{.H}}" dy="-2" text-anchor="end">{{.XLabel}}</text><text x="{{.X0}}" y="14" text-anchor="end">{{.YLabel}}</text>
{{if .Empty}}<text class="empty" x="{{.X0}}" dx="12" y="{{.Y1}}" dy="40">{{.Empty}}</text>{{end}}
{{range .Series}}<path d="{{.Path}}" fill="none" style="stroke:{{.Color}}" stroke-width="1.6"/>{{end}}
<g class="legend">{{range .Series}}<rect x="{{.LegendX}}" y="6" width="12" height="12" style="fill:{{.Color}}"/><text x="{{.LegendX}}" dx="16" y="16">{{.Name}}</text>{{end}}</g>
</svg>
{{end}}`

var reportTmpl = template.Must(template.Must(template.New("r").Parse(chartSVG)).Funcs(template.FuncMap{
	"mib": mib, "kib": kib, "kibf": func(b float64) string { return kib(int64(b)) }, "rssNote": rssNote, "lat": fmtLatency, "optNum": optNum, "optRatio": optRatio,
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:12px 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right}
svg{background:#fff;border:1px solid #ccc;margin:8px 0}.axis{stroke:#888}.grid{stroke:#eee}
text{font-size:11px;fill:#444}.legend text{font-size:12px}.empty{font-size:14px;fill:#a00}
</style></head><body>
<h1>{{.Title}}</h1>
{{range .Runs}}{{template "run" .}}{{end}}
{{with .Cmp}}{{template "cmp" .}}{{end}}
{{range .Charts}}{{template "chart" .}}{{end}}
</body></html>
{{define "run"}}<p>{{.URL}} — {{.Users}} users × {{.ConnsPerUser}} connections, payload {{.Payload}} B, rate {{if .Rate}}{{.Rate}} msg/s{{else}}as fast as possible{{end}}{{if .Backlog}}, backlog {{.Backlog}} per user{{end}}</p>
<table>
<tr><th>verdict</th><td>{{.Verdict}}</td></tr>
<tr><th>connected</th><td>{{.Connected}} (failed {{.ConnectFailed}})</td></tr>
<tr><th>sent / delivered</th><td>{{.Sent}} / {{.Delivered}} (unsent {{.Unsent}}, producer errors {{.ProducerErrors}})</td></tr>
<tr><th>lost / duplicated / out of order / misdelivered / partial</th><td>{{.Lost}} / {{.Duplicated}} / {{.OutOfOrder}} / {{.Misdelivered}} / {{.Partial}}</td></tr>
<tr><th>still in Redis</th><td>{{.StillInRedis}} (queued {{.StillInQueue}}, processing {{.StillProcessing}})</td></tr>
<tr><th>unparsed frames</th><td>{{.Garbage}}</td></tr>
<tr><th>delivered per second</th><td>{{printf "%.0f" .DeliveredPerSec}}</td></tr>
<tr><th>latency ms{{if .LatencyUncorrected}} (from the schedule){{end}}</th><td>{{lat .Latency}}</td></tr>
{{with .LatencyUncorrected}}<tr><th>latency ms, uncorrected (from the LPUSH)</th><td>{{lat .}}</td></tr>{{end}}
{{if .LatencyOutOfRange}}<tr><th>latency out of range</th><td>{{.LatencyOutOfRange}}</td></tr>{{end}}
{{if .Server.PID}}<tr><th>server ({{.Server.Processes}} process{{if ne .Server.Processes 1}}es{{end}})</th><td>RSS start {{mib .Server.RSSStart}}, idle {{mib .Server.RSSIdle}}, peak {{mib .Server.RSSPeak}}, {{kib .Server.RSSPerConn}} per connection{{rssNote .Connected}}; CPU {{printf "%.2f" .Server.CPUSeconds}} s, {{printf "%.1f" .Server.CPUMicrosPerMsg}} µs/msg</td></tr>{{end}}
<tr><th>Redis</th><td>{{with .Redis}}CPU {{printf "%.2f" .CPUSeconds}} s, {{printf "%.1f" .CPUMicrosPerMsg}} µs/msg{{else}}CPU unknown{{end}}{{if .RedisClients.Samples}}; clients connected max {{.RedisClients.ConnectedMax}}, blocked max {{.RedisClients.BlockedMax}}{{end}}</td></tr>
</table>{{end}}
{{define "cmp"}}<table>
<tr><th>side</th><th>command</th></tr>
<tr><td>{{index .Names "a"}}</td><td><code>{{index .Commands "a"}}</code></td></tr>
<tr><td>{{index .Names "b"}}</td><td><code>{{index .Commands "b"}}</code></td></tr>
</table>
<table><tr><th>median</th><th>delivered/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>worst p99.9</th><th>worst max</th><th>RSS/conn</th><th>CPU µs/msg</th><th>Redis µs/msg</th><th>runs passed</th></tr>
{{range $k, $s := .Median}}<tr><td>{{index $.Names $k}}</td><td class="n">{{printf "%.0f" $s.DeliveredPerSec}}</td><td class="n">{{printf "%.3f" $s.P50}}</td><td class="n">{{printf "%.3f" $s.P99}}</td><td class="n">{{printf "%.3f" $s.P999}}</td><td class="n">{{printf "%.3f" $s.WorstP999}}</td><td class="n">{{printf "%.3f" $s.WorstMax}}</td><td class="n">{{kibf $s.RSSPerConn}}</td><td class="n">{{printf "%.1f" $s.CPU}}</td><td class="n">{{optNum $s.RedisCPU}}</td><td class="n">{{$s.Passed}} of {{$s.Runs}}</td></tr>
{{end}}<tr><td>ratio b/a</td><td class="n">{{optRatio (index .Ratio "delivered_per_sec")}}</td><td class="n">{{optRatio (index .Ratio "p50_ms")}}</td><td class="n">{{optRatio (index .Ratio "p99_ms")}}</td><td class="n">{{optRatio (index .Ratio "p999_ms")}}</td><td></td><td></td><td class="n">{{optRatio (index .Ratio "rss_per_conn_bytes")}}</td><td class="n">{{optRatio (index .Ratio "cpu_us_per_msg")}}</td><td class="n">{{optRatio (index .Ratio "redis_cpu_us_per_msg")}}</td><td></td></tr>
</table>{{end}}
`))

type reportPage struct {
	Title  string
	Runs   []*result
	Cmp    *comparison
	Charts []chart
}

func writeReport(path string, r *result) error {
	charts := []chart{timelineChart(r)}
	if h, err := decodeHist(r.Histogram); err == nil && h.TotalCount() > 0 {
		curves := []curve{{"latency", h}}
		if raw, err := decodeHist(r.HistogramUncorrected); err == nil && raw.TotalCount() > 0 {
			curves = []curve{{"from the schedule", h}, {"from the LPUSH (uncorrected)", raw}}
		}
		charts = append(charts, distributionChart(curves))
	}
	return renderReport(path, reportPage{Title: "redpush-bench report", Runs: []*result{r}, Charts: charts})
}

// writeCompareReport draws both servers' latency by percentile on one
// chart, each side's runs merged into one histogram.
func writeCompareReport(path string, c *comparison) error {
	var curves []curve
	for _, side := range []struct {
		key string
		rs  []*result
	}{{"a", c.A}, {"b", c.B}} {
		h := newHist()
		for _, r := range side.rs {
			if ph, err := decodeHist(r.Histogram); err == nil {
				h.Merge(ph)
			}
		}
		curves = append(curves, curve{c.Names[side.key], h})
	}
	title := fmt.Sprintf("redpush-bench compare: %s against %s", c.Names["b"], c.Names["a"])
	return renderReport(path, reportPage{Title: title, Cmp: c, Charts: []chart{distributionChart(curves)}})
}

func renderReport(path string, p reportPage) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := reportTmpl.Execute(f, p); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newChart(title, xl, yl string) chart {
	return chart{Title: title, XLabel: xl, YLabel: yl, W: chartW, H: chartH,
		X0: padL, Y0: chartH - padB, X1: chartW - padR, Y1: padT}
}

var palette = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"}

// addSeries adds a line, its legend entry placed after the previous one.
func (c *chart) addSeries(name, path string) {
	x := c.X0 + 8
	if n := len(c.Series); n > 0 {
		prev := c.Series[n-1]
		x = prev.LegendX + 28 + 7*float64(len([]rune(prev.Name)))
	}
	c.Series = append(c.Series, series{name, palette[len(c.Series)%len(palette)], path, x})
}

// logY maps a latency in ms to the chart's log-scaled y axis.
func (c *chart) logY(v, lo, hi float64) float64 {
	v = math.Min(math.Max(v, lo), hi)
	f := (math.Log10(v) - math.Log10(lo)) / (math.Log10(hi) - math.Log10(lo))
	return c.Y0 - f*(c.Y0-c.Y1)
}

func (c *chart) logTicks(lo, hi float64) {
	for v := lo; v <= hi*1.0001; v *= 10 {
		c.YTicks = append(c.YTicks, tick{c.logY(v, lo, hi), trimNum(v)})
	}
}

func trimNum(v float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
}

// bounds returns decade bounds around the values for a log axis.
func bounds(vals ...float64) (lo, hi float64) {
	lo, hi = math.Inf(1), 0
	for _, v := range vals {
		if v > 0 {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if hi == 0 {
		return 0.01, 1
	}
	return math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)+1e-9))
}

func pathOf(n int, point func(i int) (x, y float64)) string {
	var b strings.Builder
	for i := range n {
		x, y := point(i)
		cmd := "L"
		if i == 0 {
			cmd = "M"
		}
		fmt.Fprintf(&b, "%s%.1f %.1f ", cmd, x, y)
	}
	return b.String()
}

func timelineChart(r *result) chart {
	c := newChart("Latency over time (per second)", "seconds since start", "ms (log)")
	tl := r.Timeline
	if len(tl) < 2 {
		c.Empty = "The run lasted under two seconds: too few points to draw latency over time (see the percentiles below)."
	}
	var all []float64
	for _, p := range tl {
		all = append(all, p.P50, p.P99, p.Max)
	}
	lo, hi := bounds(all...)
	c.logTicks(lo, hi)
	t0, t1 := 0.0, 1.0
	if len(tl) > 0 {
		t0, t1 = tl[0].At, math.Max(tl[len(tl)-1].At, tl[0].At+1)
	}
	x := func(t float64) float64 { return c.X0 + (t-t0)/(t1-t0)*(c.X1-c.X0) }
	for _, s := range []struct {
		name string
		get  func(timePoint) float64
	}{
		{"p50", func(p timePoint) float64 { return p.P50 }},
		{"p99", func(p timePoint) float64 { return p.P99 }},
		{"max", func(p timePoint) float64 { return p.Max }},
	} {
		c.addSeries(s.name, pathOf(len(tl), func(i int) (float64, float64) { return x(tl[i].At), c.logY(s.get(tl[i]), lo, hi) }))
	}
	for t := math.Ceil(t0); t <= t1; t += math.Max(1, math.Round((t1-t0)/10)) {
		c.XTicks = append(c.XTicks, tick{x(t), trimNum(t)})
	}
	return c
}

type curve struct {
	name string
	h    *hdrhistogram.Histogram
}

// distributionChart is the usual HdrHistogram percentile plot: the x axis
// is log(1/(1-q)), so 90%, 99%, 99.9% … are evenly spaced.
func distributionChart(curves []curve) chart {
	c := newChart("Latency by percentile", "percentile", "ms (log)")
	var ext []float64
	for _, cv := range curves {
		if cv.h.TotalCount() > 0 {
			ext = append(ext, ms(cv.h.Min()), ms(cv.h.Max()))
		}
	}
	lo, hi := bounds(ext...)
	c.logTicks(lo, hi)
	const nines = 4.0 // up to 99.99%
	x := func(q float64) float64 {
		return c.X0 + math.Min(math.Log10(1/(1-q/100))/nines, 1)*(c.X1-c.X0)
	}
	for _, cv := range curves {
		c.addSeries(cv.name, pathOf(401, func(i int) (float64, float64) {
			q := 100 * (1 - math.Pow(10, -nines*float64(i)/400))
			return x(q), c.logY(ms(cv.h.ValueAtQuantile(q)), lo, hi)
		}))
	}
	for _, q := range []struct {
		q float64
		l string
	}{{0, "0%"}, {90, "90%"}, {99, "99%"}, {99.9, "99.9%"}, {99.99, "99.99%"}} {
		c.XTicks = append(c.XTicks, tick{x(q.q), q.l})
	}
	return c
}
