package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redpush/redpush/redisq"
)

// `redpush-bench chaos`: users connected across several redpush instances
// on one Redis, a steady load, and faults on a schedule drawn from a fixed
// seed — Redis killed and restarted, instances killed (SIGKILL) and
// stopped (SIGTERM) and restarted, client connections dropped (close frame
// or TCP reset), slow readers and readers that stop. At the end it drains
// and checks every message of every user with the bench's own accounting.

const chaosSummary = `redpush-bench chaos keeps users connected across several redpush instances
on one Redis (appendfsync always), pushes a steady load, and injects faults on
a schedule from a fixed seed: Redis restarts, instance kills and graceful
stops, dropped client connections, slow and stopped readers. At the end it
drains and checks, per user, that every message sent reached a connection of
that user and no other, that no processing list holds anything, and (runs of
five minutes or more) that no instance's memory, goroutines or open files grew.
It exits 0 when that held, 1 when not, 2 when it could not run.

Flags:
`

type chaosCfg struct {
	serverBin                 string
	instances, users, rate    int
	slow, stoppers, payload   int
	slowWeight, stopWeight    int
	heavyPayload              int
	double, dropShare         float64
	ackShare                  float64
	duration, grace, stopFor  time.Duration
	redisEvery, killEvery     time.Duration
	termEvery, dropEvery      time.Duration
	redisDownMin, redisDownMx time.Duration
	seed                      uint64
	jsonOut, reportOut        string
}

func parseChaos(args []string, out io.Writer) (*chaosCfg, error) {
	c := &chaosCfg{}
	fs := flag.NewFlagSet("redpush-bench chaos", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.serverBin, "server", "./redpush", "the redpush binary to run the instances with")
	fs.IntVar(&c.instances, "instances", 3, "redpush instances")
	fs.IntVar(&c.users, "users", 3000, "users")
	fs.Float64Var(&c.double, "double", 0.1, "share of users with a second connection, on another instance")
	fs.Float64Var(&c.ackShare, "ack-share", 0.2, "share of users whose connections ask for acknowledged delivery (?ack=1): each acknowledges every message it processed, drops a redelivery of an id it processed, and must process every message exactly once")
	fs.IntVar(&c.rate, "rate", 2000, "messages/s in total")
	fs.IntVar(&c.payload, "payload", 64, "payload bytes")
	fs.IntVar(&c.slow, "slow", 200, "connections that read a few frames a second")
	fs.IntVar(&c.stoppers, "stoppers", 50, "connections that stop reading for -stop-for, then read on")
	fs.DurationVar(&c.stopFor, "stop-for", time.Minute, "how long a stopper stops reading")
	fs.IntVar(&c.slowWeight, "slow-weight", 2, "a slow reader's user gets this many times a normal user's share of -rate")
	fs.IntVar(&c.stopWeight, "stopper-weight", 8, "a stopper's user gets this many times a normal user's share of -rate")
	fs.IntVar(&c.heavyPayload, "heavy-payload", 16<<10, "payload bytes of the messages of slow readers' and stoppers' users: enough that a stopped reader fills its socket and its outbox, and the server closes it")
	fs.DurationVar(&c.duration, "duration", 10*time.Minute, "how long to push and break things")
	fs.DurationVar(&c.grace, "grace", time.Minute, "how long to wait for the last messages after the faults end")
	fs.DurationVar(&c.redisEvery, "redis-every", time.Minute, "restart Redis this often (0: never)")
	fs.DurationVar(&c.redisDownMin, "redis-down-min", time.Second, "shortest Redis outage")
	fs.DurationVar(&c.redisDownMx, "redis-down-max", 5*time.Second, "longest Redis outage")
	fs.DurationVar(&c.killEvery, "kill-every", 45*time.Second, "SIGKILL and restart an instance this often (0: never)")
	fs.DurationVar(&c.termEvery, "term-every", 90*time.Second, "SIGTERM and restart an instance this often (0: never)")
	fs.DurationVar(&c.dropEvery, "drop-every", 10*time.Second, "drop -drop-share of the connections this often (0: never)")
	fs.Float64Var(&c.dropShare, "drop-share", 0.05, "share of connections dropped each time, half with a close frame, half with a TCP reset")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of the fault schedule")
	fs.StringVar(&c.jsonOut, "json", "", "write the figures, the events and the resource samples to this file")
	fs.StringVar(&c.reportOut, "report", "", "write an HTML page with the resource curves to this file")
	fs.Usage = func() {
		fmt.Fprint(out, chaosSummary)
		fs.VisitAll(func(f *flag.Flag) { printFlag(out, f) })
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.instances < 2 || c.users < 1 || c.rate < 1:
		return nil, fmt.Errorf("-instances must be at least 2, -users and -rate at least 1")
	case c.slow+c.stoppers > c.users:
		return nil, fmt.Errorf("-slow + -stoppers exceed -users")
	case c.ackShare < 0 || c.ackShare > 1 || c.double < 0 || c.double > 1:
		return nil, fmt.Errorf("-ack-share and -double must be within 0 to 1")
	case c.slowWeight < 1 || c.stopWeight < 1 || c.heavyPayload < c.payload:
		return nil, fmt.Errorf("-slow-weight and -stopper-weight must be at least 1, -heavy-payload at least -payload")
	case c.redisDownMin <= 0 || c.redisDownMx < c.redisDownMin:
		return nil, fmt.Errorf("want 0 < -redis-down-min ≤ -redis-down-max")
	}
	return c, nil
}

func chaosMain(args []string) int {
	c, err := parseChaos(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		logf("redpush-bench chaos: %v (see -h)", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := runChaos(ctx, c)
	if err != nil {
		logf("redpush-bench chaos: %v", err)
		return 2
	}
	res.printTable(os.Stdout)
	if c.jsonOut != "" {
		if err := writeJSON(c.jsonOut, res); err != nil {
			logf("redpush-bench chaos: %v", err)
			return 2
		}
	}
	if c.reportOut != "" {
		if err := writeChaosReport(c.reportOut, res); err != nil {
			logf("redpush-bench chaos: %v", err)
			return 2
		}
	}
	if res.Verdict != "pass" {
		logf("redpush-bench chaos: %s", res.Verdict)
		return 1
	}
	return 0
}

// chaosEvent is one fault, when it happened.
type chaosEvent struct {
	At   float64 `json:"t"`
	What string  `json:"what"`
}

// resourcePoint is every instance's resources at one second.
type resourcePoint struct {
	At        float64        `json:"t"`
	Connected int            `json:"connected"` // seats connected
	Instances []instanceStat `json:"instances"`
}

// chaosResult is the chaos run's output.
type chaosResult struct {
	Seed         uint64   `json:"seed"`
	Seconds      float64  `json:"seconds"`
	Instances    int      `json:"instances"`
	Users        int      `json:"users"`
	Seats        int      `json:"connections"`
	Sent         int64    `json:"sent"`
	Unsent       int64    `json:"unsent"`
	Delivered    int64    `json:"delivered"`
	Lost         int64    `json:"lost"`
	LostIDs      []string `json:"lost_messages,omitempty"` // the first, as user/seq
	LostByUser   []string `json:"lost_by_user,omitempty"`  // the users with most losses: their seats, and which messages
	Misdelivered int64    `json:"misdelivered"`
	Duplicated   int64    `json:"duplicated"`
	// AckUsers are the users in acknowledged delivery (-ack-share); for
	// their connections a message counts once per id: AckRedelivered are
	// the redeliveries of an id a connection had processed, dropped by it
	// as a client does, and AckDuplicated the messages a connection
	// processed twice after that (under two ids): it must be 0.
	AckUsers       int   `json:"ack_users"`
	AckRedelivered int64 `json:"ack_redelivered_dropped"`
	AckDuplicated  int64 `json:"ack_duplicated"`
	Reordered      int64 `json:"reordered"`
	Partial        int64 `json:"partial"`
	StillQueued    int64 `json:"still_in_queue"`
	StillInFlight  int64 `json:"still_processing"`
	Unparsed       int64 `json:"unparsed_frames"`
	Reconnects     int64 `json:"reconnects"`
	// StoppersClosed counts the connections of stopped readers that the
	// server closed while they did not read (their outbox overflowed, or a
	// write timed out): the push-back the stoppers are there to cause.
	StoppersClosed int64           `json:"stoppers_closed_by_server"`
	Faults         map[string]int  `json:"faults"`
	Events         []chaosEvent    `json:"events"`
	Anomalies      []timeCount     `json:"duplicates_and_reorderings_by_second"`
	Growth         []string        `json:"resource_growth"`
	Resources      []resourcePoint `json:"resources"`
	Verdict        string          `json:"verdict"`
}

// timeCount is how many duplicates and reorderings one second saw.
type timeCount struct {
	At         int   `json:"t"`
	Duplicated int64 `json:"duplicated"`
	Reordered  int64 `json:"reordered"`
}

// chaosRun is one run's state.
type chaosRun struct {
	cfg   *chaosCfg
	fl    *fleet
	tr    *tracker
	trAck *tracker // the connections of users in acknowledged delivery
	seats []*seat
	// ackUsers counts the users in acknowledged delivery.
	ackUsers int
	byUser   map[string][]*seat
	t0       time.Time

	mu        sync.Mutex
	events    []chaosEvent
	faults    map[string]int
	points    []resourcePoint
	restarted map[int]bool // instances restarted at least once
}

// quietRedis drops go-redis's own log lines: Redis is down on purpose
// here, and the run logs its faults itself.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func runChaos(ctx context.Context, c *chaosCfg) (*chaosResult, error) {
	redis.SetLogger(quietRedis{})
	dir, err := os.MkdirTemp("", "redpush-chaos")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	fl, err := newFleet(ctx, c.serverBin, dir, c.instances)
	if err != nil {
		return nil, err
	}
	defer fl.stop()
	bcfg := &config{users: c.users, firstUser: 1, rate: c.rate, duration: c.duration, payload: c.payload, producers: 4,
		keyPrefix: "user_", keySuffix: "_messages", format: "swoole", redis: fl.redisURL()}
	ep, err := redisq.ParseEndpoint(fl.redisURL())
	if err != nil {
		return nil, err
	}
	rc := ep.NewClient(bcfg.producers + 2)
	defer rc.Close()
	r := &chaosRun{cfg: c, fl: fl, tr: newTracker(8), trAck: newTracker(8), faults: map[string]int{}, restarted: map[int]bool{}}
	r.tr.anomalies = &anomalyLog{}
	r.seats = r.makeSeats()
	r.weigh(bcfg)

	runCtx, stopSeats := context.WithCancel(ctx)
	var seatsWG sync.WaitGroup
	r.t0 = time.Now()
	rng := rand.New(rand.NewPCG(c.seed, 2))
	for i, s := range r.seats {
		seatsWG.Add(1)
		srng := rand.New(rand.NewPCG(c.seed, uint64(i)+3))
		go func() {
			defer seatsWG.Done()
			tr := r.tr
			if s.ack {
				tr = r.trAck
			}
			s.run(runCtx, r.t0, func(i int) string { return fl.addrs[i] }, "swoole", tr, srng)
		}()
	}
	r.awaitConnected(ctx, 30*time.Second)
	logf("chaos: %d connections to %d instances; pushing %d msg/s for %v", len(r.seats), c.instances, c.rate, c.duration)

	pr := newProducers(bcfg, rc)
	monCtx, stopMon := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { defer bg.Done(); r.monitor(monCtx) }()
	faultCtx, stopFaults := context.WithTimeout(ctx, c.duration)
	go func() { defer bg.Done(); r.breakThings(faultCtx, rng) }()
	pr.run(ctx)
	stopFaults()
	r.healAll(ctx)
	logf("chaos: sent; waiting for the last messages (at most %v)", c.grace)

	deadline := time.Now().Add(c.grace)
	r.awaitDrained(ctx, pr, deadline)
	// A queue may stand still for up to redpush's sweep (5 s) with its
	// user online: a hint sent while its instance's hint connection was
	// reconnecting (after a Redis restart, or when a live instance returns
	// a killed one's lists) is lost, and the sweep finds the queue. Still
	// after that is stuck.
	settle(ctx, bcfg, rc, later(deadline, time.Now().Add(time.Second)), chaosQuiet)
	left, err := readLeftovers(ctx, bcfg, rc)
	for end := time.Now().Add(30 * time.Second); err != nil && isLoading(err) && time.Now().Before(end); {
		// Redis restarted late in the run and is still loading its AOF.
		sleepCtx(ctx, 100*time.Millisecond)
		left, err = readLeftovers(ctx, bcfg, rc)
	}
	stopMon()
	bg.Wait()
	stopSeats()
	for _, s := range r.seats {
		s.close()
	}
	seatsWG.Wait()
	if err != nil {
		return nil, fmt.Errorf("reading what is left in Redis: %v", err)
	}
	return r.result(bcfg, pr, left), nil
}

// chaosQuiet is how long the lists must stand still at the end of a chaos
// run before what they hold counts as left over: longer than redpush's
// sweep of the online users' queues (every 5 s).
const chaosQuiet = 7 * time.Second

// weigh gives the users of slow readers and stoppers their larger share
// of the rate, in heavy messages: a stopper that gets a few bytes a second
// never fills its socket, and the server never has to close it.
func (r *chaosRun) weigh(bcfg *config) {
	bcfg.weight, bcfg.heavy = make([]int, r.cfg.users), make([]bool, r.cfg.users)
	bcfg.heavyPayload = r.cfg.heavyPayload
	for _, s := range r.seats {
		u := userIndex(s.user)
		switch s.kind {
		case seatSlow:
			bcfg.weight[u], bcfg.heavy[u] = max(bcfg.weight[u], r.cfg.slowWeight), true
		case seatStopper:
			bcfg.weight[u], bcfg.heavy[u] = max(bcfg.weight[u], r.cfg.stopWeight), true
		}
	}
}

// makeSeats gives every user a connection, and -double of them a second
// one on the next instance; the first -slow are slow, the next -stoppers
// stop, at times spread over the first half of the run.
func (r *chaosRun) makeSeats() []*seat {
	c := r.cfg
	var seats []*seat
	every := 0
	if c.double > 0 {
		every = int(1 / c.double)
	}
	ackRng := rand.New(rand.NewPCG(c.seed, 0xac)) // its own stream: the seats' are 3 and up
	for u := 1; u <= c.users; u++ {
		user := userName(u)
		ack := ackRng.Float64() < c.ackShare // some of them doubles, some slow, some stoppers
		if ack {
			r.ackUsers++
		}
		seats = append(seats, &seat{user: user, inst: u % c.instances, ack: ack})
		if every > 0 && u%every == 0 {
			seats = append(seats, &seat{user: user, inst: (u + 1) % c.instances, ack: ack})
		}
	}
	rng := rand.New(rand.NewPCG(c.seed, 1))
	order := rng.Perm(len(seats))
	for k, i := range order[:c.slow+c.stoppers] {
		s := seats[i]
		s.kind = seatSlow
		if k >= c.slow {
			s.kind = seatStopper
			s.stopAt = time.Duration(rng.Int64N(int64(max(c.duration/2, time.Second))))
			s.stopFor = c.stopFor
		}
	}
	r.byUser = map[string][]*seat{}
	for i, s := range seats {
		if s.ack {
			s.st, s.ids = r.trAck.newConn(s.user, i), map[string]bool{}
		} else {
			s.st = r.tr.newConn(s.user, i)
		}
		r.byUser[s.user] = append(r.byUser[s.user], s)
	}
	return seats
}

func (r *chaosRun) connectedSeats() int {
	n := 0
	for _, s := range r.seats {
		if s.connected.Load() {
			n++
		}
	}
	return n
}

func (r *chaosRun) awaitConnected(ctx context.Context, d time.Duration) {
	_ = waitForUntil(d, func() error {
		if n := r.connectedSeats(); n < len(r.seats) {
			return fmt.Errorf("%d of %d connected", n, len(r.seats))
		}
		return nil
	}, ctx.Done())
}

func (r *chaosRun) since() float64 { return time.Since(r.t0).Seconds() }

func (r *chaosRun) event(kind, what string) {
	r.mu.Lock()
	r.events = append(r.events, chaosEvent{At: r.since(), What: what})
	r.faults[kind]++
	r.mu.Unlock()
	logf("chaos %5.0fs: %s", r.since(), what)
}

// breakThings runs the fault schedule until ctx ends. Each kind of fault
// has its own clock; faults of different kinds may overlap, as in
// production.
func (r *chaosRun) breakThings(ctx context.Context, rng *rand.Rand) {
	c := r.cfg
	var mu sync.Mutex // rng
	pick := func(n int) int { mu.Lock(); defer mu.Unlock(); return rng.IntN(n) }
	between := func(a, b time.Duration) time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return a + time.Duration(rng.Int64N(int64(b-a)+1))
	}
	var wg sync.WaitGroup
	every := func(d time.Duration, f func()) {
		if d <= 0 {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(d)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					f()
				}
			}
		}()
	}
	every(c.redisEvery, func() {
		down := between(c.redisDownMin, c.redisDownMx)
		r.event("redis_restart", fmt.Sprintf("Redis killed, down for %v", down.Round(time.Millisecond)))
		if err := r.fl.restartRedis(ctx, down); err != nil {
			logf("chaos: restarting Redis: %v", err)
		}
	})
	// Instance 0 is never killed nor stopped: the one whose resources
	// over the whole run say whether anything grows (a restarted process
	// starts from nothing). It still lives through everything else.
	victim := func() int { return 1 + pick(c.instances-1) }
	every(c.killEvery, func() {
		i := victim()
		r.markRestarted(i)
		r.event("instance_kill", fmt.Sprintf("instance %d SIGKILLed and restarted", i))
		if err := r.fl.restartInstance(ctx, i, syscall.SIGKILL); err != nil {
			logf("chaos: restarting instance %d: %v", i, err)
		}
	})
	every(c.termEvery, func() {
		i := victim()
		r.markRestarted(i)
		r.event("instance_term", fmt.Sprintf("instance %d SIGTERMed and restarted", i))
		if err := r.fl.restartInstance(ctx, i, syscall.SIGTERM); err != nil {
			logf("chaos: restarting instance %d: %v", i, err)
		}
	})
	every(c.dropEvery, func() {
		n := int(float64(len(r.seats)) * c.dropShare)
		dropped := 0
		for k := range n {
			if r.seats[pick(len(r.seats))].drop(k%2 == 1) {
				dropped++
			}
		}
		r.event("connection_drops", fmt.Sprintf("%d connections dropped (half closed, half reset)", dropped))
	})
	wg.Wait()
}

func (r *chaosRun) markRestarted(i int) {
	r.mu.Lock()
	r.restarted[i] = true
	r.mu.Unlock()
}

// healAll makes sure every instance runs at the end (a fault may have been
// cut short by the end of the schedule): one that is not running is
// started again. Redis is always started again by its own fault.
func (r *chaosRun) healAll(ctx context.Context) {
	for i := range r.fl.addrs {
		p := r.fl.inst(i)
		select {
		case <-p.done:
			r.markRestarted(i)
			_ = r.fl.restartInstance(ctx, i, syscall.SIGKILL)
		default:
		}
	}
}

// awaitDrained waits until every seat's user has every message that
// surely reached Redis, or the deadline passes.
func (r *chaosRun) awaitDrained(ctx context.Context, pr *producers, deadline time.Time) {
	_ = waitForUntil(time.Until(deadline), func() error {
		missing := 0
		for i := range r.cfg.users {
			user := userName(i + 1)
			var got bitset
			for _, s := range r.byUser[user] {
				got.or(s.st.snapshot())
			}
			for seq := range pr.sent[i] {
				if !got.has(seq) && !pr.uncertain[i].has(seq) {
					missing++
				}
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d messages not yet received", missing)
		}
		return nil
	}, ctx.Done())
}

// monitor samples every instance's resources once a second.
func (r *chaosRun) monitor(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p := resourcePoint{At: r.since(), Connected: r.connectedSeats()}
		for _, a := range r.fl.addrs {
			s, _ := sampleInstance(a) // zero while it restarts
			p.Instances = append(p.Instances, s)
		}
		r.mu.Lock()
		r.points = append(r.points, p)
		r.mu.Unlock()
	}
}

func (r *chaosRun) result(bcfg *config, pr *producers, left leftovers) *chaosResult {
	users := make([]string, r.cfg.users)
	for i := range users {
		users[i] = userName(i + 1)
	}
	conns := map[string][]*bitset{}
	var reconnects, stoppersClosed, ackDropped int64
	for _, s := range r.seats {
		conns[s.user] = append(conns[s.user], &s.st.seen)
		reconnects += s.dials.Load() - 1
		stoppersClosed += s.closedWhileStopped.Load()
		ackDropped += s.redeliveries.Load()
	}
	t := account(users, pr.sent, pr.uncertain, conns, left)
	r.mu.Lock()
	defer r.mu.Unlock()
	res := &chaosResult{Seed: r.cfg.seed, Seconds: r.since(), Instances: r.cfg.instances, Users: r.cfg.users, Seats: len(r.seats),
		Sent: t.sent, Unsent: t.unsent, Delivered: r.tr.received.Load() + r.trAck.received.Load(), Lost: t.lost, LostIDs: t.lostIDs,
		Misdelivered: r.tr.wrong.Load() + r.trAck.wrong.Load(),
		Duplicated:   r.tr.dups.Load(), Reordered: r.tr.ooo.Load() + r.trAck.ooo.Load(), Partial: t.partial,
		AckUsers: r.ackUsers, AckRedelivered: ackDropped, AckDuplicated: r.trAck.dups.Load(),
		StillQueued: left.queued, StillInFlight: left.processing, Unparsed: r.tr.garbage.Load() + r.trAck.garbage.Load() + left.unparsed,
		Reconnects: reconnects, StoppersClosed: stoppersClosed, Faults: r.faults, Events: r.events, Anomalies: r.tr.anomalies.bySecond(r.t0),
		Resources: r.points}
	res.LostByUser = r.lostByUser(t.lostRange, pr)
	res.Growth = resourceGrowth(r.points, r.cfg.duration, r.restarted)
	res.judge(r.cfg)
	return res
}

// lostByUser describes the 20 users with the most losses: what kind of
// seats on which instances they had, which of their messages were lost,
// when those were pushed (estimated from the user's share of the rate),
// and which of the user's connections the run dropped around then.
func (r *chaosRun) lostByUser(ranges map[string][3]int64, pr *producers) []string {
	users := slices.Collect(maps.Keys(ranges))
	slices.SortFunc(users, func(a, b string) int { return cmp.Compare(ranges[b][0], ranges[a][0]) })
	var out []string
	for _, u := range users[:min(len(users), 20)] {
		rg := ranges[u]
		first, last := pr.pushedAbout(userIndex(u), rg[1]), pr.pushedAbout(userIndex(u), rg[2])
		var seats []string
		for _, s := range r.byUser[u] {
			seats = append(seats, fmt.Sprintf("%s on instance %d, %d connections%s", s.kind, s.inst, s.dials.Load(), s.dropsAround(first, last)))
		}
		out = append(out, fmt.Sprintf("user %s: %d lost between %d and %d, pushed about %.0f–%.0f s; %s",
			u, rg[0], rg[1], rg[2], first.Seconds(), last.Seconds(), strings.Join(seats, "; ")))
	}
	return out
}

// dropsAround lists the drops of s within 5 s of [from, to], e.g.
// ", reset at 217.3 s".
func (s *seat) dropsAround(from, to time.Duration) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, d := range s.drops {
		if d.at < from-5*time.Second || d.at > to+5*time.Second {
			continue
		}
		how := "closed"
		if d.reset {
			how = "reset"
		}
		fmt.Fprintf(&b, ", %s at %.1f s", how, d.at.Seconds())
	}
	return b.String()
}

func (res *chaosResult) judge(c *chaosCfg) {
	var bad []string
	if c.stoppers > 0 && c.duration >= 5*time.Minute && res.StoppersClosed == 0 {
		// The stoppers are there to make the server push back; a run in
		// which none was closed did not test that.
		bad = append(bad, "no stopped reader was closed by the server")
	}
	for _, f := range []struct {
		n    int64
		what string
	}{{res.Lost, "lost"}, {res.Misdelivered, "misdelivered"}, {res.AckDuplicated, "processed twice in acknowledged delivery"},
		{res.StillInFlight, "still in a processing list"},
		{res.StillQueued, "still queued"}, {res.Unparsed, "unparsed frames"}} {
		if f.n > 0 {
			bad = append(bad, strconv.FormatInt(f.n, 10)+" "+f.what)
		}
	}
	bad = append(bad, res.Growth...)
	res.Verdict = "pass"
	if len(bad) > 0 {
		res.Verdict = "fail: " + strings.Join(bad, ", ")
	}
}

// resourceGrowth checks, in runs of five minutes or more, that after the
// first minute no instance's RSS, goroutines or open files grew by more
// than 10% while the number of connections was flat: it compares the
// median of the first minute after warm-up with that of the last minute.
// Only instances that were never restarted count: a restarted process
// starts from nothing, and its figures say nothing about growth.
func resourceGrowth(pts []resourcePoint, d time.Duration, restarted map[int]bool) []string {
	if d < 5*time.Minute || len(pts) < 240 {
		return nil
	}
	var early, late []resourcePoint
	for _, p := range pts {
		switch {
		case p.At >= 60 && p.At < 120:
			early = append(early, p)
		case p.At >= pts[len(pts)-1].At-60:
			late = append(late, p)
		}
	}
	var out []string
	for i := range pts[0].Instances {
		if restarted[i] {
			continue
		}
		for _, m := range []struct {
			name string
			get  func(instanceStat) float64
		}{{"RSS", func(s instanceStat) float64 { return s.RSS }}, {"goroutines", func(s instanceStat) float64 { return s.Goroutines }},
			{"open files", func(s instanceStat) float64 { return s.OpenFiles }}} {
			a, b := medianOf(early, i, m.get), medianOf(late, i, m.get)
			ca, cb := medianConnected(early), medianConnected(late)
			if a > 0 && b > 1.1*a && cb <= 1.1*ca {
				out = append(out, fmt.Sprintf("instance %d %s grew %.0f → %.0f", i, m.name, a, b))
			}
		}
	}
	return out
}

func medianOf(pts []resourcePoint, i int, get func(instanceStat) float64) float64 {
	var v []float64
	for _, p := range pts {
		if x := get(p.Instances[i]); x > 0 { // 0: the instance was restarting
			v = append(v, x)
		}
	}
	return medianFloat(v)
}

func medianConnected(pts []resourcePoint) float64 {
	var v []float64
	for _, p := range pts {
		v = append(v, float64(p.Connected))
	}
	return medianFloat(v)
}

func medianFloat(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func (res *chaosResult) printTable(w io.Writer) {
	row := func(k string, v any) { fmt.Fprintf(w, "%-22s %v\n", k, v) }
	row("run", fmt.Sprintf("%.0f s, seed %d, %d instances, %d users, %d connections", res.Seconds, res.Seed, res.Instances, res.Users, res.Seats))
	row("faults", fmt.Sprintf("%v", res.Faults))
	row("sent", fmt.Sprintf("%d (unsent %d)", res.Sent, res.Unsent))
	row("delivered", res.Delivered)
	row("lost", res.Lost)
	row("misdelivered", res.Misdelivered)
	row("duplicated", res.Duplicated)
	row("ack mode", fmt.Sprintf("%d users; %d redeliveries of processed ids dropped; %d processed twice", res.AckUsers, res.AckRedelivered, res.AckDuplicated))
	row("reordered", res.Reordered)
	row("partial", fmt.Sprintf("%d (messages one tab of a user missed while another got them)", res.Partial))
	row("left in Redis", fmt.Sprintf("queued %d, processing %d", res.StillQueued, res.StillInFlight))
	row("reconnects", res.Reconnects)
	row("stoppers closed", fmt.Sprintf("%d (stopped readers' connections the server closed)", res.StoppersClosed))
	for _, l := range res.LostByUser {
		row("lost", l)
	}
	row("verdict", res.Verdict)
}

// isLoading reports Redis's answer while it loads its data after a start.
func isLoading(err error) bool { return strings.HasPrefix(err.Error(), "LOADING") }
