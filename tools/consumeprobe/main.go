package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

type opts struct {
	role, mode, addr   string
	users, rate, batch int
	workers, dconns    int
	size               int
	warm, dur, round   time.Duration
	sweep, drain       time.Duration
	kill, resweep      bool
	killGap            time.Duration
	sweepRepeat        int
}

func main() {
	o := &opts{}
	flag.StringVar(&o.role, "role", "consumer", "consumer or producer (internal: the probe spawns its producer)")
	flag.StringVar(&o.mode, "mode", "B", "A, B, Bm, Br, Bp, C, D, P or sweep (see the package doc)")
	flag.StringVar(&o.addr, "redis", "", "host:port of a test redis-server of your own (its user_* keys are deleted)")
	flag.IntVar(&o.users, "users", 1000, "online users")
	flag.IntVar(&o.rate, "rate", 2000, "messages per second, to random users")
	flag.IntVar(&o.batch, "batch", 128, "most messages per pop")
	flag.IntVar(&o.workers, "workers", 256, "Bp, C: concurrent pop tasks (the ants pool size)")
	flag.IntVar(&o.dconns, "dconns", 4, "D: BLMPOP connections")
	flag.IntVar(&o.size, "size", 64, "payload bytes")
	flag.DurationVar(&o.warm, "warm", 3*time.Second, "production before the measurement window")
	flag.DurationVar(&o.dur, "dur", 15*time.Second, "measurement window")
	flag.DurationVar(&o.round, "round", 10*time.Second, "A: BLMOVE round (the gateway's WakeRound); D: BLMPOP timeout")
	flag.DurationVar(&o.sweep, "sweep", 5*time.Second, "B, Bp, C: LLEN sweep interval (0: none)")
	flag.DurationVar(&o.drain, "drain", 20*time.Second, "most time to wait for the queues to drain after the producer stopped")
	flag.BoolVar(&o.kill, "kill", false, "B: CLIENT KILL the tracking connection in the middle of the window")
	flag.DurationVar(&o.killGap, "killgap", 0, "B, Bm: wait this long before reconnecting a killed tracking connection")
	flag.BoolVar(&o.resweep, "resweep", true, "B, Bm: sweep at once after reconnecting (false: leave it to the periodic sweep)")
	flag.IntVar(&o.sweepRepeat, "repeat", 5, "sweep: sweeps to time")
	flag.Parse()
	if o.addr == "" {
		fmt.Fprintln(os.Stderr, "consumeprobe: -redis host:port is required (a redis-server of your own)")
		flag.Usage()
		os.Exit(2)
	}
	var err error
	switch o.role {
	case "producer":
		err = produce(o)
	default:
		err = consume(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "consumeprobe:", err)
		os.Exit(1)
	}
}

// produce LPUSHes at o.rate for warm+dur, then prints "sent N".
func produce(o *opts) error {
	ctx := context.Background()
	cl := redis.NewClient(&redis.Options{Addr: o.addr, Protocol: 2})
	pad := strings.Repeat("x", max(0, o.size-32))
	start := time.Now()
	end := start.Add(o.warm + o.dur)
	var sent int64
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for now := range t.C {
		if now.After(end) {
			break
		}
		target := int64(now.Sub(start).Seconds() * float64(o.rate))
		if target <= sent {
			continue
		}
		pl := cl.Pipeline()
		stamp := strconv.FormatInt(time.Now().UnixNano(), 10)
		for ; sent < target; sent++ {
			u := rand.IntN(o.users)
			pl.LPush(ctx, queueKey(u), strconv.FormatInt(sent, 10)+":"+stamp+":"+pad)
		}
		if _, err := pl.Exec(ctx); err != nil {
			return err
		}
	}
	fmt.Printf("sent %d\n", sent)
	return nil
}

type snapshot struct {
	at        time.Time
	redisCPU  float64 // seconds
	selfCPU   float64 // seconds
	popped    int64
	pops      int64
	empty     int64
	hints     int64
	selfHints int64
}

func info(ctx context.Context, cl *redis.Client, section string) map[string]string {
	m := map[string]string{}
	s, _ := cl.Info(ctx, section).Result()
	for _, l := range strings.Split(s, "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = v
		}
	}
	return m
}

func redisCPU(ctx context.Context, cl *redis.Client) float64 {
	m := info(ctx, cl, "cpu")
	a, _ := strconv.ParseFloat(m["used_cpu_sys"], 64)
	b, _ := strconv.ParseFloat(m["used_cpu_user"], 64)
	return a + b
}

func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func snap(ctx context.Context, cl *redis.Client, rec *recorder) snapshot {
	return snapshot{at: time.Now(), redisCPU: redisCPU(ctx, cl), selfCPU: selfCPU(),
		popped: rec.popped.Load(), pops: rec.pops.Load(), empty: rec.empty.Load(),
		hints: rec.hints.Load(), selfHints: rec.selfHint.Load()}
}

// clean deletes the probe's keys (user_* queues and their {user_*} lists).
func clean(ctx context.Context, cl *redis.Client) error {
	for _, pat := range []string{"user_*", "{user_*"} {
		iter := cl.Scan(ctx, 0, pat, 10000).Iterator()
		var batch []string
		for iter.Next(ctx) {
			batch = append(batch, iter.Val())
			if len(batch) == 1000 {
				cl.Unlink(ctx, batch...)
				batch = batch[:0]
			}
		}
		if len(batch) > 0 {
			cl.Unlink(ctx, batch...)
		}
		if err := iter.Err(); err != nil {
			return err
		}
	}
	return nil
}

func consume(o *opts) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := redis.NewClient(&redis.Options{Addr: o.addr, Protocol: 2, PoolSize: 4})
	if err := clean(ctx, admin); err != nil {
		return err
	}
	if o.mode == "sweep" {
		return sweepCost(ctx, o, admin)
	}
	if o.mode == "noloop" {
		return noloopCheck(ctx, o, admin)
	}
	ev := ""
	if o.mode == "C" {
		ev = "Kl"
	}
	if err := admin.ConfigSet(ctx, "notify-keyspace-events", ev).Err(); err != nil {
		return err
	}
	rec := newRecorder(o.users)
	ready := make(chan struct{})
	var te *trackEngine
	switch o.mode {
	case "A":
		go func() {
			if err := runA(ctx, o, rec, ready); err != nil {
				fmt.Fprintln(os.Stderr, "A:", err)
				os.Exit(1)
			}
		}()
	case "B", "Bm":
		s := newSched(o.users, rec)
		te = &trackEngine{o: o, s: s, rec: rec, admin: admin, plain: o.mode == "Bm", guess: make([]uint8, o.users)}
		go te.run(ctx, ready)
		go sweeper(ctx, admin, s, o.users, o.sweep)
	case "Br":
		s := newSched(o.users, rec)
		go func() {
			if err := runBr(ctx, o, s, rec, ready); err != nil {
				fmt.Fprintln(os.Stderr, "Br:", err)
				os.Exit(1)
			}
		}()
		go sweeper(ctx, admin, s, o.users, o.sweep)
	case "Bp":
		s := newSched(o.users, rec)
		newPoolEngine(ctx, o, s, rec)
		go hintConn(ctx, o, s, rec, ready)
		go sweeper(ctx, admin, s, o.users, o.sweep)
	case "C":
		s := newSched(o.users, rec)
		newPoolEngine(ctx, o, s, rec)
		go keyspaceConn(ctx, o, s, rec, ready)
		go sweeper(ctx, admin, s, o.users, o.sweep)
	case "D":
		runD(ctx, o, rec, ready)
	case "P":
		close(ready)
	default:
		return fmt.Errorf("unknown -mode %q", o.mode)
	}
	setupStart := time.Now()
	<-ready
	setup := time.Since(setupStart)
	time.Sleep(500 * time.Millisecond)

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	prod := exec.Command(exe, "-role", "producer", "-redis", o.addr, "-users", strconv.Itoa(o.users),
		"-rate", strconv.Itoa(o.rate), "-size", strconv.Itoa(o.size),
		"-warm", o.warm.String(), "-dur", (o.dur + 500*time.Millisecond).String())
	prod.Stderr = os.Stderr
	out, err := prod.StdoutPipe()
	if err != nil {
		return err
	}
	if err := prod.Start(); err != nil {
		return err
	}
	time.Sleep(o.warm)
	a := snap(ctx, admin, rec)
	rec.measure.Store(true)
	var clients []int
	half := o.dur / 2
	time.Sleep(half)
	m := info(ctx, admin, "clients")
	c, _ := strconv.Atoi(m["connected_clients"])
	clients = append(clients, c)
	if o.kill && te != nil {
		id := te.id.Load()
		if err := admin.Do(ctx, "CLIENT", "KILL", "ID", strconv.FormatInt(id, 10)).Err(); err != nil {
			fmt.Fprintln(os.Stderr, "kill:", err)
		}
	}
	time.Sleep(o.dur - half)
	b := snap(ctx, admin, rec)
	rec.measure.Store(false)

	var sent int64 = -1
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if n, ok := strings.CutPrefix(sc.Text(), "sent "); ok {
			sent, _ = strconv.ParseInt(n, 10, 64)
		}
	}
	if err := prod.Wait(); err != nil {
		return fmt.Errorf("producer: %v", err)
	}
	drainStart := time.Now()
	if o.mode != "P" {
		for time.Since(drainStart) < o.drain && rec.uniqueCount() < sent {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond) // late duplicates
	}
	missing := rec.missing(sent)

	msgs := b.popped - a.popped
	if o.mode == "P" {
		msgs = int64(float64(o.rate) * b.at.Sub(a.at).Seconds())
	}
	per := func(x float64) float64 { return x / float64(max(msgs, 1)) * 1e6 } // µs per message
	h := rec.hist
	rec.mu.Lock()
	dups, order, bad := rec.dups, rec.order, rec.bad
	rec.mu.Unlock()
	fmt.Printf("RESULT mode=%s users=%d rate=%d window=%.1fs msgs=%d msg/s=%.0f redis_us/msg=%.2f probe_us/msg=%.2f "+
		"clients=%v pops=%d empty_pops=%d hints=%d self_events=%d "+
		"p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f max_ms=%.2f "+
		"sent=%d missing=%d dups=%d order_violations=%d bad=%d sweeps=%d sweep_hits=%d reconnects=%d recovery_requeued=%d recovery_acked=%d setup=%s\n",
		o.mode, o.users, o.rate, b.at.Sub(a.at).Seconds(), msgs, float64(msgs)/b.at.Sub(a.at).Seconds(),
		per(b.redisCPU-a.redisCPU), per(b.selfCPU-a.selfCPU),
		clients, b.pops-a.pops, b.empty-a.empty, b.hints-a.hints, b.selfHints-a.selfHints,
		float64(h.ValueAtQuantile(50))/1000, float64(h.ValueAtQuantile(99))/1000,
		float64(h.ValueAtQuantile(99.9))/1000, float64(h.Max())/1000,
		sent, missing, dups, order, bad, rec.sweeps.Load(), rec.sweepHit.Load(), rec.reconn.Load(),
		rec.recovRQ.Load(), rec.recovAck.Load(), setup.Round(time.Millisecond))
	return nil
}

// sweepCost times o.repeat sweeps of o.users (empty) queues and reports the
// Redis CPU and wall time of one.
func sweepCost(ctx context.Context, o *opts, admin *redis.Client) error {
	cl := redis.NewClient(&redis.Options{Addr: o.addr, Protocol: 2})
	s := newSched(o.users, newRecorder(o.users))
	// Keys that exist cost a little more than missing ones: give 1% of the
	// users one message, so that most LLENs hit nothing, as online users'
	// queues mostly are empty.
	for u := 0; u < o.users; u += 100 {
		cl.LPush(ctx, queueKey(u), "0:0:x")
	}
	_ = sweep(ctx, cl, s, o.users) // warm the connection
	var cpu, wall []float64
	for i := 0; i < o.sweepRepeat; i++ {
		for u := range s.st {
			s.st[u] = stInflight // no tasks: measure the LLENs only
		}
		r0, t0 := redisCPU(ctx, admin), time.Now()
		if err := sweep(ctx, cl, s, o.users); err != nil {
			return err
		}
		wall = append(wall, time.Since(t0).Seconds()*1000)
		cpu = append(cpu, (redisCPU(ctx, admin)-r0)*1000)
	}
	slices.Sort(cpu)
	slices.Sort(wall)
	fmt.Printf("RESULT mode=sweep users=%d sweeps=%d redis_ms_per_sweep_median=%.1f wall_ms_per_sweep_median=%.1f (all cpu %v, wall %v)\n",
		o.users, o.sweepRepeat, cpu[len(cpu)/2], wall[len(wall)/2], cpu, wall)
	return nil
}
