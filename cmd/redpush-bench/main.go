package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	url, redis, format, jsonOut   string
	users, connsPerUser, messages int
	rate, payload, producers      int
	connectRate, serverPID        int
	redisPIDs                     []int
	firstUser                     int
	duration, grace, hold         time.Duration
	allow                         []string
	wipe, child, ack              bool
	backlog, spawn                int
	reportOut, hgrmOut            string
	sourceIPs                     []net.IP
	keyPrefix, keySuffix          string
	// weight, when set (chaos), is each user's share of -rate relative to
	// the others (default 1), and heavy the users whose messages carry
	// heavyPayload bytes instead of -payload.
	weight       []int
	heavy        []bool
	heavyPayload int
}

// payloadOf is the payload size of user index u's messages.
func (c *config) payloadOf(u int) int {
	if c.heavy != nil && c.heavy[u] {
		return c.heavyPayload
	}
	return c.payload
}

func logf(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }

const usageSummary = `redpush-bench measures a Swoole-compatible WebSocket push server end to end.

It connects clients with ?user_id=, LPUSHes stamped payloads into their
Redis queues (user_{id}_messages), matches every pushed frame to what was
sent, and reports loss, duplicates, order, misdelivery, latency (corrected
for coordinated omission in -rate mode), and the CPU and memory of the
server's process tree and of Redis. It exits 0 when the run passed, 1 when
it failed (see -allow), 2 when it could not run.

Usage:
  redpush-bench [flags]                 one run against a running server
  redpush-bench suite [flags]           the scenarios of make bench (BENCHMARKS.md)
  redpush-bench compare -a CMD -b CMD   two servers side by side, alternating runs
  redpush-bench chaos [flags]           redpush instances under faults: nothing lost?

Flags:
`

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "suite":
			os.Exit(suiteMain(os.Args[2:]))
		case "compare":
			os.Exit(compareMain(os.Args[2:]))
		case "chaos":
			os.Exit(chaosMain(os.Args[2:]))
		}
	}
	os.Exit(benchMain(os.Args[1:]))
}

func benchMain(args []string) int {
	cfg, err := parseFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		logf("redpush-bench: %v (see -h)", err)
		return 2
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
		return 2
	}
	if !cfg.child {
		judge(cfg.allow, res)
		res.printTable(os.Stdout)
	}
	if err := writeOutputs(cfg, res); err != nil {
		logf("redpush-bench: %v", err)
		return 2
	}
	if cfg.child {
		return 0 // the parent judges the merged result
	}
	if !res.passed() {
		logf("redpush-bench: %s", strings.ToUpper(res.Verdict[:4])+res.Verdict[4:])
		return 1
	}
	return 0
}

// hidden flags are internal: left out of -h.
var hidden = map[string]bool{"child": true}

func parseFlags(args []string, usageOut io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("redpush-bench", flag.ContinueOnError)
	fs.SetOutput(usageOut)
	fs.Usage = func() {
		fmt.Fprint(usageOut, usageSummary)
		fs.VisitAll(func(f *flag.Flag) {
			if !hidden[f.Name] {
				printFlag(usageOut, f)
			}
		})
	}
	registerFlags(fs, c)
	allow := fs.String("allow", "", "comma-separated failures the run tolerates ("+checkNames()+", or all)")
	allowLoss := fs.Bool("allow-loss", false, "alias of -allow lost,duplicated,misdelivered")
	redisPIDs := fs.String("redis-pid", "", "Redis process ids to sample, comma-separated (default: INFO's process_id when Redis runs here)")
	ips := fs.String("source-ips", "", "spread client sockets over loopback sources, e.g. 127.0.0.2-127.0.0.40")
	keyPattern := fs.String("key-pattern", "user_%s_messages", "queue key of a user")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.allow, err = parseAllow(*allow); err != nil {
		return nil, err
	}
	if *allowLoss {
		c.allow = append(c.allow, allowLossAlias...)
	}
	if c.redisPIDs, err = parsePIDs(*redisPIDs); err != nil {
		return nil, err
	}
	if c.sourceIPs, err = parseIPRange(*ips); err != nil {
		return nil, err
	}
	var ok bool
	if c.keyPrefix, c.keySuffix, ok = strings.Cut(*keyPattern, "%s"); !ok {
		return nil, fmt.Errorf("-key-pattern needs %%s")
	}
	return c, c.check()
}

// registerFlags declares the scenario flags: the plain mode's, which
// compare passes on to each run.
func registerFlags(fs *flag.FlagSet, c *config) {
	fs.StringVar(&c.url, "url", "ws://127.0.0.1:9502/", "the server under test")
	fs.StringVar(&c.redis, "redis", "redis://127.0.0.1:6379", "the Redis its producers push into (redpush's -redis URL forms)")
	fs.IntVar(&c.users, "users", 100, "users, each its own queue")
	fs.IntVar(&c.firstUser, "first-user", 1, "id of the first user (users are first-user … first-user+users-1)")
	fs.BoolVar(&c.wipe, "wipe", false, "delete what the users' queues hold before the run (destroys their messages)")
	fs.IntVar(&c.connsPerUser, "conns-per-user", 1, "connections per user (tabs); each receives every message")
	fs.BoolVar(&c.ack, "ack", false, "acknowledged delivery: connect with ?ack=1 and acknowledge every message as it arrives; reports redeliveries and the time from push to acknowledgement")
	fs.IntVar(&c.messages, "messages", 0, "messages per user (0: send for -duration)")
	fs.DurationVar(&c.duration, "duration", 0, "how long to send (with -messages 0), as fast as possible or at -rate")
	fs.IntVar(&c.rate, "rate", 0, "messages/s in total (0: as fast as possible)")
	fs.IntVar(&c.payload, "payload", 64, "payload bytes (at least the stamp, about 45)")
	fs.IntVar(&c.producers, "producers", 4, "concurrent producer connections, each pipelining up to 64 LPUSH")
	fs.StringVar(&c.format, "format", "swoole", "how the server frames a message: swoole, raw or json")
	fs.IntVar(&c.connectRate, "connect-rate", 0, "dials per second while ramping up (0: 64 at a time, unpaced)")
	fs.IntVar(&c.serverPID, "server-pid", 0, "sample this process and its descendants (RSS, CPU) while running")
	fs.DurationVar(&c.grace, "grace", 10*time.Second, "how long to wait for stragglers after the last send")
	fs.DurationVar(&c.hold, "hold", 0, "keep connections open and idle this long after connecting, then send as the other flags say; alone, an idle run (memory per connection)")
	fs.StringVar(&c.jsonOut, "json", "", "write every figure to this file as JSON")
	fs.StringVar(&c.reportOut, "report", "", "write a self-contained HTML page with the latency charts to this file")
	fs.StringVar(&c.hgrmOut, "hgrm", "", "write the latency distribution in HdrHistogram's percentile format (as wrk2 prints it)")
	fs.IntVar(&c.backlog, "backlog", 0, "queue this many messages per user before connecting (drain test)")
	fs.IntVar(&c.spawn, "spawn", 1, "run this many child processes that split the users (one process holds ~19,000 connections)")
	fs.BoolVar(&c.child, "child", false, "internal: run as a -spawn child")
}

// printFlag prints one flag as flag.PrintDefaults does.
func printFlag(w io.Writer, f *flag.Flag) {
	name, usage := flag.UnquoteUsage(f)
	line := "  -" + f.Name
	if name != "" {
		line += " " + name
	}
	line += "\n    \t" + strings.ReplaceAll(usage, "\n", "\n    \t")
	if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s" {
		line += fmt.Sprintf(" (default %s)", f.DefValue)
	}
	fmt.Fprintln(w, line)
}

func (c *config) check() error {
	switch c.format {
	case "swoole", "raw", "json":
	default:
		return fmt.Errorf("-format %q: want swoole, raw or json", c.format)
	}
	if c.users < 1 || c.connsPerUser < 1 || c.producers < 1 || c.spawn < 1 {
		return fmt.Errorf("-users, -conns-per-user, -producers and -spawn must be at least 1")
	}
	if c.messages < 0 || c.rate < 0 || c.backlog < 0 || c.connectRate < 0 || c.duration < 0 || c.grace < 0 || c.hold < 0 {
		return fmt.Errorf("-messages, -rate, -backlog, -connect-rate, -duration, -grace and -hold cannot be negative")
	}
	if c.messages > 0 && c.duration > 0 {
		return fmt.Errorf("give -messages or -duration, not both")
	}
	if c.spawn > 1 && (c.rate > 0 && c.rate < c.spawn || c.connectRate > 0 && c.connectRate < c.spawn) {
		return fmt.Errorf("-rate and -connect-rate must be at least -spawn: each child takes its share")
	}
	if c.firstUser < 0 {
		return fmt.Errorf("-first-user cannot be negative")
	}
	return nil
}

func parsePIDs(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || p <= 0 {
			return nil, fmt.Errorf("-redis-pid %q: want process ids, comma-separated", s)
		}
		out = append(out, p)
	}
	return out, nil
}

// parseIPRange parses "a.b.c.d-a.b.c.e" (last octet range) or one address.
func parseIPRange(s string) ([]net.IP, error) {
	if s == "" {
		return nil, nil
	}
	from, to, _ := strings.Cut(s, "-")
	a, b := net.ParseIP(from).To4(), net.ParseIP(cmp.Or(to, from)).To4()
	if a == nil || b == nil || !a.IsLoopback() || a[0] != b[0] || a[1] != b[1] || a[2] != b[2] || a[3] > b[3] {
		return nil, fmt.Errorf("-source-ips %q: want a loopback range like 127.0.0.2-127.0.0.40", s)
	}
	var out []net.IP
	for i := int(a[3]); i <= int(b[3]); i++ {
		out = append(out, net.IPv4(a[0], a[1], a[2], byte(i)))
	}
	return out, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
