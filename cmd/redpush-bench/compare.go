package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// `redpush-bench compare` answers "how does B do against A on the same
// machine, in the same minutes?": runs alternate A, B, A, B…, each on a
// fresh redis-server and a fresh server process, with the same scenario.

const compareSummary = `redpush-bench compare runs one scenario against two servers, alternating
A, B, A, B…, each run on a fresh redis-server and a fresh server process,
and reports each run, the medians and the ratio B/A.

  redpush-bench compare -a 'php swoole.php' -a-addr 0.0.0.0:9502 -a-redis 127.0.0.1:6379 \
      -b './redpush -redis {redis} -addr {addr}' -runs 3 -users 1000 -rate 2000 -duration 20s

In -a and -b, {addr} and {redis} become a free loopback address and the
URL of the run's redis-server. It exits 0 when every run could be made,
whatever each run's verdict; 1 when a run could not be made; 2 for bad flags.

Flags (besides these, every flag of the plain mode but -url, -redis,
-server-pid, -redis-pid, -json, -report and -hgrm):
`

// compareOwn are the plain mode's flags that compare sets for each run.
var compareOwn = map[string]bool{"url": true, "redis": true, "server-pid": true, "redis-pid": true,
	"json": true, "report": true, "hgrm": true, "child": true}

type compareCfg struct {
	a, b            serverSpec
	runs            int
	jsonOut, report string
	redisArgs       string
	benchArgs       []string
}

func compareMain(args []string) int {
	cc, err := parseCompare(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		logf("redpush-bench compare: %v (see -h)", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cmp, err := runCompare(ctx, cc)
	if err != nil {
		logf("redpush-bench compare: %v", err)
		return 1
	}
	cmp.printTable(os.Stdout)
	if cc.jsonOut != "" {
		if err := writeJSON(cc.jsonOut, cmp); err != nil {
			logf("redpush-bench compare: %v", err)
			return 1
		}
	}
	if cc.report != "" {
		if err := writeCompareReport(cc.report, cmp); err != nil {
			logf("redpush-bench compare: %v", err)
			return 1
		}
	}
	return 0
}

func parseCompare(args []string, out io.Writer) (*compareCfg, error) {
	cc := &compareCfg{a: serverSpec{name: "a"}, b: serverSpec{name: "b"}}
	fs := flag.NewFlagSet("redpush-bench compare", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&cc.a.cmd, "a", "", "server A's command (sh -c), with {addr} and {redis}")
	fs.StringVar(&cc.b.cmd, "b", "", "server B's command (sh -c), with {addr} and {redis}")
	fs.StringVar(&cc.a.name, "a-name", "a", "A's name in the tables")
	fs.StringVar(&cc.b.name, "b-name", "b", "B's name in the tables")
	fs.StringVar(&cc.a.addr, "a-addr", "", "where A listens, for a command without {addr} (refused if taken)")
	fs.StringVar(&cc.b.addr, "b-addr", "", "where B listens, for a command without {addr} (refused if taken)")
	fs.StringVar(&cc.a.redisAddr, "a-redis", "", "host:port where A expects Redis, for a command without {redis}")
	fs.StringVar(&cc.b.redisAddr, "b-redis", "", "host:port where B expects Redis, for a command without {redis}")
	fs.IntVar(&cc.runs, "runs", 3, "runs per side")
	fs.StringVar(&cc.jsonOut, "json", "", "write every run, the medians and the ratios to this file")
	fs.StringVar(&cc.report, "report", "", "write an HTML page with both servers' latency curves to this file")
	fs.StringVar(&cc.redisArgs, "redis-args", "", "extra redis-server flags for every run, space-separated")
	own := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { own[f.Name] = true })
	passthrough(fs, &cc.benchArgs)
	fs.Usage = func() {
		fmt.Fprint(out, compareSummary)
		fs.VisitAll(func(f *flag.Flag) {
			if own[f.Name] {
				printFlag(out, f)
			}
		})
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if cc.a.cmd == "" || cc.b.cmd == "" {
		return nil, fmt.Errorf("-a and -b are required")
	}
	if cc.runs < 1 {
		return nil, fmt.Errorf("-runs must be at least 1")
	}
	// The scenario flags must make a valid plain run.
	if _, err := parseFlags(cc.benchArgs, io.Discard); err != nil {
		return nil, err
	}
	for _, s := range []serverSpec{cc.a, cc.b} {
		for _, addr := range []string{s.addr, s.redisAddr} {
			if addr != "" {
				if err := portFree(addr); err != nil {
					return nil, err
				}
			}
		}
	}
	return cc, nil
}

// passthrough declares the plain mode's scenario flags on fs; each one the
// user sets is appended to args as -name=value, for the bench runs.
func passthrough(fs *flag.FlagSet, args *[]string) {
	plain := flag.NewFlagSet("", flag.ContinueOnError)
	registerFlags(plain, &config{})
	for _, name := range []string{"allow", "redis-pid", "source-ips", "key-pattern"} {
		plain.String(name, "", "")
	}
	plain.Bool("allow-loss", false, "")
	plain.VisitAll(func(f *flag.Flag) {
		if compareOwn[f.Name] || fs.Lookup(f.Name) != nil {
			return
		}
		fs.Var(&argValue{name: f.Name, args: args, boolean: isBool(f)}, f.Name, "")
	})
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// argValue records a flag as an argument to pass on.
type argValue struct {
	name    string
	args    *[]string
	boolean bool
}

func (v *argValue) String() string { return "" }
func (v *argValue) Set(s string) error {
	*v.args = append(*v.args, "-"+v.name+"="+s)
	return nil
}
func (v *argValue) IsBoolFlag() bool { return v.boolean }

// comparison is compare's output, also its -json.
type comparison struct {
	Names    map[string]string   `json:"names"`
	Commands map[string]string   `json:"commands"`
	Flags    map[string]string   `json:"flags"` // each side's flags besides its command, as typed: " -a-addr … -a-redis … -a-name '…'"
	Scenario []string            `json:"scenario"`
	A        []*result           `json:"a"`
	B        []*result           `json:"b"`
	Median   map[string]*summary `json:"median"`
	Ratio    map[string]*float64 `json:"ratio"`
}

func runCompare(ctx context.Context, cc *compareCfg) (*comparison, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "redpush-compare")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	return runCompareEnv(ctx, runEnv{self: self, dir: dir, redisArgs: strings.Fields(cc.redisArgs)}, cc)
}

// runCompareEnv alternates the runs of A and B with the scenario of cc.
func runCompareEnv(ctx context.Context, env runEnv, cc *compareCfg) (*comparison, error) {
	env.benchArgs = cc.benchArgs
	cmp := &comparison{
		Names:    map[string]string{"a": cc.a.name, "b": cc.b.name},
		Commands: map[string]string{"a": cc.a.cmd, "b": cc.b.cmd},
		Flags:    map[string]string{"a": sideFlags("a", cc.a), "b": sideFlags("b", cc.b)},
		Scenario: cc.benchArgs,
	}
	for i := range cc.runs {
		for _, side := range []struct {
			spec serverSpec
			into *[]*result
		}{{cc.a, &cmp.A}, {cc.b, &cmp.B}} {
			logf("== %s, run %d of %d", side.spec.name, i+1, cc.runs)
			r, err := env.runOnce(ctx, side.spec, fmt.Sprintf("%s-%d", side.spec.name, i))
			if err != nil {
				return nil, err
			}
			*side.into = append(*side.into, r)
		}
	}
	ma, mb := summarize(cmp.A), summarize(cmp.B)
	cmp.Median = map[string]*summary{"a": ma, "b": mb}
	cmp.Ratio = ratios(ma, mb)
	return cmp, nil
}

// summary is the medians of a set of runs, and their worst tails.
type summary struct {
	DeliveredPerSec float64  `json:"delivered_per_sec"`
	P50             float64  `json:"p50_ms"`
	P99             float64  `json:"p99_ms"`
	P999            float64  `json:"p999_ms"`
	Max             float64  `json:"max_ms"`
	RSSPerConn      float64  `json:"rss_per_conn_bytes"`
	CPU             float64  `json:"cpu_us_per_msg"`
	RedisCPU        *float64 `json:"redis_cpu_us_per_msg"`
	TotalCPU        *float64 `json:"cpu_us_per_msg_total"`
	WorstP999       float64  `json:"worst_p999_ms"`
	WorstMax        float64  `json:"worst_max_ms"`
	Passed          int      `json:"runs_passed"`
	Runs            int      `json:"runs"`
}

func summarize(rs []*result) *summary {
	med := func(f func(*result) float64) float64 { return median(rs, f) }
	s := &summary{
		DeliveredPerSec: med(func(r *result) float64 { return r.DeliveredPerSec }),
		P50:             med(func(r *result) float64 { return r.Latency.P50 }),
		P99:             med(func(r *result) float64 { return r.Latency.P99 }),
		P999:            med(func(r *result) float64 { return r.Latency.P999 }),
		Max:             med(func(r *result) float64 { return r.Latency.Max }),
		RSSPerConn:      med(func(r *result) float64 { return float64(r.Server.RSSPerConn) }),
		CPU:             med(func(r *result) float64 { return r.Server.CPUMicrosPerMsg }),
		Runs:            len(rs),
	}
	if !slices.ContainsFunc(rs, func(r *result) bool { return r.Redis == nil }) {
		v := med(func(r *result) float64 { return r.Redis.CPUMicrosPerMsg })
		t := med(func(r *result) float64 { return deref(r.CPUMicrosPerMsgAll) })
		s.RedisCPU, s.TotalCPU = &v, &t
	}
	for _, r := range rs {
		s.WorstP999 = max(s.WorstP999, r.Latency.P999)
		s.WorstMax = max(s.WorstMax, r.Latency.Max)
		if r.passed() {
			s.Passed++
		}
	}
	return s
}

// median of an odd count is the middle value; of an even count, the mean
// of the two middle values.
func median(rs []*result, f func(*result) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

// ratios is B/A of the medians; null where A's figure is 0 or unknown.
func ratios(a, b *summary) map[string]*float64 {
	div := func(x, y float64) *float64 {
		if y == 0 {
			return nil
		}
		v := x / y
		return &v
	}
	r := map[string]*float64{
		"delivered_per_sec":  div(b.DeliveredPerSec, a.DeliveredPerSec),
		"p50_ms":             div(b.P50, a.P50),
		"p99_ms":             div(b.P99, a.P99),
		"p999_ms":            div(b.P999, a.P999),
		"rss_per_conn_bytes": div(b.RSSPerConn, a.RSSPerConn),
		"cpu_us_per_msg":     div(b.CPU, a.CPU),
	}
	r["redis_cpu_us_per_msg"], r["cpu_us_per_msg_total"] = nil, nil
	if a.RedisCPU != nil && b.RedisCPU != nil {
		r["redis_cpu_us_per_msg"] = div(*b.RedisCPU, *a.RedisCPU)
		r["cpu_us_per_msg_total"] = div(*b.TotalCPU, *a.TotalCPU)
	}
	return r
}

func (c *comparison) printTable(w io.Writer) {
	fmt.Fprintf(w, "%-14s %10s %9s %9s %9s %9s %10s %9s %9s %9s  %s\n",
		"run", "deliv/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "RSS/conn", "cpu µs", "redis µs", "total µs", "verdict")
	row := func(name string, s *summary, verdict string) {
		fmt.Fprintf(w, "%-14s %10.0f %9.3f %9.3f %9.3f %9.3f %10s %9.1f %9s %9s  %s\n", name, s.DeliveredPerSec,
			s.P50, s.P99, s.P999, s.Max, kib(int64(s.RSSPerConn)), s.CPU, optNum(s.RedisCPU), optNum(s.TotalCPU), verdict)
	}
	for i := range max(len(c.A), len(c.B)) {
		for _, side := range []struct {
			key string
			rs  []*result
		}{{"a", c.A}, {"b", c.B}} {
			if i < len(side.rs) {
				r := side.rs[i]
				row(fmt.Sprintf("%s #%d", c.Names[side.key], i+1), summarize([]*result{r}), r.Verdict)
			}
		}
	}
	for _, k := range []string{"a", "b"} {
		s := c.Median[k]
		row("median "+c.Names[k], s, fmt.Sprintf("%d of %d passed; worst p99.9 %.3f ms, max %.3f ms", s.Passed, s.Runs, s.WorstP999, s.WorstMax))
	}
	r := c.Ratio
	fmt.Fprintf(w, "%-14s %10s %9s %9s %9s %9s %10s %9s %9s %9s\n", "ratio b/a", optRatio(r["delivered_per_sec"]),
		optRatio(r["p50_ms"]), optRatio(r["p99_ms"]), optRatio(r["p999_ms"]), "", optRatio(r["rss_per_conn_bytes"]),
		optRatio(r["cpu_us_per_msg"]), optRatio(r["redis_cpu_us_per_msg"]), optRatio(r["cpu_us_per_msg_total"]))
}

func optNum(p *float64) string {
	if p == nil {
		return "unknown"
	}
	return fmt.Sprintf("%.1f", *p)
}

func optRatio(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f×", *p)
}

// sideFlags are the flags of side ("a" or "b") besides its command, as a
// reader would type them to run it again: where it listens and looks for
// Redis when its command cannot take {addr} and {redis}, and its name.
func sideFlags(side string, s serverSpec) string {
	var b strings.Builder
	if s.addr != "" {
		fmt.Fprintf(&b, " -%s-addr %s", side, s.addr)
	}
	if s.redisAddr != "" {
		fmt.Fprintf(&b, " -%s-redis %s", side, s.redisAddr)
	}
	if s.name != "" && s.name != side {
		fmt.Fprintf(&b, " -%s-name '%s'", side, s.name)
	}
	return b.String()
}
