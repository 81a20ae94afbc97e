package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/resp3"
	"github.com/redpush/redpush/redisq"
)

// popScript moves up to ARGV[1] messages from the right of the queue KEYS[1]
// to the left of the processing list KEYS[2], oldest first.
var popScript = redis.NewScript(popSrc)

const popSrc = `
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[i] = v
end
return out`

// requeueScript is redisq's requeueAll: the processing list back to the
// right end of the queue, order kept.
var requeueScript = redis.NewScript(`
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end
return n`)

// ---------------------------------------------------------------- A

// runA is today's gateway model: one goroutine per user, AckPop batches
// until the queue is empty, then Blocker.Pop (BLMOVE on the user's own
// connection) for one round.
func runA(ctx context.Context, o *opts, rec *recorder, ready chan<- struct{}) error {
	cl, err := redisq.Dial(ctx, "redis://"+o.addr, o.users)
	if err != nil {
		return err
	}
	q, err := redisq.New(cl.Blocking, cl.Command, redisq.Config{Instance: "probe", WakeRound: o.round, Round: o.round})
	if err != nil {
		return err
	}
	var started sync.WaitGroup
	started.Add(o.users)
	for u := 0; u < o.users; u++ {
		go func(u int) {
			b := q.Blocker()
			user := strconv.Itoa(u)
			more, first := true, true
			for ctx.Err() == nil {
				var msgs []string
				var err error
				if more {
					msgs, err = q.AckPop(context.WithoutCancel(ctx), user)
					rec.pops.Add(1)
				} else {
					if first {
						first = false
						started.Done()
					}
					msgs, err = b.Pop(ctx, user)
					rec.pops.Add(1)
				}
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					_, _ = q.Requeue(context.WithoutCancel(ctx), user)
					time.Sleep(50 * time.Millisecond)
					more = true
					continue
				}
				rec.got(u, msgs)
				more = len(msgs) > 0
			}
		}(u)
	}
	started.Wait()
	close(ready)
	<-ctx.Done()
	return nil
}

// ---------------------------------------------------------------- scheduling

// Per-user task state of the hint-driven modes (B, Bp, C).
const (
	stIdle     = iota
	stQueued   // waiting to be popped (B: in sched.queue)
	stInflight // a pop is on its way
	stDirty    // a pop is on its way and a hint came meanwhile: pop again
)

type sched struct {
	mu    sync.Mutex
	st    []uint8
	queue []int // B: users to pop on the tracking connection
	acks  []int // B: users whose delivered batch is to be acked
	wake  chan struct{}
	start func(u int) // Bp, C: run a pop task for u (state already stInflight)
	rec   *recorder
}

func newSched(users int, rec *recorder) *sched {
	return &sched{st: make([]uint8, users), wake: make(chan struct{}, 1), rec: rec}
}

func (s *sched) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// hint says the queue of u may hold messages.
func (s *sched) hint(u int) {
	if u < 0 || u >= len(s.st) {
		return
	}
	s.mu.Lock()
	switch s.st[u] {
	case stIdle:
		if s.start != nil {
			s.st[u] = stInflight
			s.mu.Unlock()
			s.start(u)
			return
		}
		s.st[u] = stQueued
		s.queue = append(s.queue, u)
		s.mu.Unlock()
		s.signal()
		return
	case stInflight:
		s.st[u] = stDirty
	}
	s.mu.Unlock()
}

// ---------------------------------------------------------------- sweep

// sweep LLENs every user's queue in pipelines of 1000 and hints the idle
// non-empty ones: the catch-up for lost hints.
func sweep(ctx context.Context, cl *redis.Client, s *sched, users int) error {
	s.rec.sweeps.Add(1)
	const chunk = 1000
	for lo := 0; lo < users; lo += chunk {
		hi := min(lo+chunk, users)
		pl := cl.Pipeline()
		cmds := make([]*redis.IntCmd, 0, hi-lo)
		for u := lo; u < hi; u++ {
			cmds = append(cmds, pl.LLen(ctx, queueKey(u)))
		}
		if _, err := pl.Exec(ctx); err != nil {
			return err
		}
		for i, c := range cmds {
			if c.Val() > 0 {
				u := lo + i
				s.mu.Lock()
				idle := s.st[u] == stIdle
				s.mu.Unlock()
				if idle {
					s.rec.sweepHit.Add(1)
					s.hint(u)
				}
			}
		}
	}
	return nil
}

func sweeper(ctx context.Context, cl *redis.Client, s *sched, users int, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = sweep(ctx, cl, s, users)
		}
	}
}

// ---------------------------------------------------------------- B

// trackEngine is option B with the pops on the tracking connection itself:
// one RESP3 connection, CLIENT TRACKING on BCAST PREFIX user_ NOLOOP; the
// invalidate pushes name the written queues, and the pops (popScript) and
// acks (DEL) of the hinted users go back pipelined on the same connection,
// so NOLOOP keeps the pops from hinting.
type trackEngine struct {
	o     *opts
	s     *sched
	rec   *recorder
	admin *redis.Client // sweep, recovery, CLIENT KILL
	id    atomic.Int64  // CLIENT ID of the current tracking connection
	sha   string
	// plain (mode Bm): pop with plain pipelined LMOVE commands instead of
	// the script, whose writes NOLOOP does not cover on Redis 7.0 (the
	// noloop mode shows it): guess[u] LMOVEs then an LLEN, which says how
	// many to send next time (0: the user is done).
	plain bool
	guess []uint8
}

type entry struct {
	u    int
	pop  bool // else ack
	n    int  // plain: LMOVEs in this pop
	last bool // plain: the pop's last LMOVE
}

func (e *trackEngine) run(ctx context.Context, ready chan<- struct{}) {
	first := true
	for ctx.Err() == nil {
		rc, err := dialRESP3(e.o.addr)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		id, err1 := rc.do("CLIENT", "ID")
		_, err2 := rc.do("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "user_", "NOLOOP")
		sha, err3 := rc.do("SCRIPT", "LOAD", popSrc)
		if err := errors.Join(err1, err2, err3); err != nil {
			rc.c.Close()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		e.id.Store(id.(int64))
		e.sha = sha.(string)
		if first {
			first = false
			close(ready)
		} else if e.o.resweep {
			// Hints were lost while no tracking connection was on: sweep.
			go func() { _ = sweep(ctx, e.admin, e.s, e.o.users) }()
		}
		affected := e.session(ctx, rc)
		e.recover(ctx, affected)
		if ctx.Err() == nil {
			e.rec.reconn.Add(1)
			time.Sleep(e.o.killGap) // an outage of the hint connection
		}
	}
}

// session runs one tracking connection until it breaks; it returns the
// users whose pop or ack went unanswered.
func (e *trackEngine) session(ctx context.Context, rc *respConn) []int {
	fifo := make(chan entry, 1<<17)
	done := make(chan struct{})
	n := strconv.Itoa(e.o.batch)
	go func() { // reader
		defer close(done)
		var cur []string // plain: the messages of the pop being read
		for {
			v, err := rc.read()
			if err != nil {
				return
			}
			if p, ok := v.(resp3.Push); ok {
				if p.Kind != "invalidate" || len(p.Vals) == 0 {
					continue
				}
				keys, _ := p.Vals[0].([]any)
				for _, k := range keys {
					ks, _ := k.(string)
					e.rec.hints.Add(1)
					e.s.hint(userOf(ks))
				}
				continue
			}
			en := <-fifo
			if !en.pop {
				continue
			}
			if _, isErr := v.(resp3.Error); isErr {
				fmt.Println("pop error:", v)
			}
			var msgs []string
			full := false
			left := int64(0)
			if e.plain {
				if !en.last {
					if m, ok := v.(string); ok {
						cur = append(cur, m)
					}
					continue
				}
				left, _ = v.(int64) // the LLEN after the LMOVEs
				msgs, cur = cur, nil
				full = left > 0
			} else {
				arr, _ := v.([]any)
				msgs = make([]string, 0, len(arr))
				for _, m := range arr {
					s, _ := m.(string)
					msgs = append(msgs, s)
				}
				full = len(msgs) == e.o.batch
			}
			e.rec.pops.Add(1)
			e.rec.got(en.u, msgs)
			s := e.s
			s.mu.Lock()
			if len(msgs) > 0 {
				s.acks = append(s.acks, en.u)
			}
			if e.plain {
				if full {
					e.guess[en.u] = uint8(min(left, int64(e.o.batch)))
				} else {
					e.guess[en.u] = 1
				}
			}
			if full || s.st[en.u] == stDirty {
				s.st[en.u] = stQueued
				s.queue = append(s.queue, en.u)
			} else {
				s.st[en.u] = stIdle
			}
			s.mu.Unlock()
			s.signal()
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		rc.c.Close()
	}()
	var acks, queue []int
	for {
		select {
		case <-e.s.wake:
		case <-done:
			goto teardown
		}
		e.s.mu.Lock()
		acks, e.s.acks = e.s.acks, acks[:0]
		queue, e.s.queue = e.s.queue, queue[:0]
		for _, u := range queue {
			e.s.st[u] = stInflight
		}
		e.s.mu.Unlock()
		// Acks first: a user's ack must reach Redis before its next pop.
		for _, u := range acks {
			fifo <- entry{u: u}
			rc.write("DEL", procKey(u))
		}
		for _, u := range queue {
			if !e.plain {
				fifo <- entry{u: u, pop: true}
				rc.write("EVALSHA", e.sha, "2", queueKey(u), procKey(u), n)
				continue
			}
			e.s.mu.Lock()
			g := max(int(e.guess[u]), 1)
			e.s.mu.Unlock()
			q, p := queueKey(u), procKey(u)
			for i := 0; i < g; i++ {
				fifo <- entry{u: u, pop: true, n: g}
				rc.write("LMOVE", q, p, "RIGHT", "LEFT")
			}
			fifo <- entry{u: u, pop: true, n: g, last: true}
			rc.write("LLEN", q)
		}
		if err := rc.w.Flush(); err != nil {
			<-done
			goto teardown
		}
	}
teardown:
	var affected []int
	for {
		select {
		case en := <-fifo:
			affected = append(affected, en.u)
		default:
			return affected
		}
	}
}

// recover settles the users whose last commands went unanswered: their
// processing list holds either a batch already delivered (its ack was lost:
// drop it) or one never seen (its pop's reply was lost: requeue it).
func (e *trackEngine) recover(ctx context.Context, users []int) {
	ctx = context.WithoutCancel(ctx)
	done := map[int]bool{}
	for _, u := range users {
		if done[u] {
			continue
		}
		done[u] = true
		msgs, err := e.admin.LRange(ctx, procKey(u), 0, -1).Result()
		if err == nil && len(msgs) > 0 {
			if e.rec.delivered(msgs) {
				e.admin.Del(ctx, procKey(u))
				e.rec.recovAck.Add(1)
			} else {
				n, _ := requeueScript.Run(ctx, e.admin, []string{procKey(u), queueKey(u)}).Int64()
				e.rec.recovRQ.Add(n)
			}
		}
		e.s.mu.Lock()
		e.s.st[u] = stIdle
		e.s.mu.Unlock()
		e.s.hint(u)
	}
}

// ---------------------------------------------------------------- Bp, C

// poolEngine runs a pop task per hinted user on a go-redis pool (at most
// workers at once, like an ants pool): pop, deliver, ack (DEL), again while
// batches are full or a hint came meanwhile.
type poolEngine struct {
	o   *opts
	s   *sched
	rec *recorder
	cl  *redis.Client
	sem chan struct{}
	ctx context.Context
}

func newPoolEngine(ctx context.Context, o *opts, s *sched, rec *recorder) *poolEngine {
	p := &poolEngine{o: o, s: s, rec: rec, ctx: ctx, sem: make(chan struct{}, o.workers),
		cl: redis.NewClient(&redis.Options{Addr: o.addr, PoolSize: o.workers, Protocol: 2})}
	s.start = func(u int) { go p.task(u) }
	return p
}

func (p *poolEngine) task(u int) {
	p.sem <- struct{}{}
	defer func() { <-p.sem }()
	ctx := context.WithoutCancel(p.ctx)
	keys := []string{queueKey(u), procKey(u)}
	for {
		msgs, err := popScript.Run(ctx, p.cl, keys, p.o.batch).StringSlice()
		if err != nil && !errors.Is(err, redis.Nil) {
			if p.ctx.Err() != nil {
				return
			}
			requeueScript.Run(ctx, p.cl, []string{procKey(u), queueKey(u)})
			time.Sleep(50 * time.Millisecond)
			continue
		}
		p.rec.pops.Add(1)
		p.rec.got(u, msgs)
		if len(msgs) > 0 {
			p.cl.Del(ctx, procKey(u))
		}
		p.s.mu.Lock()
		if len(msgs) == p.o.batch || p.s.st[u] == stDirty {
			p.s.st[u] = stInflight
			p.s.mu.Unlock()
			continue
		}
		p.s.st[u] = stIdle
		p.s.mu.Unlock()
		return
	}
}

// hintConn is option Bp's hint source: a RESP3 tracking connection that only
// receives (CLIENT TRACKING on BCAST PREFIX user_, no NOLOOP effect since it
// writes nothing): the pool's pops hint too.
func hintConn(ctx context.Context, o *opts, s *sched, rec *recorder, ready chan<- struct{}) {
	rc, err := dialRESP3(o.addr)
	if err != nil {
		panic(err)
	}
	if _, err := rc.do("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "user_"); err != nil {
		panic(err)
	}
	close(ready)
	go func() { <-ctx.Done(); rc.c.Close() }()
	for {
		v, err := rc.read()
		if err != nil {
			return
		}
		if p, ok := v.(resp3.Push); ok && p.Kind == "invalidate" && len(p.Vals) > 0 {
			keys, _ := p.Vals[0].([]any)
			for _, k := range keys {
				ks, _ := k.(string)
				rec.hints.Add(1)
				s.hint(userOf(ks))
			}
		}
	}
}

// keyspaceConn is option C's hint source: PSUBSCRIBE to the keyspace
// channels of the queues; only push events hint (our own pops' rpop events
// are dropped).
func keyspaceConn(ctx context.Context, o *opts, s *sched, rec *recorder, ready chan<- struct{}) {
	cl := redis.NewClient(&redis.Options{Addr: o.addr, Protocol: 2})
	ps := cl.PSubscribe(ctx, "__keyspace@0__:user_*")
	if _, err := ps.Receive(ctx); err != nil {
		panic(err)
	}
	ch := ps.Channel(redis.WithChannelSize(1 << 17))
	close(ready)
	for m := range ch {
		switch m.Payload {
		case "lpush", "rpush", "linsert":
			rec.hints.Add(1)
			s.hint(userOf(strings.TrimPrefix(m.Channel, "__keyspace@0__:")))
		default:
			rec.selfHint.Add(1)
		}
	}
}

// ---------------------------------------------------------------- D

// runD blocks in BLMPOP over every user's queue on a few connections (users
// sharded over them). No processing list: a message popped is gone from
// Redis before it is written anywhere.
func runD(ctx context.Context, o *opts, rec *recorder, ready chan<- struct{}) {
	cl := redis.NewClient(&redis.Options{Addr: o.addr, PoolSize: o.dconns + 2, Protocol: 2})
	for c := 0; c < o.dconns; c++ {
		var keys []string
		for u := c; u < o.users; u += o.dconns {
			keys = append(keys, queueKey(u))
		}
		go func() {
			for ctx.Err() == nil {
				key, vals, err := cl.BLMPop(ctx, o.round, "RIGHT", int64(o.batch), keys...).Result()
				rec.pops.Add(1)
				if err != nil {
					if !errors.Is(err, redis.Nil) && ctx.Err() == nil {
						time.Sleep(50 * time.Millisecond)
					}
					rec.empty.Add(1)
					continue
				}
				rec.got(userOf(key), vals)
			}
		}()
	}
	close(ready)
}

// ---------------------------------------------------------------- Br

// runBr is option B with go-redis only (RESP2): a PubSub connection
// SUBSCRIBEd to __redis__:invalidate receives the hints, redirected to it by
// CLIENT TRACKING on REDIRECT <its id> BCAST PREFIX user_ NOLOOP issued on a
// dedicated go-redis Conn, which also sends the pops and acks in one
// pipeline per round (NOLOOP: its pops do not hint). No recovery here: B's
// kill test covers that.
func runBr(ctx context.Context, o *opts, s *sched, rec *recorder, ready chan<- struct{}) error {
	var subID atomic.Int64
	sub := redis.NewClient(&redis.Options{Addr: o.addr, Protocol: 2,
		OnConnect: func(ctx context.Context, cn *redis.Conn) error {
			id, err := cn.ClientID(ctx).Result()
			subID.Store(id)
			return err
		}})
	ps := sub.Subscribe(ctx, "__redis__:invalidate")
	if _, err := ps.Receive(ctx); err != nil {
		return err
	}
	pop := redis.NewClient(&redis.Options{Addr: o.addr, Protocol: 2, PoolSize: 1})
	cn := pop.Conn()
	if err := cn.Do(ctx, "CLIENT", "TRACKING", "on", "REDIRECT", subID.Load(), "BCAST", "PREFIX", "user_", "NOLOOP").Err(); err != nil {
		return err
	}
	if err := popScript.Load(ctx, cn).Err(); err != nil {
		return err
	}
	ch := ps.Channel(redis.WithChannelSize(1 << 17))
	go func() {
		for m := range ch {
			for _, k := range m.PayloadSlice {
				rec.hints.Add(1)
				s.hint(userOf(k))
			}
		}
	}()
	close(ready)
	var acks, queue []int
	for ctx.Err() == nil {
		select {
		case <-s.wake:
		case <-ctx.Done():
			return nil
		}
		s.mu.Lock()
		acks, s.acks = s.acks, acks[:0]
		queue, s.queue = s.queue, queue[:0]
		for _, u := range queue {
			s.st[u] = stInflight
		}
		s.mu.Unlock()
		pl := cn.Pipeline()
		for _, u := range acks {
			pl.Del(ctx, procKey(u))
		}
		pops := make([]*redis.Cmd, len(queue))
		for i, u := range queue {
			pops[i] = popScript.EvalSha(ctx, pl, []string{queueKey(u), procKey(u)}, o.batch)
		}
		if _, err := pl.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for i, u := range queue {
			msgs, _ := pops[i].StringSlice()
			rec.pops.Add(1)
			rec.got(u, msgs)
			s.mu.Lock()
			if len(msgs) > 0 {
				s.acks = append(s.acks, u)
			}
			if len(msgs) == o.batch || s.st[u] == stDirty {
				s.st[u] = stQueued
				s.queue = append(s.queue, u)
			} else {
				s.st[u] = stIdle
			}
			s.mu.Unlock()
		}
		s.mu.Lock()
		if len(s.acks) > 0 || len(s.queue) > 0 {
			s.signal()
		}
		s.mu.Unlock()
	}
	return nil
}
