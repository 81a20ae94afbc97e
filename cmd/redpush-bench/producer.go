package main

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// producers LPUSH stamped payloads into the users' queues, like business
// code would: one message per LPUSH, pipelined up to pipe commands.
//
// A pipeline that fails leaves it unknown which of its LPUSHes Redis
// applied (the reply may be what was lost), so its messages are marked
// uncertain; the final accounting counts one as sent when a connection got
// it or Redis still holds it, and as unsent otherwise. The client never
// re-sends a pipeline (redisq's NewClient), so a message is pushed at most
// once and a duplicate is always the server's.
type producers struct {
	cfg       *config
	rc        redis.UniversalClient
	sent      []int64  // seqs handed out, per user index; each user is owned by one producer
	uncertain []bitset // per user index: seqs whose LPUSH may not have reached Redis
	all       atomic.Int64
	doubtful  atomic.Int64 // messages in failed pipelines
	errs      atomic.Int64 // failed pipelines
	maxLag    atomic.Int64 // µs the producers fell behind their schedule, at worst
}

const pipe = 64

func newProducers(cfg *config, rc redis.UniversalClient) *producers {
	return &producers{cfg: cfg, rc: rc, sent: make([]int64, cfg.users), uncertain: make([]bitset, cfg.users)}
}

// usersOf lists the user indexes producer j sends to, each as often as
// its weight, interleaved so that a heavy user's messages are spread out.
func (p *producers) usersOf(j int) []int {
	var rounds [][]int // rounds[k]: the users with a weight over k
	for u := j; u < p.cfg.users; u += p.cfg.producers {
		for k := range p.weightOf(u) {
			if k == len(rounds) {
				rounds = append(rounds, nil)
			}
			rounds[k] = append(rounds[k], u)
		}
	}
	var mine []int
	for _, r := range rounds {
		mine = append(mine, r...)
	}
	return mine
}

func (p *producers) weightOf(u int) int {
	if p.cfg.weight == nil {
		return 1
	}
	return max(p.cfg.weight[u], 1)
}

// pushedAbout estimates when the producers pushed message seq of user
// index u, from the start: each user gets its weight's share of -rate.
// Outages do not shift the schedule (a late pipeline catches up), so the
// estimate is good to a second or so; it is for reports, not accounting.
func (p *producers) pushedAbout(u int, seq int64) time.Duration {
	if p.cfg.rate <= 0 || u < 0 || u >= p.cfg.users {
		return 0
	}
	perSec := float64(p.cfg.rate) * float64(p.weightOf(u)) / float64(p.totalWeight())
	backlog := float64(p.cfg.backlog) // pushed before the start
	return time.Duration(max(float64(seq)-backlog, 0) / perSec * float64(time.Second))
}

func (p *producers) totalWeight() int {
	n := 0
	for u := range p.cfg.users {
		n += p.weightOf(u)
	}
	return n
}

// run sends until every user has -messages (or -duration is over) and
// returns when done or ctx ends.
func (p *producers) run(ctx context.Context) {
	var wg sync.WaitGroup
	start := time.Now()
	for j := range p.cfg.producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.produce(ctx, j, start)
		}()
	}
	wg.Wait()
}

// produce is producer j's loop. In -rate mode its k-th message is due at
// start + k/rate: each payload carries that scheduled time and how late it
// actually went out, so a stall shows in the latency of every message it
// delayed (coordinated omission, corrected as wrk2 does).
func (p *producers) produce(ctx context.Context, j int, start time.Time) {
	mine := p.usersOf(j)
	if len(mine) == 0 {
		return
	}
	var deadline time.Time
	if p.cfg.duration > 0 {
		deadline = start.Add(p.cfg.duration)
	}
	// messages/s of this producer: the producers that have users share
	// -rate, equally, or in proportion to the weight of their users
	rate := float64(p.cfg.rate) / float64(min(p.cfg.producers, p.cfg.users))
	if p.cfg.weight != nil {
		rate = float64(p.cfg.rate) * float64(len(mine)) / float64(p.totalWeight())
	}
	due := func(k int64) time.Time { return start.Add(time.Duration(float64(k) / rate * float64(time.Second))) }
	var sent int64
	limit := int64(-1) // messages due within -duration, in rate mode
	if rate > 0 && !deadline.IsZero() {
		limit = int64(math.Ceil(p.cfg.duration.Seconds() * rate))
	}
	next := 0
	buf := make([]byte, 0, max(p.cfg.payload, p.cfg.heavyPayload))
	b := &batch{}
	for ctx.Err() == nil {
		now := time.Now()
		n := pipe
		if rate > 0 {
			if !deadline.IsZero() && !due(sent).Before(deadline) {
				return // every message scheduled within -duration went out
			}
			ready := int64(now.Sub(start).Seconds()*rate) + 1 - sent // message sent is due at due(sent)
			if ready <= 0 {
				// Sleep until the next message is due: one wake-up per
				// message at most, so the bench's own CPU stays small.
				sleepCtx(ctx, time.Until(due(sent)))
				continue
			}
			n = int(min(ready, pipe))
			if limit >= 0 {
				n = int(min(int64(n), limit-sent)) // a late producer does not run past -duration
			}
		} else if !deadline.IsZero() && !now.Before(deadline) {
			return
		}
		b.reset(p.rc.Pipeline())
		for k := 0; k < len(mine) && len(b.msgs) < n; k++ {
			u := mine[next]
			next = (next + 1) % len(mine)
			if p.cfg.messages > 0 && p.sent[u] >= int64(p.cfg.backlog+p.cfg.messages) {
				continue
			}
			scheduled := now
			if d := due(sent + int64(len(b.msgs))); rate > 0 && d.Before(now) {
				scheduled = d
			}
			lag := now.Sub(scheduled).Microseconds()
			buf = makePayload(buf, userName(p.cfg.firstUser+u), p.sent[u], scheduled.UnixNano(), lag, p.cfg.payloadOf(u))
			b.add(ctx, keyOf(p.cfg, p.cfg.firstUser+u), string(buf), u, p.sent[u])
			p.sent[u]++
			p.noteLag(lag)
		}
		if len(b.msgs) == 0 {
			return // every user of this producer has all its messages
		}
		p.exec(ctx, b)
		sent += int64(len(b.msgs))
	}
}

func (p *producers) noteLag(us int64) {
	for {
		old := p.maxLag.Load()
		if us <= old || p.maxLag.CompareAndSwap(old, us) {
			return
		}
	}
}

// batch is one pipeline and which message each of its commands carries.
type batch struct {
	pl   redis.Pipeliner
	msgs []msgRef
}

type msgRef struct {
	user int // index
	seq  int64
}

func (b *batch) reset(pl redis.Pipeliner) { b.pl, b.msgs = pl, b.msgs[:0] }

func (b *batch) add(ctx context.Context, key, payload string, u int, seq int64) {
	b.pl.LPush(ctx, key, payload)
	b.msgs = append(b.msgs, msgRef{u, seq})
}

// exec runs the pipeline; if it fails, all its messages become uncertain.
func (p *producers) exec(ctx context.Context, b *batch) {
	p.all.Add(int64(len(b.msgs)))
	if _, err := b.pl.Exec(ctx); err == nil {
		return
	}
	p.errs.Add(1)
	p.doubtful.Add(int64(len(b.msgs)))
	for _, m := range b.msgs {
		p.uncertain[m.user].testAndSet(m.seq)
	}
}

func keyOf(cfg *config, u int) string { return cfg.keyPrefix + userName(u) + cfg.keySuffix }

// preload queues -backlog messages for every user before anyone connects,
// in pipelines of pipe*16 commands of one LPUSH per message. Each is stamped
// when pushed, so its latency includes its wait in the queue.
func (p *producers) preload(ctx context.Context) {
	buf := make([]byte, 0, p.cfg.payload)
	b := &batch{}
	for u := range p.cfg.users {
		user := userName(p.cfg.firstUser + u)
		key := keyOf(p.cfg, p.cfg.firstUser+u)
		for p.sent[u] < int64(p.cfg.backlog) && ctx.Err() == nil {
			b.reset(p.rc.Pipeline())
			n := min(int64(pipe*16), int64(p.cfg.backlog)-p.sent[u])
			for range n {
				buf = makePayload(buf, user, p.sent[u], time.Now().UnixNano(), 0, p.cfg.payload)
				b.add(ctx, key, string(buf), u, p.sent[u])
				p.sent[u]++
			}
			p.exec(ctx, b)
		}
	}
}
