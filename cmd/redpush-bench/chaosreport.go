package main

import (
	"fmt"
	"html/template"
	"math"
	"os"
)

// The chaos report: each instance's memory, goroutines and open files over
// the run, the connections, the faults and when duplicates and
// reorderings happened.

var chaosTmpl = template.Must(template.Must(template.New("c").Parse(chartSVG)).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>redpush-bench chaos</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:12px 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
svg{background:#fff;border:1px solid #ccc;margin:8px 0}.axis{stroke:#888}.grid{stroke:#eee}
text{font-size:11px;fill:#444}.legend text{font-size:12px}.fault{stroke:#d62728;stroke-dasharray:2 3}
</style></head><body>
<h1>redpush-bench chaos</h1>
{{with .R}}<table>
<tr><th>verdict</th><td>{{.Verdict}}</td></tr>
<tr><th>run</th><td>{{printf "%.0f" .Seconds}} s, seed {{.Seed}}, {{.Instances}} instances, {{.Users}} users, {{.Seats}} connections</td></tr>
<tr><th>faults</th><td>{{range $k, $v := .Faults}}{{$k}} {{$v}} · {{end}}</td></tr>
<tr><th>sent / delivered</th><td>{{.Sent}} / {{.Delivered}} (unsent {{.Unsent}})</td></tr>
<tr><th>lost / misdelivered</th><td>{{.Lost}} / {{.Misdelivered}}</td></tr>
<tr><th>duplicated / reordered / partial</th><td>{{.Duplicated}} / {{.Reordered}} / {{.Partial}}</td></tr>
<tr><th>acknowledged delivery</th><td>{{.AckUsers}} users; {{.AckRedelivered}} redeliveries of processed ids dropped; {{.AckDuplicated}} processed twice</td></tr>
<tr><th>left in Redis</th><td>queued {{.StillQueued}}, processing {{.StillInFlight}}</td></tr>
<tr><th>reconnects</th><td>{{.Reconnects}}</td></tr>
</table>{{end}}
{{range .Charts}}{{template "chart" .}}{{end}}
<h2>Faults</h2>
<table><tr><th>s</th><th>what</th></tr>{{range .R.Events}}<tr><td>{{printf "%.1f" .At}}</td><td>{{.What}}</td></tr>{{end}}</table>
<h2>Duplicates and reorderings, by second</h2>
<table><tr><th>s</th><th>duplicated</th><th>reordered</th></tr>{{range .R.Anomalies}}<tr><td>{{.At}}</td><td>{{.Duplicated}}</td><td>{{.Reordered}}</td></tr>{{else}}<tr><td colspan="3">none</td></tr>{{end}}</table>
</body></html>
`))

func writeChaosReport(path string, r *chaosResult) error {
	charts := []chart{
		resourceChart(r, "Memory (RSS) per instance", "MiB", func(s instanceStat) float64 { return s.RSS / (1 << 20) }),
		resourceChart(r, "Goroutines per instance", "goroutines", func(s instanceStat) float64 { return s.Goroutines }),
		resourceChart(r, "Open files per instance", "files", func(s instanceStat) float64 { return s.OpenFiles }),
		connectedChart(r),
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := chaosTmpl.Execute(f, struct {
		R      *chaosResult
		Charts []chart
	}{r, charts}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// linearChart draws series of (t, value) on linear axes; a value of 0 (an
// instance restarting) breaks its line.
func linearChart(title, unit string, end float64, names []string, vals func(series int) [][2]float64) chart {
	c := newChart(title, "seconds since start", unit)
	top := 0.0
	all := make([][][2]float64, len(names))
	for i := range names {
		all[i] = vals(i)
		for _, p := range all[i] {
			top = math.Max(top, p[1])
		}
	}
	top = niceTop(top)
	end = math.Max(end, 1)
	x := func(t float64) float64 { return c.X0 + t/end*(c.X1-c.X0) }
	y := func(v float64) float64 { return c.Y0 - v/top*(c.Y0-c.Y1) }
	for i, name := range names {
		path, pen := "", "M"
		for _, p := range all[i] {
			if p[1] == 0 {
				pen = "M"
				continue
			}
			path += fmt.Sprintf("%s%.1f %.1f ", pen, x(p[0]), y(p[1]))
			pen = "L"
		}
		c.addSeries(name, path)
	}
	for k := 0; k <= 4; k++ {
		v := top * float64(k) / 4
		c.YTicks = append(c.YTicks, tick{y(v), trimNum(v)})
	}
	step := math.Max(1, math.Round(end/10))
	for t := 0.0; t <= end; t += step {
		c.XTicks = append(c.XTicks, tick{x(t), trimNum(t)})
	}
	return c
}

// niceTop rounds a maximum up to 1, 2 or 5 times a power of ten.
func niceTop(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func resourceChart(r *chaosResult, title, unit string, get func(instanceStat) float64) chart {
	var names []string
	for i := range r.Instances {
		names = append(names, fmt.Sprintf("instance %d", i))
	}
	return linearChart(title, unit, r.Seconds, names, func(i int) [][2]float64 {
		var pts [][2]float64
		for _, p := range r.Resources {
			if i < len(p.Instances) {
				pts = append(pts, [2]float64{p.At, get(p.Instances[i])})
			}
		}
		return pts
	})
}

func connectedChart(r *chaosResult) chart {
	return linearChart("Connections open", "connections", r.Seconds, []string{"connected"}, func(int) [][2]float64 {
		var pts [][2]float64
		for _, p := range r.Resources {
			pts = append(pts, [2]float64{p.At, float64(p.Connected)})
		}
		return pts
	})
}
