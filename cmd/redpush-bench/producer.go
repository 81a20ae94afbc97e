package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// producers LPUSH stamped payloads into the users' queues, like business
// code would: one message per LPUSH, pipelined up to pipe commands.
type producers struct {
	cfg  *config
	rc   redis.UniversalClient
	sent []int64 // per user index; each user is owned by one producer
	all  atomic.Int64
	errs atomic.Int64
}

const pipe = 64

// run sends until every user has -messages (or -duration is over) and
// returns when done or ctx ends.
func (p *producers) run(ctx context.Context) {
	var wg sync.WaitGroup
	for j := range p.cfg.producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.produce(ctx, j)
		}()
	}
	wg.Wait()
}

func (p *producers) produce(ctx context.Context, j int) {
	var mine []int // user indexes of this producer
	for u := j; u < p.cfg.users; u += p.cfg.producers {
		mine = append(mine, u)
	}
	if len(mine) == 0 {
		return
	}
	var deadline time.Time
	if p.cfg.duration > 0 {
		deadline = time.Now().Add(p.cfg.duration)
	}
	rate := float64(p.cfg.rate) / float64(p.cfg.producers) // messages/s of this producer
	start := time.Now()
	var sent int64
	next := 0
	buf := make([]byte, 0, p.cfg.payload)
	for ctx.Err() == nil && (deadline.IsZero() || time.Now().Before(deadline)) {
		n := pipe
		if rate > 0 {
			due := int64(time.Since(start).Seconds()*rate) - sent
			if due <= 0 {
				// Sleep until the next message is due: one wake-up per
				// message at most, so the bench's own CPU stays small.
				next := start.Add(time.Duration(float64(sent+1) / rate * float64(time.Second)))
				time.Sleep(time.Until(next))
				continue
			}
			n = int(min(due, pipe))
		}
		pl := p.rc.Pipeline()
		queued := 0
		for k := 0; k < len(mine) && queued < n; k++ {
			u := mine[next]
			next = (next + 1) % len(mine)
			if p.cfg.messages > 0 && p.sent[u] >= int64(p.cfg.backlog+p.cfg.messages) {
				continue
			}
			buf = makePayload(buf, userName(p.cfg.firstUser+u), p.sent[u], time.Now().UnixNano(), p.cfg.payload)
			pl.LPush(ctx, keyOf(p.cfg, p.cfg.firstUser+u), string(buf))
			p.sent[u]++
			queued++
		}
		if queued == 0 {
			return // every user of this producer has all its messages
		}
		if _, err := pl.Exec(ctx); err != nil {
			p.errs.Add(1)
		}
		sent += int64(queued)
		p.all.Add(int64(queued))
	}
}

func keyOf(cfg *config, u int) string { return cfg.keyPrefix + userName(u) + cfg.keySuffix }

// preload queues -backlog messages for every user before anyone connects,
// in pipelines of pipe commands of one LPUSH per message. Each is stamped
// when pushed, so its latency includes its wait in the queue.
func (p *producers) preload(ctx context.Context) {
	buf := make([]byte, 0, p.cfg.payload)
	for u := range p.cfg.users {
		user := userName(p.cfg.firstUser + u)
		key := keyOf(p.cfg, p.cfg.firstUser+u)
		for p.sent[u] < int64(p.cfg.backlog) && ctx.Err() == nil {
			pl := p.rc.Pipeline()
			n := min(int64(pipe*16), int64(p.cfg.backlog)-p.sent[u])
			for range n {
				buf = makePayload(buf, user, p.sent[u], time.Now().UnixNano(), p.cfg.payload)
				pl.LPush(ctx, key, string(buf))
				p.sent[u]++
			}
			if _, err := pl.Exec(ctx); err != nil {
				p.errs.Add(1)
			}
			p.all.Add(n)
		}
	}
}
