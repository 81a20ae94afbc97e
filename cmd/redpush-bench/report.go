package main

import (
	"fmt"
	"html/template"
	"math"
	"os"
	"strings"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// The -report page: two inline SVG charts and the figures, no script and no
// network, so it can be attached to a ticket or opened offline.

const chartW, chartH, padL, padB, padT, padR = 720.0, 260.0, 56.0, 34.0, 12.0, 16.0

type series struct {
	Name, Color, Path string
}

type chart struct {
	Title                string
	Series               []series
	XTicks, YTicks       []tick
	XLabel, YLabel       string
	W, H, X0, Y0, X1, Y1 float64
}

type tick struct {
	Pos   float64
	Label string
}

var reportTmpl = template.Must(template.New("r").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>redpush-bench report</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:12px 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
svg{background:#fff;border:1px solid #ccc;margin:8px 0}.axis{stroke:#888}.grid{stroke:#eee}
text{font-size:11px;fill:#444}.legend text{font-size:12px}
</style></head><body>
<h1>redpush-bench report</h1>
<p>{{.R.URL}} — {{.R.Users}} users × {{.R.ConnsPerUser}} connections, payload {{.R.Payload}} B, rate {{if .R.Rate}}{{.R.Rate}} msg/s{{else}}as fast as possible{{end}}{{if .R.Backlog}}, backlog {{.R.Backlog}} per user{{end}}</p>
<table>
<tr><th>connected</th><td>{{.R.Connected}} (failed {{.R.ConnectFailed}})</td></tr>
<tr><th>sent / delivered</th><td>{{.R.Sent}} / {{.R.Delivered}}</td></tr>
<tr><th>lost / duplicated / out of order / misdelivered</th><td>{{.R.Lost}} / {{.R.Duplicated}} / {{.R.OutOfOrder}} / {{.R.Misdelivered}}</td></tr>
<tr><th>delivered per second</th><td>{{printf "%.0f" .R.DeliveredPerSec}}</td></tr>
<tr><th>latency ms</th><td>p50 {{printf "%.3f" .R.Latency.P50}} · p90 {{printf "%.3f" .R.Latency.P90}} · p99 {{printf "%.3f" .R.Latency.P99}} · p99.9 {{printf "%.3f" .R.Latency.P999}} · max {{printf "%.3f" .R.Latency.Max}}</td></tr>
{{if .R.Server.PID}}<tr><th>server</th><td>RSS start {{.R.Server.RSSStart}} B, peak {{.R.Server.RSSPeak}} B, {{.R.Server.RSSPerConn}} B per connection; CPU {{printf "%.2f" .R.Server.CPUSeconds}} s</td></tr>{{end}}
</table>
{{range .Charts}}
<h2>{{.Title}}</h2>
<svg width="{{.W}}" height="{{.H}}" viewBox="0 0 {{.W}} {{.H}}" xmlns="http://www.w3.org/2000/svg">
{{$c := .}}{{range .YTicks}}<line class="grid" x1="{{$c.X0}}" x2="{{$c.X1}}" y1="{{.Pos}}" y2="{{.Pos}}"/><text x="{{$c.X0}}" dx="-4" y="{{.Pos}}" dy="4" text-anchor="end">{{.Label}}</text>
{{end}}{{range .XTicks}}<line class="grid" x1="{{.Pos}}" x2="{{.Pos}}" y1="{{$c.Y0}}" y2="{{$c.Y1}}"/><text x="{{.Pos}}" y="{{$c.Y0}}" dy="14" text-anchor="middle">{{.Label}}</text>
{{end}}<line class="axis" x1="{{.X0}}" x2="{{.X1}}" y1="{{.Y0}}" y2="{{.Y0}}"/><line class="axis" x1="{{.X0}}" x2="{{.X0}}" y1="{{.Y0}}" y2="{{.Y1}}"/>
<text x="{{.X1}}" y="{{.H}}" dy="-2" text-anchor="end">{{.XLabel}}</text><text x="4" y="{{.Y1}}" dy="-2">{{.YLabel}}</text>
{{range .Series}}<path d="{{.Path}}" fill="none" stroke="{{.Color}}" stroke-width="1.6"/>{{end}}
<g class="legend">{{range $i, $s := .Series}}<rect x="{{$c.X0}}" dx="0" y="0" width="0" height="0"/><text x="80" dx="{{$i}}" y="24" fill="{{$s.Color}}" transform="translate({{$i}}00,0)">■ {{$s.Name}}</text>{{end}}</g>
</svg>
{{end}}
</body></html>
`))

func writeReport(path string, r *result) error {
	charts := []chart{timelineChart(r)}
	if h, err := hdrhistogram.Decode([]byte(r.Histogram)); err == nil && h.TotalCount() > 0 {
		charts = append(charts, distributionChart(h))
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return reportTmpl.Execute(f, struct {
		R      *result
		Charts []chart
	}{r, charts})
}

func newChart(title, xl, yl string) chart {
	return chart{Title: title, XLabel: xl, YLabel: yl, W: chartW, H: chartH,
		X0: padL, Y0: chartH - padB, X1: chartW - padR, Y1: padT}
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

func timelineChart(r *result) chart {
	c := newChart("Latency over time (per second)", "seconds since start", "ms (log)")
	tl := r.Timeline
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
		name, color string
		get         func(timePoint) float64
	}{
		{"p50", "#1f77b4", func(p timePoint) float64 { return p.P50 }},
		{"p99", "#ff7f0e", func(p timePoint) float64 { return p.P99 }},
		{"max", "#999999", func(p timePoint) float64 { return p.Max }},
	} {
		var b strings.Builder
		for i, p := range tl {
			fmt.Fprintf(&b, "%s%.1f %.1f ", map[bool]string{true: "M", false: "L"}[i == 0], x(p.At), c.logY(s.get(p), lo, hi))
		}
		c.Series = append(c.Series, series{s.name, s.color, b.String()})
	}
	for t := math.Ceil(t0); t <= t1; t += math.Max(1, math.Round((t1-t0)/10)) {
		c.XTicks = append(c.XTicks, tick{x(t), trimNum(t)})
	}
	return c
}

// distributionChart is the usual HdrHistogram percentile plot: the x axis
// is log(1/(1-q)), so 90%, 99%, 99.9% … are evenly spaced.
func distributionChart(h *hdrhistogram.Histogram) chart {
	c := newChart("Latency by percentile", "percentile", "ms (log)")
	lo, hi := bounds(ms(h.Min()), ms(h.Max()))
	c.logTicks(lo, hi)
	const nines = 4.0 // up to 99.99%
	x := func(q float64) float64 {
		return c.X0 + math.Min(math.Log10(1/(1-q/100))/nines, 1)*(c.X1-c.X0)
	}
	var b strings.Builder
	for i := 0; i <= 400; i++ {
		q := 100 * (1 - math.Pow(10, -nines*float64(i)/400))
		fmt.Fprintf(&b, "%s%.1f %.1f ", map[bool]string{true: "M", false: "L"}[i == 0], x(q), c.logY(ms(h.ValueAtQuantile(q)), lo, hi))
	}
	c.Series = append(c.Series, series{"latency", "#d62728", b.String()})
	for _, q := range []struct {
		q float64
		l string
	}{{0, "0%"}, {90, "90%"}, {99, "99%"}, {99.9, "99.9%"}, {99.99, "99.99%"}} {
		c.XTicks = append(c.XTicks, tick{x(q.q), q.l})
	}
	return c
}
