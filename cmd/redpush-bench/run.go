package main

import (
	"context"
	"fmt"
	"math/bits"
	"runtime"
	"strconv"
	"time"

	"github.com/redpush/redpush/redisq"
)

// run is one bench run in this process:
//
//	check the users' queues → preload (-backlog) → connect → hold →
//	send → wait for stragglers → let Redis settle → read what is left →
//	close → match every message.
//
// A -spawn child stops at the marked phases until its parent says go, so
// that all children connect, send and are measured together.
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
	if err := checkUnused(ctx, cfg, rc, cfg.wipe); err != nil {
		return nil, err
	}
	tr := newTracker(4 * runtime.GOMAXPROCS(0))
	cs := &clients{cfg: cfg, tr: tr}
	pr := newProducers(cfg, rc)
	if cfg.backlog > 0 {
		t := time.Now()
		pr.preload(ctx)
		logf("queued %d messages in %v", pr.all.Load(), time.Since(t).Round(time.Millisecond))
	}
	childPhase(cfg, phaseLoaded)
	mon := newMonitor(ctx, cfg, tr, cs, pr, rc)
	mon.start(ctx)
	defer mon.stop()

	t0 := time.Now() // a drain is timed, and its CPU counted, from the first connect
	cs.connectAll(ctx)
	connectTime := time.Since(t0)
	logf("connected %d, failed %d in %v", cs.connected.Load(), cs.failed.Load(), connectTime.Round(time.Millisecond))
	childPhase(cfg, phaseConnected)
	if cfg.hold > 0 {
		// The first third lets the connect storm's work settle; the idle
		// window is the rest.
		sleepCtx(ctx, cfg.hold/3)
		mon.markIdleFrom()
		sleepCtx(ctx, cfg.hold-cfg.hold/3)
	}
	childPhase(cfg, phaseReady)
	mon.markIdle()
	start := t0
	if cfg.backlog == 0 {
		mon.markFrom()
		start = time.Now()
	}
	if cfg.sends() {
		pr.run(ctx)
	}
	sendDone := time.Now()
	deadline := sendDone.Add(cfg.grace)
	waitDelivered(ctx, deadline, tr, pr, cs)
	mon.markTo()
	mon.stop()
	childPhase(cfg, phaseDone)

	// A batch whose ack is on its way is not a leftover: wait, within the
	// grace period (but at least a second), until the lists stop changing.
	settle(ctx, cfg, rc, later(deadline, time.Now().Add(time.Second)), time.Second)
	left, err := readLeftovers(ctx, cfg, rc)
	cs.closeAll()
	if err != nil {
		return nil, fmt.Errorf("reading what is left in Redis: %v", err)
	}

	r := &result{
		Schema: schema, URL: cfg.url, Users: cfg.users, ConnsPerUser: cfg.connsPerUser, Payload: cfg.payload, Rate: cfg.rate,
		Connected: cs.connected.Load(), ConnectFailed: cs.failed.Load(), ConnectSeconds: connectTime.Seconds(),
		ProducerErrors: pr.errs.Load(), ProducerMaxLag: float64(pr.maxLag.Load()) / 1000,
		Delivered: tr.received.Load(), Duplicated: tr.dups.Load(), OutOfOrder: tr.ooo.Load(),
		Misdelivered: tr.wrong.Load(), Garbage: tr.garbage.Load() + left.unparsed, LatencyOutOfRange: tr.outOfRange.Load(),
		StillInQueue: left.queued, StillProcessing: left.processing, StillInRedis: left.queued + left.processing,
		SendSeconds: sendDone.Sub(start).Seconds(), Timeline: tr.timeline, Backlog: cfg.backlog, Idle: cfg.idle(),
	}
	h, raw := tr.merged()
	if cfg.rate == 0 {
		raw = nil // no schedule: both figures are the same
	}
	r.setLatency(h, raw)
	if cfg.ack {
		r.setAck(tr.redelivered.Load(), tr.mergedAck())
	}
	r.setRate(start, tr.lastRecv.Load())
	t := cs.account(cfg, pr, left)
	r.Sent, r.Unsent, r.Lost, r.Partial = t.sent, t.unsent, t.lost, t.partial
	r.setCPU(mon)
	return r, nil
}

// sends reports whether the run pushes messages: -messages, -duration or
// -rate (which alone sends until interrupted).
func (c *config) sends() bool { return c.messages > 0 || c.duration > 0 || c.rate > 0 }

// idle is a run that only connects and holds (memory per idle connection):
// -hold with nothing to send.
func (c *config) idle() bool { return c.hold > 0 && !c.sends() && c.backlog == 0 }

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// waitDelivered waits until every connection received every message that
// surely reached Redis, or the deadline passes.
func waitDelivered(ctx context.Context, deadline time.Time, tr *tracker, pr *producers, cs *clients) {
	want := cs.expected(pr)
	for tr.received.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
}

// expected is the first receipts a perfect server gives: for each
// connection, the messages of its user whose LPUSH succeeded.
func (cs *clients) expected(pr *producers) int64 {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var n int64
	for _, st := range cs.states {
		u := cs.index(st.user)
		if u < 0 {
			continue
		}
		n += pr.sent[u]
		for _, w := range pr.uncertain[u] {
			n -= int64(bits.OnesCount64(w))
		}
	}
	return n
}

// index is a user's index in the producers' slices, or -1.
func (cs *clients) index(user string) int {
	u, err := strconv.Atoi(user)
	if err != nil || u < cs.cfg.firstUser || u >= cs.cfg.firstUser+cs.cfg.users {
		return -1
	}
	return u - cs.cfg.firstUser
}

// account matches every message of every user; see account.go.
func (cs *clients) account(cfg *config, pr *producers, left leftovers) tally {
	users := make([]string, cfg.users)
	for i := range users {
		users[i] = userName(cfg.firstUser + i)
	}
	conns := map[string][]*bitset{}
	cs.mu.Lock()
	for _, st := range cs.states {
		conns[st.user] = append(conns[st.user], &st.seen)
	}
	cs.mu.Unlock()
	return account(users, pr.sent, pr.uncertain, conns, left)
}
