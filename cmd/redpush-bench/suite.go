package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The suite behind `make bench`: it starts its own redis-server and a fresh
// redpush for every run, runs the fixed scenarios with this binary, and
// writes BENCHMARKS.md with the machine, each command and its results.

type scenario struct {
	name, goal string
	args       []string
}

var scenarios = []scenario{
	{"a) 1,000 users, fastest rate, 30 s", "≥ 100,000 msg/s, nothing lost",
		[]string{"-users", "1000", "-duration", "30s"}},
	{"b) 5,000 users, 2,000 msg/s, 30 s", "p99 < 1.5 ms, p99.9 < 10 ms",
		[]string{"-users", "5000", "-rate", "2000", "-duration", "30s", "-connect-rate", "2500"}},
	{"c) 5,000 idle users", "memory per connection (PHP original: ~34 KB + a Redis connection)",
		[]string{"-users", "5000", "-hold", "10s", "-connect-rate", "2500"}},
	{"d) backlog drain: 1,000,000 messages for 1,000 offline users", "≥ half of a)'s rate",
		[]string{"-users", "1000", "-backlog", "1000", "-grace", "120s"}},
}

type suiteCfg struct {
	out, serverBin string
	runs           int
	only           string
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
	redisPort := freePort()
	rs := exec.CommandContext(ctx, "redis-server", "--port", strconv.Itoa(redisPort), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--maxclients", "20000", "--loglevel", "warning")
	if err := rs.Start(); err != nil {
		return fmt.Errorf("redis-server: %v (install it: apt-get install redis-server)", err)
	}
	defer func() { _ = rs.Process.Kill(); _ = rs.Wait() }()
	redisURL := fmt.Sprintf("redis://127.0.0.1:%d", redisPort)
	rc := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", redisPort)})
	defer rc.Close()
	if err := waitFor(func() error { return rc.Ping(ctx).Err() }); err != nil {
		return err
	}

	var md strings.Builder
	writeMachine(&md, sc)
	for _, s := range scenarios {
		if sc.only != "" && !strings.HasPrefix(s.name, sc.only) {
			continue
		}
		var results []*result
		var cmdline string
		for run := range sc.runs {
			logf("== %s, run %d of %d", s.name, run+1, sc.runs)
			r, cl, err := runScenario(ctx, self, sc.serverBin, redisURL, rc, dir, s, run)
			if err != nil {
				return fmt.Errorf("%s: %v", s.name, err)
			}
			results, cmdline = append(results, r), cl
		}
		writeScenario(&md, s, cmdline, results)
	}
	return os.WriteFile(sc.out, []byte(md.String()), 0o644)
}

func runScenario(ctx context.Context, self, serverBin, redisURL string, rc *redis.Client, dir string, s scenario, run int) (*result, string, error) {
	if err := rc.FlushAll(ctx).Err(); err != nil {
		return nil, "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort())
	srv := exec.CommandContext(ctx, serverBin, "-addr", addr, "-redis", redisURL, "-log-level", "warn", "-instance", "bench")
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return nil, "", err
	}
	defer func() { _ = srv.Process.Signal(os.Interrupt); _ = srv.Wait() }()
	if err := waitFor(func() error {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}); err != nil {
		return nil, "", err
	}
	out := filepath.Join(dir, fmt.Sprintf("%d.json", run))
	args := append([]string{"-url", "ws://" + addr + "/", "-redis", redisURL,
		"-server-pid", strconv.Itoa(srv.Process.Pid), "-json", out}, s.args...)
	b := exec.CommandContext(ctx, self, args...)
	b.Stdout, b.Stderr = os.Stderr, os.Stderr
	if err := b.Run(); err != nil {
		return nil, "", fmt.Errorf("bench: %v", err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return nil, "", err
	}
	var r result
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, "", err
	}
	cmdline := "redpush-bench -url ws://HOST:PORT/ -redis REDIS -server-pid PID " + strings.Join(s.args, " ")
	return &r, cmdline, nil
}

func writeMachine(md *strings.Builder, sc suiteCfg) {
	fmt.Fprintf(md, "# Benchmarks\n\nWritten by `make bench` (`redpush-bench suite`) on %s. Every run starts a fresh\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(md, "redpush; redis-server, redpush and the bench (its producers and clients) share the machine.\n")
	fmt.Fprintf(md, "Runs per scenario: %d; the tables show every run and the median.\n\n", sc.runs)
	fmt.Fprintf(md, "| machine | |\n| --- | --- |\n")
	fmt.Fprintf(md, "| CPU | %s, %d cores |\n", cpuModel(), runtime.NumCPU())
	fmt.Fprintf(md, "| memory | %s |\n", memTotal())
	fmt.Fprintf(md, "| Go | %s |\n", runtime.Version())
	fmt.Fprintf(md, "| Redis | %s |\n", commandLine("redis-server", "--version"))
	fmt.Fprintf(md, "| kernel | %s |\n\n", commandLine("uname", "-sr"))
	fmt.Fprintf(md, "Server setup: `redis-server --save \"\" --maxclients 20000`, `redpush -redis URL -log-level warn`.\n\n")
}

func writeScenario(md *strings.Builder, s scenario, cmdline string, rs []*result) {
	fmt.Fprintf(md, "## %s\n\nGoal: %s.\n\n```\n%s\n```\n\n", s.name, s.goal, cmdline)
	fmt.Fprintf(md, "| run | connected | sent | delivered | lost | dup | ooo | delivered/s | p50 ms | p99 ms | p99.9 ms | max ms | RSS/conn | CPU µs/msg |\n")
	fmt.Fprintf(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for i, r := range rs {
		fmt.Fprintf(md, "| %d | %d | %d | %d | %d | %d | %d | %.0f | %.3f | %.3f | %.3f | %.3f | %.1f KiB | %.1f |\n",
			i+1, r.Connected, r.Sent, r.Delivered, r.Lost, r.Duplicated, r.OutOfOrder, r.DeliveredPerSec,
			r.Latency.P50, r.Latency.P99, r.Latency.P999, r.Latency.Max, float64(r.Server.RSSPerConn)/1024, r.Server.CPUMicrosPerMsg)
	}
	med := func(f func(*result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	fmt.Fprintf(md, "| **median** | | | | | | | **%.0f** | **%.3f** | **%.3f** | **%.3f** | %.3f | **%.1f KiB** | %.1f |\n\n",
		med(func(r *result) float64 { return r.DeliveredPerSec }), med(func(r *result) float64 { return r.Latency.P50 }),
		med(func(r *result) float64 { return r.Latency.P99 }), med(func(r *result) float64 { return r.Latency.P999 }),
		med(func(r *result) float64 { return r.Latency.Max }), med(func(r *result) float64 { return float64(r.Server.RSSPerConn) / 1024 }),
		med(func(r *result) float64 { return r.Server.CPUMicrosPerMsg }))
	if rs[0].Backlog > 0 {
		fmt.Fprintf(md, "Drain time (first connect to last message), median: %.2f s.\n\n", med(func(r *result) float64 { return r.DeliverSeconds }))
	}
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

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitFor polls a readiness check for up to 10 s.
func waitFor(check func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
