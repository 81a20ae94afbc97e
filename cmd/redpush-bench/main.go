package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/redpush/redpush/redisq"
)

type config struct {
	url, redis, format, jsonOut   string
	users, connsPerUser, messages int
	rate, payload, producers      int
	connectRate, serverPID        int
	firstUser                     int
	duration, grace, hold         time.Duration
	allowLoss, child              bool
	backlog, spawn                int
	reportOut                     string
	sourceIPs                     []net.IP
	keyPrefix, keySuffix          string
}

func logf(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }

func main() {
	if len(os.Args) > 1 && os.Args[1] == "suite" {
		os.Exit(suiteMain(os.Args[2:]))
	}
	cfg, err := parseFlags(os.Args[1:])
	if err == flag.ErrHelp {
		os.Exit(0)
	}
	if err != nil {
		logf("redpush-bench: %v (see -h)", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var res *result
	if cfg.spawn > 1 {
		res, err = runSpawned(ctx, cfg)
	} else {
		res, err = run(ctx, cfg)
	}
	if err != nil {
		logf("redpush-bench: %v", err)
		os.Exit(2)
	}
	if !cfg.child {
		res.printTable(os.Stdout)
	}
	if err := writeOutputs(cfg, res); err != nil {
		logf("redpush-bench: %v", err)
		os.Exit(2)
	}
	if cfg.child {
		os.Exit(0) // the parent judges the merged result
	}
	if failed := verdict(cfg, res); failed != "" {
		logf("redpush-bench: FAIL: %s", failed)
		os.Exit(1)
	}
}

// verdict says why a run failed, or "" when it passed: anything lost,
// duplicated or delivered to the wrong user fails it unless -allow-loss.
func verdict(cfg *config, r *result) string {
	if cfg.allowLoss || r.Lost == 0 && r.Duplicated == 0 && r.Misdelivered == 0 {
		return ""
	}
	return fmt.Sprintf("%d lost, %d duplicated, %d misdelivered", r.Lost, r.Duplicated, r.Misdelivered)
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("redpush-bench", flag.ContinueOnError)
	fs.StringVar(&c.url, "url", "ws://127.0.0.1:9502/", "the server under test")
	fs.StringVar(&c.redis, "redis", "redis://127.0.0.1:6379", "the Redis its producers push into")
	fs.IntVar(&c.users, "users", 100, "users, each its own queue")
	fs.IntVar(&c.firstUser, "first-user", 1, "id of the first user (users are first-user … first-user+users-1)")
	fs.IntVar(&c.connsPerUser, "conns-per-user", 1, "connections per user (tabs); each receives every message")
	fs.IntVar(&c.messages, "messages", 0, "messages per user (0: send for -duration)")
	fs.DurationVar(&c.duration, "duration", 0, "how long to send (with -messages 0); with -rate 0 and -messages 0: idle hold")
	fs.IntVar(&c.rate, "rate", 0, "messages/s in total (0: as fast as possible)")
	fs.IntVar(&c.payload, "payload", 64, "payload bytes (at least the stamp, about 30)")
	fs.IntVar(&c.producers, "producers", 4, "concurrent producer connections, each pipelining up to 64 LPUSH")
	fs.StringVar(&c.format, "format", "swoole", "how the server frames a message: swoole, raw or json")
	fs.IntVar(&c.connectRate, "connect-rate", 0, "dials per second while ramping up (0: 64 at a time, unpaced)")
	ips := fs.String("source-ips", "", "spread client sockets over loopback sources, e.g. 127.0.0.2-127.0.0.40")
	fs.IntVar(&c.serverPID, "server-pid", 0, "sample this process's RSS and CPU while running")
	fs.DurationVar(&c.grace, "grace", 10*time.Second, "how long to wait for stragglers after the last send")
	fs.DurationVar(&c.hold, "hold", 0, "keep connections open this long after connecting, before sending (idle memory)")
	fs.StringVar(&c.jsonOut, "json", "", "write every figure to this file as JSON")
	fs.StringVar(&c.reportOut, "report", "", "write a self-contained HTML page with the latency charts to this file")
	fs.IntVar(&c.backlog, "backlog", 0, "queue this many messages per user before connecting (drain test)")
	fs.IntVar(&c.spawn, "spawn", 1, "run this many child processes that split the users (one process holds ~19,000 connections)")
	fs.BoolVar(&c.child, "child", false, "internal: run as a -spawn child (wait for GO on stdin after connecting)")
	fs.BoolVar(&c.allowLoss, "allow-loss", false, "exit 0 even when messages were lost or duplicated")
	keyPattern := fs.String("key-pattern", "user_%s_messages", "queue key of a user")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var ok bool
	if c.keyPrefix, c.keySuffix, ok = strings.Cut(*keyPattern, "%s"); !ok {
		return nil, fmt.Errorf("-key-pattern needs %%s")
	}
	switch c.format {
	case "swoole", "raw", "json":
	default:
		return nil, fmt.Errorf("-format %q: want swoole, raw or json", c.format)
	}
	if c.users < 1 || c.connsPerUser < 1 || c.producers < 1 {
		return nil, fmt.Errorf("-users, -conns-per-user and -producers must be at least 1")
	}
	if c.messages > 0 && c.duration > 0 {
		return nil, fmt.Errorf("give -messages or -duration, not both")
	}
	var err error
	if c.sourceIPs, err = parseIPRange(*ips); err != nil {
		return nil, err
	}
	return c, nil
}

// parseIPRange parses "a.b.c.d-a.b.c.e" (last octet range) or one address.
func parseIPRange(s string) ([]net.IP, error) {
	if s == "" {
		return nil, nil
	}
	from, to, _ := strings.Cut(s, "-")
	a, b := net.ParseIP(from).To4(), net.ParseIP(cmpOr(to, from)).To4()
	if a == nil || b == nil || !a.IsLoopback() || a[0] != b[0] || a[1] != b[1] || a[2] != b[2] || a[3] > b[3] {
		return nil, fmt.Errorf("-source-ips %q: want a loopback range like 127.0.0.2-127.0.0.40", s)
	}
	var out []net.IP
	for i := int(a[3]); i <= int(b[3]); i++ {
		out = append(out, net.IPv4(a[0], a[1], a[2], byte(i)))
	}
	return out, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func run(ctx context.Context, cfg *config) (*result, error) {
	ep, err := redisq.ParseEndpoint(cfg.redis)
	if err != nil {
		return nil, fmt.Errorf("-redis: %v", err)
	}
	rc := ep.NewClient(cfg.producers + 2)
	defer rc.Close()
	if err := rc.Ping(ctx).Err(); err != nil {
		return nil, fmt.Errorf("redis: %v", err)
	}
	tr := newTracker(4 * runtime.GOMAXPROCS(0))
	cs := &clients{cfg: cfg, tr: tr}
	pr := &producers{cfg: cfg, rc: rc, sent: make([]int64, cfg.users)}
	if cfg.backlog > 0 {
		t := time.Now()
		pr.preload(ctx)
		logf("queued %d messages in %v", pr.all.Load(), time.Since(t).Round(time.Millisecond))
	}
	mon := newMonitor(cfg, tr, cs, pr)
	mon.start(ctx)

	t0 := time.Now()
	cs.connectAll(ctx)
	connectTime := time.Since(t0)
	logf("connected %d, failed %d in %v", cs.connected.Load(), cs.failed.Load(), connectTime.Round(time.Millisecond))
	if cfg.child {
		awaitGo()
	}
	mon.markConnected()
	if cfg.hold > 0 {
		sleepCtx(ctx, cfg.hold)
	}
	mon.markIdle()

	start := time.Now()
	if cfg.backlog > 0 {
		start = t0 // a drain is timed from the first connect
	}
	if cfg.messages > 0 || cfg.rate > 0 || cfg.duration > 0 && cfg.hold == 0 {
		pr.run(ctx)
	}
	sendDone := time.Now()
	waitDelivered(ctx, cfg, tr, pr, cs)
	mon.stop()
	cs.closeAll()
	return buildResult(ctx, cfg, tr, cs, pr, mon, rc, start, sendDone, connectTime), nil
}

// waitDelivered waits until every connection received every message sent,
// or the grace period passes.
func waitDelivered(ctx context.Context, cfg *config, tr *tracker, pr *producers, cs *clients) {
	want := pr.all.Load() * int64(cfg.connsPerUser)
	deadline := time.Now().Add(cfg.grace)
	for tr.received.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// suiteMain runs `redpush-bench suite`, the scenarios of `make bench`.
func suiteMain(args []string) int {
	var sc suiteCfg
	fs := flag.NewFlagSet("redpush-bench suite", flag.ContinueOnError)
	fs.StringVar(&sc.out, "out", "BENCHMARKS.md", "the Markdown file to write")
	fs.StringVar(&sc.serverBin, "server", "./redpush", "the redpush binary to start for each run")
	fs.IntVar(&sc.runs, "runs", 3, "runs per scenario (the table reports each and the median)")
	fs.StringVar(&sc.only, "only", "", "run only the scenarios whose name starts with this (e.g. \"b)\")")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := runSuite(ctx, sc); err != nil {
		logf("redpush-bench suite: %v", err)
		return 1
	}
	logf("wrote %s", sc.out)
	return 0
}
