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
	{"f) a) with acknowledged delivery: 1,000 users, fastest rate, 30 s, ?ack=1", "what acknowledgements cost against a): each client acknowledges every message as it reads it",
		[]string{"-users", "1000", "-duration", "30s", "-ack"}, nil},
	{"g) b) with acknowledged delivery: 5,000 users, 2,000 msg/s, 30 s, ?ack=1", "against b): the latency, and the time from push to the client's acknowledgement",
		[]string{"-users", "5000", "-rate", "2000", "-duration", "30s", "-connect-rate", "2500", "-ack"}, nil},
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

// scaleScenario is the section "Scale" (make bench-scale): more users than
// one process may hold sockets for here (20,000 open files), so six redpush
// processes share the port and six bench processes connect from sixteen
// loopback addresses (one source address reaches one port ~28,000 times,
// and connect(2) slows down long before: it searches the port range for a
// free tuple).
var scaleScenario = scenario{"100,000 users, held idle 60 s, then 2,000 msg/s, 60 s, connecting at 5,000/s (six redpush processes on one port)",
	"100,000 connected users: nothing lost, p99 < 50 ms, < 3 KB of server RSS per idle user, ≤ 64 Redis connections per process, every user greeted",
	[]string{"-users", "100000", "-rate", "2000", "-duration", "60s", "-connect-rate", "5000", "-spawn", "6", "-source-ips", "127.0.0.2-127.0.0.17", "-hold", "60s"},
	nil}

// scaleProcs are the redpush processes of the scale scenario.
const scaleProcs = 6

const scaleHeading = "## Scale: 100,000 users"

type suiteCfg struct {
	commit         string // of the tree the server was built from, read at start
	againstNote    string
	out, serverBin string
	runs           int
	only           string
	against        serverSpec
	scale          bool
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
	fs.BoolVar(&sc.scale, "scale", false, "run the scale scenario instead (100,000 users, six server processes) and write its section")
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
	parts := splitParts(string(old))
	var md strings.Builder
	switch {
	case sc.against.cmd != "":
		env.redisArgs = nil // Redis as the original expects it: default maxclients
		if err := runAgainst(ctx, env, sc, redpush, &md); err != nil {
			return err
		}
		parts.against = md.String()
	case sc.scale:
		if err := runScale(ctx, env, sc, &md); err != nil {
			return err
		}
		parts.scale = md.String()
	default:
		writeMachine(&md, sc)
		for _, s := range scenarios {
			if sc.only != "" && !strings.HasPrefix(s.name, sc.only) {
				continue
			}
			env.redisArgs = suiteRedis
			if s.redis != nil {
				env.redisArgs = s.redis
			}
			results, err := env.runScenario(ctx, s, redpush, 1, sc.runs)
			if err != nil {
				return err
			}
			writeScenario(&md, s, results)
		}
		parts.own = md.String()
	}
	return os.WriteFile(sc.out, []byte(parts.join()), 0o644)
}

// runScenario runs s runs times against srv, which starts procs processes.
func (e runEnv) runScenario(ctx context.Context, s scenario, srv serverSpec, procs, runs int) ([]*result, error) {
	var results []*result
	for run := range runs {
		logf("== %s, run %d of %d", s.name, run+1, runs)
		e.benchArgs, e.procs = s.args, procs
		r, err := e.runOnce(ctx, srv, fmt.Sprintf("%c-%d", s.name[0], run))
		if err != nil {
			return nil, fmt.Errorf("%s: %v", s.name, err)
		}
		results = append(results, r)
	}
	return results, nil
}

// runScale runs the scale scenario: scaleProcs redpush processes with
// -reuseport, started by one shell (its whole tree is sampled).
func runScale(ctx context.Context, env runEnv, sc suiteCfg, md *strings.Builder) error {
	s := scaleScenario
	one := sc.serverBin + " -addr {addr} -redis {redis} -log-level warn -reuseport"
	srv := serverSpec{name: "redpush", cmd: fmt.Sprintf("for i in $(seq %d); do %s & done; wait", scaleProcs, one)}
	results, err := env.runScenario(ctx, s, srv, scaleProcs, sc.runs)
	if err != nil {
		return err
	}
	fmt.Fprintf(md, "%s\n\nWritten by `make bench-scale` (`redpush-bench suite -scale`) on %s.\n\n",
		scaleHeading, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	writeMachineTable(md, sc.commit)
	fmt.Fprintf(md, "The server is %d processes started by `sh -c '%s'` (each its own instance id: host-port-N); the bench samples\n", scaleProcs, srv.cmd)
	fmt.Fprintf(md, "the shell and all of them (RSS summed; the largest process's idle RSS below the table). Redis: `--maxclients 20000`.\n\n")
	var sub strings.Builder
	writeScenario(&sub, s, results)
	md.WriteString("#" + sub.String()) // a subsection of the scale section
	for i, r := range results {
		writeScaleTargets(md, i+1, r)
	}
	return nil
}

// writeScaleTargets says, for one run, which of the targets it met:
// the verdict above only says that nothing was lost, duplicated, reordered
// or misdelivered.
func writeScaleTargets(md *strings.Builder, run int, r *result) {
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	perConn := float64(r.Server.RSSPerConn)
	clients := float64(r.RedisClients.ConnectedMax) / scaleProcs
	fmt.Fprintf(md, "Run %d against the targets:\n\n", run)
	fmt.Fprintf(md, "- every user connected and greeted: %s (%d connected, %d failed, in %.1f s: %.0f/s against the bench's 5,000/s)\n",
		met(r.ConnectFailed == 0 && r.Connected == int64(r.Users)), r.Connected, r.ConnectFailed, r.ConnectSeconds, float64(r.Connected)/max(r.ConnectSeconds, 1e-9))
	fmt.Fprintf(md, "- nothing lost: %s (%d lost, verdict %s)\n", met(r.Lost == 0 && r.Verdict == "pass"), r.Lost, r.Verdict)
	fmt.Fprintf(md, "- p99 under 50 ms: %s (%.1f ms; p99.9 %.1f ms)\n", met(r.Latency.P99 < 50), r.Latency.P99, r.Latency.P999)
	fmt.Fprintf(md, "- under 3 KB of server RSS per idle user: %s (%.1f KiB; the largest process %.1f MiB when idle)\n",
		met(perConn < 3000), perConn/1024, float64(r.Server.RSSIdleTop)/(1<<20))
	fmt.Fprintf(md, "- at most 64 Redis connections per process: %s on average (Redis's connected_clients at most %d, the bench's own included: %.1f per process)\n",
		met(clients <= 64), r.RedisClients.ConnectedMax, clients)
	if r.IdleSeconds > 0 && r.Redis != nil {
		perUser := func(msPerSec float64) float64 { return msPerSec * 1e3 / float64(max(r.Connected, 1)) }
		fmt.Fprintf(md, "- what idle users cost (not a target; heartbeats, presence refreshes, queue sweeps, keep-alive pings), over %.0f s with %d connected and nothing sent: server %.0f ms/s, Redis %.0f ms/s of CPU (%.2f and %.2f µs per user per second)\n",
			r.IdleSeconds, r.Connected, r.Server.IdleCPUMillisPerSec, r.Redis.IdleCPUMillisPerSec, perUser(r.Server.IdleCPUMillisPerSec), perUser(r.Redis.IdleCPUMillisPerSec))
	}
	md.WriteString("\n")
}

// mdParts are BENCHMARKS.md's parts, each written by its own command and
// kept by the others: the suite's scenarios (make bench), the scale
// section (make bench-scale) and the side-by-side one (make bench-compare).
type mdParts struct{ own, scale, against string }

// splitParts cuts a BENCHMARKS.md into its parts; each section runs from
// its heading to the next section's heading or the end.
func splitParts(md string) mdParts {
	var p mdParts
	if i := strings.Index(md, "\n"+againstHeading+"\n"); i >= 0 {
		md, p.against = md[:i+1], md[i+1:]
	}
	if i := strings.Index(md, "\n"+scaleHeading+"\n"); i >= 0 {
		md, p.scale = md[:i+1], md[i+1:]
	}
	p.own = md
	return p
}

func (p mdParts) join() string {
	out := strings.TrimRight(p.own, "\n") + "\n"
	for _, s := range []string{p.scale, p.against} {
		if s != "" {
			out += "\n" + strings.TrimRight(s, "\n") + "\n"
		}
	}
	return out
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
	writeMachineTable(md, sc.commit)
	fmt.Fprintf(md, "Server setup: `redis-server --save \"\" --appendonly no --maxclients 20000` (e: `--maxclients 200`), `redpush -addr ADDR -redis URL -log-level warn` (default flags: hinted consumption).\n\n")
	fmt.Fprintf(md, "How to read the figures: latency runs from the message's scheduled push in -rate scenarios (corrected for coordinated\n")
	fmt.Fprintf(md, "omission), from the LPUSH otherwise, to the client's read; every sample counts, and `out of range` counts those\n")
	fmt.Fprintf(md, "beyond an hour. CPU per message is the CPU of the server's whole process tree (and of redis-server) from the start of\n")
	fmt.Fprintf(md, "sending (of connecting, for a drain) to the last delivery, divided by the messages delivered in it. RSS per\n")
	fmt.Fprintf(md, "connection is the growth of the tree's RSS from before connecting to all connected. A run passes when nothing was\n")
	fmt.Fprintf(md, "lost, duplicated, misdelivered, reordered, left in Redis or unparsed, every client connected, and every LPUSH succeeded.\n\n")
}

// writeMachineTable writes what the figures were measured on.
func writeMachineTable(md *strings.Builder, commit string) {
	fmt.Fprintf(md, "| machine | |\n| --- | --- |\n")
	fmt.Fprintf(md, "| CPU | %s, %d cores |\n", cpuModel(), runtime.NumCPU())
	fmt.Fprintf(md, "| memory | %s |\n", memTotal())
	fmt.Fprintf(md, "| Go | %s |\n", runtime.Version())
	fmt.Fprintf(md, "| Redis | %s |\n", commandLine("redis-server", "--version"))
	fmt.Fprintf(md, "| kernel | %s |\n", commandLine("uname", "-sr"))
	fmt.Fprintf(md, "| redpush | commit %s |\n\n", commit)
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
	if rs[0].Ack != nil {
		writeAckRows(md, rs)
	}
}

// writeAckRows gives, for a run in ack mode, the time from the push to the
// client's acknowledgement (every frame's, duplicates included) and the
// frames marked redelivered.
func writeAckRows(md *strings.Builder, rs []*result) {
	md.WriteString("| run | push to ack p50 ms | p99 ms | p99.9 ms | max ms | redelivered |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	for i, r := range rs {
		if a := r.Ack; a != nil {
			fmt.Fprintf(md, "| %d | %.3f | %.3f | %.3f | %.3f | %d |\n", i+1, a.PushToAck.P50, a.PushToAck.P99, a.PushToAck.P999, a.PushToAck.Max, a.Redelivered)
		}
	}
	ack := func(f func(latency) float64) func(*result) float64 {
		return func(r *result) float64 {
			if r.Ack == nil {
				return 0
			}
			return f(r.Ack.PushToAck)
		}
	}
	fmt.Fprintf(md, "| **median** | **%.3f** | **%.3f** | **%.3f** | %.3f |  |\n\n",
		median(rs, ack(func(l latency) float64 { return l.P50 })), median(rs, ack(func(l latency) float64 { return l.P99 })),
		median(rs, ack(func(l latency) float64 { return l.P999 })), median(rs, ack(func(l latency) float64 { return l.Max })))
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
