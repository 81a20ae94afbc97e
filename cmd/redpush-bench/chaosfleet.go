package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// fleet is what the chaos run starts and breaks: one redis-server that
// persists every write (appendfsync always: what Redis acknowledged
// survives its restart, so any loss is the gateway's) and the redpush
// instances, each on a fixed port with its own instance id.
type fleet struct {
	serverBin string
	dir       string
	redisAddr string
	addrs     []string

	mu    sync.Mutex
	redis *proc
	insts []*proc
	imu   []sync.Mutex // one fault at a time per instance
}

func newFleet(ctx context.Context, serverBin, dir string, n int) (*fleet, error) {
	f := &fleet{serverBin: serverBin, dir: dir, redisAddr: freeAddr(), insts: make([]*proc, n), imu: make([]sync.Mutex, n)}
	for range n {
		f.addrs = append(f.addrs, freeAddr())
	}
	if err := f.startRedis(ctx); err != nil {
		return nil, err
	}
	for i := range n {
		if err := f.startInstance(ctx, i); err != nil {
			f.stop()
			return nil, err
		}
	}
	for i := range n {
		if err := waitGreeting(ctx, f.addrs[i], f.inst(i)); err != nil {
			f.stop()
			return nil, fmt.Errorf("instance %d did not come up: %v; its log: %s", i, err, tail(f.logPath(i)))
		}
	}
	return f, nil
}

func (f *fleet) redisURL() string { return "redis://" + f.redisAddr }

func (f *fleet) startRedis(ctx context.Context) error {
	p, err := startRedis(ctx, f.redisAddr, []string{"--appendonly", "yes", "--appendfsync", "always",
		"--dir", f.dir, "--maxclients", "20000"})
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.redis = p
	f.mu.Unlock()
	return nil
}

func (f *fleet) logPath(i int) string { return filepath.Join(f.dir, fmt.Sprintf("instance-%d.log", i)) }

// startInstance starts instance i and, like a supervisor, starts it again
// while it exits before listening (it refuses to start while Redis is down,
// or while its id's previous holder's claim has not expired), for up to a
// minute.
func (f *fleet) startInstance(ctx context.Context, i int) error {
	cmd := fmt.Sprintf("exec %s -addr %s -redis %s -instance chaos-%d -log-level warn", f.serverBin, f.addrs[i], f.redisURL(), i)
	deadline := time.Now().Add(time.Minute)
	for {
		p, err := startServer(ctx, cmd, f.logPath(i))
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.insts[i] = p
		f.mu.Unlock()
		// Serving, not only listening: redpush listens before it dials
		// Redis, and exits (2) when Redis is down.
		err = waitForUntil(20*time.Second, func() error { return serving(f.addrs[i]) }, p.done)
		if err == nil {
			return nil
		}
		<-p.done // it exited at start
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("instance %d does not start: %v; its log: %s", i, err, tail(f.logPath(i)))
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
}

func (f *fleet) inst(i int) *proc {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.insts[i]
}

// restartRedis kills Redis (SIGKILL: nothing it acknowledged is lost with
// appendfsync always), keeps it down for d, and starts it again.
func (f *fleet) restartRedis(ctx context.Context, d time.Duration) error {
	f.mu.Lock()
	p := f.redis
	f.mu.Unlock()
	p.kill()
	sleepCtx(ctx, d)
	return f.startRedis(context.WithoutCancel(ctx))
}

// restartInstance stops instance i with sig (SIGKILL, or SIGTERM for a
// graceful stop that must requeue what it holds) and starts it again.
func (f *fleet) restartInstance(ctx context.Context, i int, sig syscall.Signal) error {
	f.imu[i].Lock()
	defer f.imu[i].Unlock()
	p := f.inst(i)
	if sig == syscall.SIGKILL {
		p.kill()
	} else {
		p.stop()
	}
	return f.startInstance(context.WithoutCancel(ctx), i)
}

func (f *fleet) stop() {
	f.mu.Lock()
	insts, redis := f.insts, f.redis
	f.mu.Unlock()
	for _, p := range insts {
		if p != nil {
			p.stop()
		}
	}
	if redis != nil {
		redis.stop()
	}
}

// kill sends SIGKILL to the process group and waits.
func (p *proc) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// instanceStat is what an instance's /metrics says of its resources.
type instanceStat struct {
	RSS        float64 `json:"rss_bytes"`
	Goroutines float64 `json:"goroutines"`
	OpenFiles  float64 `json:"open_files"`
}

// sampleInstance reads go_goroutines, process_open_fds and
// process_resident_memory_bytes from the instance's /metrics.
func sampleInstance(addr string) (instanceStat, bool) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return instanceStat{}, false
	}
	defer resp.Body.Close()
	var s instanceStat
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		dst := map[string]*float64{"go_goroutines": &s.Goroutines, "process_open_fds": &s.OpenFiles,
			"process_resident_memory_bytes": &s.RSS}[name]
		if dst != nil {
			*dst, _ = strconv.ParseFloat(v, 64)
			found++
		}
	}
	return s, found == 3
}

// serving reports whether the redpush at addr accepts and answers
// (/healthz: its accept loop runs).
func serving(addr string) error {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/healthz: %s", resp.Status)
	}
	return nil
}
