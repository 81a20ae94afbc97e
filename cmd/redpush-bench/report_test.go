package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sampleResult is a result with latencies from 1 to 100 ms over 3 seconds.
func sampleResult(seconds int) *result {
	tr := newTracker(1)
	c := tr.newConn("1", 0)
	now := time.Now()
	for i := range 100 {
		tr.record(c, stamp{user: []byte("1"), seq: int64(i), scheduled: now.Add(-time.Duration(i+1) * time.Millisecond).UnixNano()}, now)
	}
	for s := range seconds {
		tr.timeline = append(tr.timeline, timePoint{At: float64(s + 1), P50: 1, P99: 10, Max: 100, N: 30})
	}
	r := &result{Schema: schema, Users: 1, ConnsPerUser: 1, Connected: 20, Sent: 100, Timeline: tr.timeline,
		Server: serverStat{PID: 1, Processes: 4, RSSStart: 10 << 20, RSSIdle: 12 << 20, RSSPeak: 13 << 20, RSSPerConn: 100 << 10}}
	h, raw := tr.merged()
	r.setLatency(h, raw)
	judge(nil, r)
	return r
}

func TestReportIsReadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.html")
	if err := writeReport(path, sampleResult(3)); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	page := string(b)
	// Each series' legend square has its own colour, set where the
	// stylesheet's text rule cannot override it.
	for _, c := range palette[:3] {
		if !strings.Contains(page, `style="fill:`+c+`"`) {
			t.Errorf("no legend square in %s", c)
		}
	}
	if strings.Contains(page, `<text x="80"`) || strings.Contains(page, "■") {
		t.Error("the legend is still a text glyph coloured by an attribute the stylesheet overrides")
	}
	for _, want := range []string{"10.0 MiB", "100.0 KiB per connection", "noise: only 20 connections", "4 processes", "pass"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(page, "too few points") {
		t.Error("a 3-second run was called too short")
	}
	if err := writeReport(path, sampleResult(0)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "too few points") {
		t.Error("a run under a second draws an empty chart without saying why")
	}
}

// The y axis' label sits above the plot, clear of the top tick's label.
func TestAxisLabelClearsTopTick(t *testing.T) {
	c := timelineChart(sampleResult(3))
	top := c.YTicks[len(c.YTicks)-1].Pos
	if labelY := 14.0; top-labelY < 20 {
		t.Fatalf("top tick at y=%.0f, axis label at y=%.0f: they overlap", top, labelY)
	}
}

// -hgrm writes HdrHistogram's percentile distribution, in ms.
func TestHgrmIsHdrHistogramsFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.hgrm")
	if err := writeHgrm(path, sampleResult(1).Histogram); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	s := string(b)
	if !strings.HasPrefix(s, " Value\tPercentile\tTotalCount\t1/(1-Percentile)") ||
		!strings.Contains(s, "#[Max     =      100.") || !strings.Contains(s, "Total count    =          100]") {
		t.Fatalf("not the percentile distribution format:\n%s", s)
	}
	if err := writeHgrm(path, ""); err == nil {
		t.Fatal("an empty histogram was written")
	}
}

// Every make bench table shows each run's verdict figures, the median,
// and the worst run's p99.9 and max beside it.
func TestSuiteTableShowsEveryFailureAndTheWorstTail(t *testing.T) {
	rs := []*result{sampleResult(3), sampleResult(3), sampleResult(3)}
	rs[1].Latency.P999, rs[1].Latency.Max = 77.5, 88.25
	rs[2].Lost = 3
	judge(nil, rs[2])
	var md strings.Builder
	writeScenario(&md, scenario{name: "x) test", goal: "none", args: []string{"-users", "1"}}, rs)
	out := md.String()
	for _, want := range []string{"lost", "dup", "ooo", "misdeliv.", "partial", "left in Redis", "unparsed", "out of range",
		"connected (failed)", "unsent, producer errors", "verdict", "fail: 3 lost", "2 of 3 passed", "| 77.500 | 88.250 |"} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "|") && strings.Count(line, "|") != 23 {
			t.Errorf("row of %d cells: %s", strings.Count(line, "|")-1, line)
		}
	}
}

// Each of make bench, make bench-scale and make bench-compare rewrites its
// own part of BENCHMARKS.md and keeps the others.
func TestSplitPartsKeepsEachSection(t *testing.T) {
	own := "# Benchmarks\n\n## a) x\n\ntable\n"
	scale := scaleHeading + "\n\nbig\n### " + strings.TrimPrefix(scaleHeading, "## ") + ": y\n"
	against := againstHeading + "\n\nside by side\n### a)\n"
	p := splitParts(own + "\n" + scale + "\n" + against)
	if p.own != own+"\n" || p.scale != scale+"\n" || p.against != against {
		t.Fatalf("own %q, scale %q, against %q", p.own, p.scale, p.against)
	}
	p.scale = scaleHeading + "\n\nnew\n"
	if got, want := p.join(), own+"\n"+p.scale+"\n"+against; got != want {
		t.Fatalf("joined:\n%s\nwant:\n%s", got, want)
	}
	if p := splitParts("# Benchmarks\n\n" + against); p.own != "# Benchmarks\n\n" || p.scale != "" || p.against != against {
		t.Fatalf("without a scale section: %+v", p)
	}
	if p := splitParts("# Benchmarks\n"); p.own != "# Benchmarks\n" || p.scale != "" || p.against != "" {
		t.Fatalf("without sections: %+v", p)
	}
}

// The side-by-side section names every figure on which B did worse, RSS
// per connection only where there were enough connections to measure it.
func TestWorseLineNamesEveryLoss(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	c := &comparison{Names: map[string]string{"a": "php", "b": "redpush"},
		A: []*result{{Connected: 1000}}, B: []*result{{Connected: 1000}},
		Ratio: map[string]*float64{"delivered_per_sec": f(0.5), "p50_ms": f(1.01), "p99_ms": f(1.5), "rss_per_conn_bytes": f(1.4),
			"cpu_us_per_msg": f(0.9), "redis_cpu_us_per_msg": nil}}
	if got, want := worseLine(c), "**Where redpush does worse than php here: delivered/s 0.50×, p99 1.50×, RSS per connection 1.40×.**"; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	c.A[0].Connected, c.B[0].Connected = 100, 100
	if got := worseLine(c); strings.Contains(got, "RSS") {
		t.Errorf("RSS judged at 100 connections: %s", got)
	}
	c.Ratio = map[string]*float64{"p99_ms": f(0.8)}
	if got := worseLine(c); got != "**redpush does no worse than php on any figure here.**" {
		t.Errorf("got %s", got)
	}
}

// The scale section says which targets a run missed, not only its verdict.
func TestScaleTargetsNameWhatARunMissed(t *testing.T) {
	r := &result{Users: 10, Connected: 10, Verdict: "pass", Latency: latency{P99: 60, P999: 90},
		Server: serverStat{RSSPerConn: 2 << 10}, RedisClients: clientStat{ConnectedMax: 120}}
	var md strings.Builder
	writeScaleTargets(&md, 1, r)
	out := md.String()
	for _, want := range []string{"every user connected and greeted: met", "nothing lost: met",
		"p99 under 50 ms: **not met** (60.0 ms", "per idle user: met (2.0 KiB", "per process: met on average"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}
