package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The suite behind `make bench`: for every run a fresh redis-server and a
// fresh redpush, the fixed scenarios run with this binary, and
// BENCHMARKS.md gets the machine, each command and its results. With
// -against it runs the side-by-side scenarios instead, redpush against
// another server (the PHP original), and writes them as the section
// "Against the PHP original", which a plain run keeps as it is.

type scenario struct {
	name, goal string
	args       []string
	redis      []string // redis-server's arguments, when not the suite's
}

var scenarios = []scenario{
	{"a) 1,000 users, fastest rate, 30 s", "≥ 100,000 msg/s, nothing lost",
		[]string{"-users", "1000", "-duration", "30s"}, nil},
	{"b) 5,000 users, 2,000 msg/s, 30 s", "p99 < 1.5 ms, p99.9 < 10 ms",
		[]string{"-users", "5000", "-rate", "2000", "-duration", "30s", "-connect-rate", "2500"}, nil},
	{"c) 5,000 idle users", "memory per connection (PHP original: ~34 KB + a Redis connection)",
		[]string{"-users", "5000", "-hold", "10s", "-connect-rate", "2500"}, nil},
	{"d) backlog drain: 1,000,000 messages for 1,000 offline users", "≥ half of a)'s rate",
		[]string{"-users", "1000", "-backlog", "1000", "-grace", "120s"}, nil},
	{"e) 10,000 users, 2,000 msg/s, 60 s, Redis with --maxclients 200 (two bench processes)", "Redis connections independent of online users: one redpush with default flags serves 10,000 users through a Redis that admits 200 clients",
		[]string{"-users", "10000", "-rate", "2000", "-duration", "60s", "-connect-rate", "2500", "-spawn", "2"},
		[]string{"--maxclients", "200"}},
}

// sideBySide are the scenarios of "Against the PHP original": sized so
// that the original can run them (one Redis connection per user, under
// Redis's default maxclients).
var sideBySide = []scenario{
	{"a) 1,000 users, fastest rate, 20 s", "", []string{"-users", "1000", "-duration", "20s"}, nil},
	{"b) 1,000 users, 2,000 msg/s, 20 s", "", []string{"-users", "1000", "-rate", "2000", "-duration", "20s"}, nil},
	{"c) 5,000 idle users", "", []string{"-users", "5000", "-hold", "10s", "-connect-rate", "2500"}, nil},
	{"d) 100 users × 100 messages, queued before they connect", "", []string{"-users", "100", "-backlog", "100"}, nil},
}

const againstHeading = "## Against the PHP original"

type suiteCfg struct {
	commit         string // of the tree the server was built from, read at start
	againstNote    string
	out, serverBin string
	runs           int
	only           string
	against        serverSpec
}

// suiteMain runs `redpush-bench suite`.
func suiteMain(args []string) int {
	sc := suiteCfg{against: serverSpec{name: "PHP original"}}
	fs := flag.NewFlagSet("redpush-bench suite", flag.ContinueOnError)
	fs.StringVar(&sc.out, "out", "BENCHMARKS.md", "the Markdown file to write")
	fs.StringVar(&sc.serverBin, "server", "./redpush", "the redpush binary to start for each run")
	fs.IntVar(&sc.runs, "runs", 3, "runs per scenario (the tables report each, the median and the worst tails)")
	fs.StringVar(&sc.only, "only", "", "run only the scenarios whose name starts with this (e.g. \"b)\")")
	fs.StringVar(&sc.against.cmd, "against", "", "run the side-by-side scenarios against this server command (sh -c; {addr}, {redis} as in compare)")
	fs.StringVar(&sc.against.addr, "against-addr", "", "where -against listens, for a command without {addr}")
	fs.StringVar(&sc.against.redisAddr, "against-redis", "", "host:port where -against expects Redis, for a command without {redis}")
	fs.StringVar(&sc.against.name, "against-name", sc.against.name, "-against's name in the tables")
	fs.StringVar(&sc.againstNote, "against-note", "", "a paragraph on what -against runs (versions, build), for the section")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sc.commit = sourceCommit()
	if err := runSuite(ctx, sc); err != nil {
		logf("redpush-bench suite: %v", err)
		return 1
	}
	logf("wrote %s", sc.out)
	return 0
}

func runSuite(ctx context.Context, sc suiteCfg) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "redpush-suite")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	suiteRedis := []string{"--maxclients", "20000"}
	env := runEnv{self: self, dir: dir, redisArgs: suiteRedis}
	redpush := serverSpec{name: "redpush", cmd: sc.serverBin + " -addr {addr} -redis {redis} -log-level warn"}
	old, _ := os.ReadFile(sc.out)
	mainPart, againstPart := splitAgainst(string(old))
	if sc.against.cmd != "" {
		env.redisArgs = nil // Redis as the original expects it: default maxclients
		var md strings.Builder
		if err := runAgainst(ctx, env, sc, redpush, &md); err != nil {
			return err
		}
		return os.WriteFile(sc.out, []byte(strings.TrimRight(mainPart, "\n")+"\n\n"+md.String()), 0o644)
	}
	var md strings.Builder
	writeMachine(&md, sc)
	for _, s := range scenarios {
		if sc.only != "" && !strings.HasPrefix(s.name, sc.only) {
			continue
		}
		var results []*result
		for run := range sc.runs {
			logf("== %s, run %d of %d", s.name, run+1, sc.runs)
			env.benchArgs = s.args
			env.redisArgs = suiteRedis
			if s.redis != nil {
				env.redisArgs = s.redis
			}
			r, err := env.runOnce(ctx, redpush, fmt.Sprintf("%c-%d", s.name[0], run))
			if err != nil {
				return fmt.Errorf("%s: %v", s.name, err)
			}
			results = append(results, r)
		}
		writeScenario(&md, s, results)
	}
	if againstPart != "" {
		md.WriteString("\n" + againstPart)
	}
	return os.WriteFile(sc.out, []byte(md.String()), 0o644)
}

// splitAgainst cuts a BENCHMARKS.md into its own part and the side-by-side
// section, which runs from its heading to the end.
func splitAgainst(md string) (own, against string) {
	i := strings.Index(md, "\n"+againstHeading+"\n")
	if i < 0 {
		return md, ""
	}
	return md[:i+1], md[i+1:]
}

func runAgainst(ctx context.Context, env runEnv, sc suiteCfg, redpush serverSpec, md *strings.Builder) error {
	fmt.Fprintf(md, "%s\n\nWritten by `redpush-bench suite -against` on %s, on the machine above, redpush at commit %s. Each scenario runs\n",
		againstHeading, time.Now().UTC().Format("2006-01-02 15:04 MST"), sc.commit)
	fmt.Fprintf(md, "%d times per server, alternating (%s, redpush, %s, …), each run on a fresh `redis-server --save \"\" --appendonly no`\n", sc.runs, sc.against.name, sc.against.name)
	fmt.Fprintf(md, "(default `maxclients`) and a fresh server process; the whole process tree of each server is sampled, and Redis's CPU beside it.\n\n")
	fmt.Fprintf(md, "| server | command |\n| --- | --- |\n| %s | `%s` |\n| redpush | `%s` |\n\n", sc.against.name, sc.against.cmd, redpush.cmd)
	if sc.againstNote != "" {
		fmt.Fprintf(md, "%s\n\n", sc.againstNote)
	}
	for _, s := range sideBySide {
		if sc.only != "" && !strings.HasPrefix(s.name, sc.only) {
			continue
		}
		cc := &compareCfg{a: sc.against, b: redpush, runs: sc.runs, benchArgs: s.args}
		cmp, err := runCompareEnv(ctx, env, cc)
		if err != nil {
			return fmt.Errorf("%s: %v", s.name, err)
		}
		writeComparison(md, s, cmp)
	}
	return nil
}

func writeMachine(md *strings.Builder, sc suiteCfg) {
	fmt.Fprintf(md, "# Benchmarks\n\nWritten by `make bench` (`redpush-bench suite`) on %s. Every run starts a fresh\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(md, "redis-server and a fresh redpush; redis-server, redpush and the bench (its producers and clients) share the machine.\n")
	fmt.Fprintf(md, "Runs per scenario: %d; the tables show every run, the median, and the worst run's tail.\n\n", sc.runs)
	fmt.Fprintf(md, "| machine | |\n| --- | --- |\n")
	fmt.Fprintf(md, "| CPU | %s, %d cores |\n", cpuModel(), runtime.NumCPU())
	fmt.Fprintf(md, "| memory | %s |\n", memTotal())
	fmt.Fprintf(md, "| Go | %s |\n", runtime.Version())
	fmt.Fprintf(md, "| Redis | %s |\n", commandLine("redis-server", "--version"))
	fmt.Fprintf(md, "| kernel | %s |\n", commandLine("uname", "-sr"))
	fmt.Fprintf(md, "| redpush | commit %s |\n\n", sc.commit)
	fmt.Fprintf(md, "Server setup: `redis-server --save \"\" --appendonly no --maxclients 20000` (e: `--maxclients 200`), `redpush -addr ADDR -redis URL -log-level warn` (default flags: hinted consumption).\n\n")
	fmt.Fprintf(md, "How to read the figures: latency runs from the message's scheduled push in -rate scenarios (corrected for coordinated\n")
	fmt.Fprintf(md, "omission), from the LPUSH otherwise, to the client's read; every sample counts, and `out of range` counts those\n")
	fmt.Fprintf(md, "beyond an hour. CPU per message is the CPU of the server's whole process tree (and of redis-server) from the start of\n")
	fmt.Fprintf(md, "sending (of connecting, for a drain) to the last delivery, divided by the messages delivered in it. RSS per\n")
	fmt.Fprintf(md, "connection is the growth of the tree's RSS from before connecting to all connected. A run passes when nothing was\n")
	fmt.Fprintf(md, "lost, duplicated, misdelivered, reordered, left in Redis or unparsed, every client connected, and every LPUSH succeeded.\n\n")
}

const runHeader = "| run | verdict | connected (failed) | sent (unsent, producer errors) | delivered | lost | dup | ooo | misdeliv. | partial | left in Redis (queued/processing) | unparsed | out of range | delivered/s | p50 ms | p99 ms | p99.9 ms | max ms | RSS/conn | CPU µs/msg | Redis µs/msg | Redis clients (max connected/blocked) |\n" +
	"| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"

func runRow(name string, r *result) string {
	redis := "unknown"
	if r.Redis != nil {
		redis = fmt.Sprintf("%.1f", r.Redis.CPUMicrosPerMsg)
	}
	return fmt.Sprintf("| %s | %s | %d (%d) | %d (%d, %d) | %d | %d | %d | %d | %d | %d | %d (%d/%d) | %d | %d | %.0f | %.3f | %.3f | %.3f | %.3f | %.1f KiB | %.1f | %s | %d/%d |\n",
		name, r.Verdict, r.Connected, r.ConnectFailed, r.Sent, r.Unsent, r.ProducerErrors, r.Delivered, r.Lost, r.Duplicated,
		r.OutOfOrder, r.Misdelivered, r.Partial, r.StillInRedis, r.StillInQueue, r.StillProcessing, r.Garbage, r.LatencyOutOfRange,
		r.DeliveredPerSec, r.Latency.P50, r.Latency.P99, r.Latency.P999, r.Latency.Max, float64(r.Server.RSSPerConn)/1024,
		r.Server.CPUMicrosPerMsg, redis, r.RedisClients.ConnectedMax, r.RedisClients.BlockedMax)
}

// summaryRows are the median and the worst run's tails, under the runs:
// rows of the same 22 columns, empty where a median says nothing.
func summaryRows(name string, s *summary) string {
	med := make([]string, 22)
	med[0] = "**" + strings.TrimSpace("median "+name) + "**"
	med[13], med[14], med[15], med[16], med[17] = fmt.Sprintf("**%.0f**", s.DeliveredPerSec),
		fmt.Sprintf("**%.3f**", s.P50), fmt.Sprintf("**%.3f**", s.P99), fmt.Sprintf("**%.3f**", s.P999), fmt.Sprintf("%.3f", s.Max)
	med[18], med[19], med[20] = fmt.Sprintf("**%.1f KiB**", s.RSSPerConn/1024), fmt.Sprintf("**%.1f**", s.CPU), optNum(s.RedisCPU)
	med[1] = fmt.Sprintf("%d of %d passed", s.Passed, s.Runs)
	worst := make([]string, 22)
	worst[0] = strings.TrimSpace("worst run " + name)
	worst[16], worst[17] = fmt.Sprintf("%.3f", s.WorstP999), fmt.Sprintf("%.3f", s.WorstMax)
	return "| " + strings.Join(med, " | ") + " |\n| " + strings.Join(worst, " | ") + " |\n"
}

func writeScenario(md *strings.Builder, s scenario, rs []*result) {
	fmt.Fprintf(md, "## %s\n\nGoal: %s.\n\n```\nredpush-bench -url ws://HOST:PORT/ -redis REDIS -server-pid PID -redis-pid PID %s\n```\n\n", s.name, s.goal, strings.Join(s.args, " "))
	md.WriteString(runHeader)
	for i, r := range rs {
		md.WriteString(runRow(strconv.Itoa(i+1), r))
	}
	md.WriteString(summaryRows("", summarize(rs)) + "\n")
	if rs[0].Backlog > 0 {
		fmt.Fprintf(md, "Drain time (first connect to last message), median: %.2f s.\n\n", median(rs, func(r *result) float64 { return r.DeliverSeconds }))
	}
}

func writeComparison(md *strings.Builder, s scenario, c *comparison) {
	fmt.Fprintf(md, "### %s\n\n```\nredpush-bench compare -a '%s'%s -b '%s'%s -runs %d %s\n```\n\n", s.name,
		c.Commands["a"], c.Flags["a"], c.Commands["b"], c.Flags["b"], len(c.A), strings.Join(s.args, " "))
	md.WriteString(runHeader)
	for i := range max(len(c.A), len(c.B)) {
		if i < len(c.A) {
			md.WriteString(runRow(fmt.Sprintf("%s #%d", c.Names["a"], i+1), c.A[i]))
		}
		if i < len(c.B) {
			md.WriteString(runRow(fmt.Sprintf("%s #%d", c.Names["b"], i+1), c.B[i]))
		}
	}
	md.WriteString(summaryRows(c.Names["a"], c.Median["a"]))
	md.WriteString(summaryRows(c.Names["b"], c.Median["b"]))
	r := c.Ratio
	fmt.Fprintf(md, "\nRatio %s / %s of the medians: delivered/s %s, p50 %s, p99 %s, p99.9 %s, RSS per connection %s, "+
		"server CPU per message %s, Redis CPU per message %s, server + Redis %s.\n\n", c.Names["b"], c.Names["a"],
		optRatio(r["delivered_per_sec"]), optRatio(r["p50_ms"]), optRatio(r["p99_ms"]), optRatio(r["p999_ms"]),
		optRatio(r["rss_per_conn_bytes"]), optRatio(r["cpu_us_per_msg"]), optRatio(r["redis_cpu_us_per_msg"]), optRatio(r["cpu_us_per_msg_total"]))
	md.WriteString(worseLine(c) + "\n\n")
}

// worseLine names every figure on which B did more than 5% worse than A,
// so that the losses read as plainly as the wins (RSS per connection only
// from 500 connections up: below, it is noise).
func worseLine(c *comparison) string {
	var worse []string
	for _, f := range []struct {
		key, name     string
		higherIsWorse bool
	}{
		{"delivered_per_sec", "delivered/s", false}, {"p50_ms", "p50", true}, {"p99_ms", "p99", true},
		{"p999_ms", "p99.9", true}, {"rss_per_conn_bytes", "RSS per connection", true},
		{"cpu_us_per_msg", "server CPU per message", true}, {"redis_cpu_us_per_msg", "Redis CPU per message", true},
		{"cpu_us_per_msg_total", "server + Redis CPU per message", true},
	} {
		r := c.Ratio[f.key]
		if f.key == "rss_per_conn_bytes" && min(median(c.A, connected), median(c.B, connected)) < minConnsForRSS {
			continue // noise at this size
		}
		if r != nil && (f.higherIsWorse && *r > 1.05 || !f.higherIsWorse && *r < 0.95) {
			worse = append(worse, f.name+" "+optRatio(r))
		}
	}
	if len(worse) == 0 {
		return fmt.Sprintf("**%s does no worse than %s on any figure here.**", c.Names["b"], c.Names["a"])
	}
	return fmt.Sprintf("**Where %s does worse than %s here: %s.**", c.Names["b"], c.Names["a"], strings.Join(worse, ", "))
}

// sourceCommit names the commit of the tree the server is built from, with
// "-dirty" when a file other than BENCHMARKS.md differs from it.
func sourceCommit() string {
	c := commandLine("git", "rev-parse", "--short", "HEAD")
	if out, err := exec.Command("git", "status", "--porcelain", "--", ".", ":!BENCHMARKS.md").Output(); err == nil && len(out) > 0 {
		c += "-dirty"
	}
	return c
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return fmt.Sprintf("%.1f GiB", kb/(1<<20))
		}
	}
	return "unknown"
}

func commandLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func connected(r *result) float64 { return float64(r.Connected) }
