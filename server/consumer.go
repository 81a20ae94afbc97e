package server

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/redisq"
)

// A user's consumer: pop a batch, write it to every
// connection of the user, ack it once a client's TCP acknowledged it
// (confirm.go), repeat; it returns when the user's last connection is gone
// or the server shuts down. Between pop and ack the batch lives in the
// user's processing list, so whatever stops this loop — a failed write, a
// closed connection, a shutdown, a crash — leaves the messages in Redis to
// be requeued, by this loop or by the recovery of the next start.
//
// Acks travel with the next pop (batches of up to Config.Batch) until the
// queue is found empty; then the consumer waits for the next message:
// hinted (the default), for a hint that its queue was written to, its pops
// going over the hint connection of its Redis master (redisq.Hints);
// blocking, in BLMOVE on a connection of its own (redisq.Blocker), its
// pops in the ackPop script on the command client.
//
// run is one task of c: the first, which starts the consumer, or one that
// goes on with it after it parked or yielded (sched). The consumer ends
// (endConsumer) when a task returns without parking it or putting it back
// in line; run returns how it ended.
func (h *hub) run(ctx context.Context, c *consumer) (how ending) {
	h.tasks.Add(1)
	defer h.tasks.Add(-1)
	s := c.s
	end := true
	defer func() {
		if end {
			h.endConsumer(c)
		}
	}()
	defer func() {
		if v := recover(); v != nil {
			h.crashed(ctx, s, v)
			how = shuttingDown
		}
	}()
	// The queue is registered before the first pop (redisq's registry: a
	// dead instance's lists are found there). A previous consumer of this
	// user could not requeue its last batch only if Redis was down;
	// returning it first keeps the order. failures counts the queue's
	// consecutive failed deliveries (redisq's dead-letter rule): past
	// IsolateAfter, messages go one at a time.
	if !c.started {
		c.started = true
		if !h.start(ctx, c) {
			h.retire(ctx, s) // shutting down
			return shuttingDown
		}
	}
	for {
		switch how = c.serve(ctx); how {
		case parked, yielded:
			end = false
			return how
		case shuttingDown:
			h.retire(ctx, s)
			return how
		}
		// The user's last connection is gone, and what was delivered is
		// acknowledged. The session leaves the hub only now: a connection
		// of the user that came meanwhile joined this session, and this
		// consumer serves it, so that never two consumers of one user
		// share its processing list. The queue leaves the instance's
		// registry first: a consumer of the user that starts after the
		// session left registers it again after that.
		testHook(ctx, s.user, "retiring")
		if err := h.q.Unregister(ctx, s.user); err != nil {
			h.log.Debug("unregistering the queue failed; its entry stays", "user", s.user, "err", err)
		}
		if h.retire(ctx, s) {
			return
		}
		if !h.register(ctx, s.user) {
			h.retire(ctx, s) // shutting down
			return
		}
	}
}

// endConsumer is the end of c, by its last task: its Blocker closes, and,
// blocking, its session's done.
func (h *hub) endConsumer(c *consumer) {
	if c.b != nil {
		c.b.Close()
	}
	h.consumers.Add(-1)
	if c.s.done != nil {
		close(c.s.done)
	}
}

// consumer is the state of one user's consumer between two Redis calls.
type consumer struct {
	h *hub
	s *session
	b *redisq.Blocker

	bo backoff
	// flights are the batches written and not yet acknowledged in Redis,
	// oldest first: the processing list. They are acknowledged as their
	// delivery is confirmed (confirm.go), oldest first, with the next pop.
	flights  []flight
	more     bool  // the queue may hold messages: pop without blocking
	full     bool  // the last pop was a full batch: more is likely waiting
	left     int64 // hinted: how many messages the queue held after the last pop; -1: unknown
	hinted   bool  // hinted: a hint came since the last pop
	slowAcks bool  // the last wait for a confirmation timed out: do not wait again until one comes
	failures int   // consecutive failed deliveries of its queue (see run)
	// token is the AckPop token to send again: its call timed out waiting
	// for a pooled connection, which does not prove that an earlier
	// attempt of go-redis's did not run (redisq.Queue.AckPopToken);
	// tokenAt is when it was taken. acking is how many messages that call
	// acknowledges, and ackingFlights how many flights they are.
	token                 uint64
	tokenAt               time.Time
	acking, ackingFlights int
	// resumed is set for the task that goes on after a park (hub.resume)
	// or a yield: serve then keeps what it knew of the queue.
	resumed bool
	started bool // its first task readied the queue (hub.start)
	// room is how many messages the next pop may take for its user's ack
	// connections (ack.go): -1 when it has none, so no bound and no ids.
	room int
	// ackElsewhere: another instance holds ack connections of the user,
	// as last read at ackCheckedAt; this one pops only while it holds one
	// too (ackers.go, deferToAckers).
	ackElsewhere bool
	ackCheckedAt time.Time
	pops         int // pops in this task's turn (sched's yieldAfter)
}

// serve pops, delivers and acknowledges while the user is online. It
// reports wentOffline when the user went offline with nothing held (what
// was delivered is acknowledged, the rest requeued), shuttingDown when the
// server shuts down, parked when it left the consumer to wait for a hint
// with no task (hub.park; resume goes on where it stopped), and yielded
// when others waited for a task (sched: the consumer goes back in line,
// with what it holds).
func (c *consumer) serve(ctx context.Context) ending {
	h, s := c.h, c.s
	resumed := c.resumed
	c.resumed, c.pops = false, 0
	// Its connection may be gone before it started. One that yielded
	// holding batches, and whose user left meanwhile, settles them (the
	// loop's end).
	held := len(c.flights) > 0 || c.token != 0
	if !held && !h.waitOnline(ctx, s) {
		return ended(ctx)
	}
	left := held && !h.isOnline(s)
	if !resumed { // a resumed consumer knows its queue
		c.more, c.left = true, -1
	}
loop:
	for !left {
		if c.token == 0 && c.pops >= yieldAfter && h.othersWait() {
			c.resumed = true
			return yielded // its turn is over: others wait for a task
		}
		// While batches keep coming the user is online: skip the registry
		// lock until the queue runs dry or a delivery found nobody.
		if !c.more && !h.waitOnline(ctx, s) {
			break
		}
		if c.token == 0 {
			switch c.next(ctx) {
			case again:
				continue
			case stop:
				break loop
			}
		}
		var msgs []string
		var err error
		if c.more {
			// The ack must not be cut short by a shutdown: the batch it
			// acknowledges was delivered, and requeueing it would send it
			// twice. Its duration is bounded by the client's timeouts.
			n := h.q.BatchSize()
			if c.isolating() {
				n = 1 // the message that keeps failing goes alone
			}
			if c.room > 0 {
				n = min(n, c.room) // what every ack connection with room can take
			}
			if c.token == 0 {
				c.token, c.tokenAt = h.q.NewToken(), time.Now()
			}
			msgs, err = c.pop(ctx, n)
			c.pops++
		} else {
			if h.hints != nil {
				if ok, again := h.park(c); ok {
					return parked
				} else if !again {
					c.awaitHint(ctx)
				}
				continue
			}
			if !h.beginBlock(s) {
				continue // gone meanwhile: the loop's waitOnline sees it
			}
			if len(c.flights) > 0 {
				// What it holds is acknowledged with the next pop: at the
				// latest after a short round.
				msgs, err = c.b.PopWithin(ctx, s.user, heldRound)
			} else {
				msgs, err = c.b.Pop(ctx, s.user)
			}
			h.endBlock(s)
			c.full = false
		}
		if errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redisq.ErrClaimLapsed) {
			// Every pooled connection was busy, or the claim waits for its
			// renewal: send the same call again (an AckPop with the same
			// token), the delivered batches still held. Redis itself is
			// fine. A token is only good while its fence lasts: past that,
			// a replay would run as a new call and acknowledge again, so
			// everything goes back instead (it may come twice).
			h.redisFailed(err)
			if c.token != 0 && time.Since(c.tokenAt) > redisq.FenceLife/2 {
				c.token = 0
				c.dropFlights(len(c.flights))
				if !h.requeue(ctx, s.user) {
					return shuttingDown
				}
				c.more, c.left = true, -1
			}
			if !h.backoff(ctx, &c.bo) {
				break
			}
			continue
		}
		c.token = 0
		if err != nil {
			switch {
			case ctx.Err() != nil:
			case redisq.SlotMoving(err):
				h.log.Debug("cluster slot moved", "user", s.user, "err", err)
			case errors.Is(err, redisq.ErrDiverged):
				// Another instance took this one for dead and returned its
				// lists, or a failover lost writes: nothing was acked.
				h.log.Warn("processing list changed behind its consumer; requeueing what it held (it may come twice)", "user", s.user)
			default:
				h.health.fail(err)
			}
			// Whether the ack happened, and whether Redis moved messages
			// into the processing list before the reply was lost, is
			// unknown: requeue all of it (what was delivered may come
			// twice) before popping again, never ack it unseen.
			if !c.requeueAfterFailure(ctx) {
				return shuttingDown
			}
			continue
		}
		h.health.ok()
		c.bo.reset()
		c.acked(ctx)
		// Until a pop comes back empty, more may have arrived meanwhile:
		// keep taking batches, which is what makes a busy consumer cheap.
		// A hinted pop knows: it asked the queue's length.
		c.more = len(msgs) > 0
		if h.hints != nil {
			c.more = c.left > 0
		}
		if len(msgs) == 0 {
			continue
		}
		var ab *ackBatch
		if c.room < 0 {
			// An ack connection that came since next looked (a blocking
			// pop waits for seconds) gets this batch, with ids, too.
			c.room = h.ackRoom(s)
		}
		if c.room >= 0 {
			if ab, err = c.wrap(ctx, msgs); err != nil {
				// Popped, not delivered: it goes back with the rest.
				h.redisFailed(err)
				c.flights = append(c.flights, flight{n: len(msgs)})
				if !c.requeueAfterFailure(ctx) {
					return shuttingDown
				}
				continue
			}
		}
		testHook(ctx, s.user, "deliver")
		if ctx.Err() != nil {
			c.flights = append(c.flights, flight{n: len(msgs)}) // popped, not delivered: goes back with the rest
			break
		}
		f, written, tried := h.deliver(s, msgs, time.Now(), true, ab)
		if !written {
			for _, m := range f.acks { // recorded by ack connections that then failed it
				m.c.ack.release(m.end, true)
			}
			// Nobody took it: it goes back with what is still held, once
			// that settled (what was confirmed meanwhile is acknowledged).
			// It is held too (popped, never written: failed), so that the
			// acknowledgement counts it among what the list holds.
			c.flights = append(c.flights, flight{n: len(msgs)})
			c.settleAll(ctx)
			c.dropFlights(len(c.flights))
			if tried {
				c.failures = h.requeueFailed(ctx, s.user)
			} else if !h.requeue(ctx, s.user) {
				return shuttingDown
			}
			if !h.waitOnline(ctx, s) {
				return ended(ctx) // requeued: nothing held
			}
			c.more, c.left = true, -1 // the requeued batch is next
			continue
		}
		f.at = time.Now()
		c.flights = append(c.flights, f)
		testHook(ctx, s.user, "delivered")
	}
	if c.token != 0 {
		// An AckPop whose outcome is unknown may have popped the next
		// batch into the processing list: acknowledging with a new token
		// would drop it unsent. Requeue all; what was delivered may come
		// twice.
		c.dropFlights(len(c.flights))
		h.requeue(ctx, s.user)
	} else {
		// What was not confirmed goes back: its connections closed first.
		// So does anything a failed BLMOVE may have moved into the list
		// without its reply arriving: the requeue runs whatever is held.
		c.settleAll(ctx)
		refused := len(c.flights) > 0 && c.flights[0].outcome() == failed && c.flights[0].refusedBy()
		c.dropFlights(len(c.flights))
		if refused { // its client refused what it got, and left (see next)
			h.requeueFailed(ctx, s.user)
		} else {
			h.requeue(ctx, s.user)
		}
	}
	c.token = 0
	return ended(ctx)
}

// ending is how serve ended.
type ending int

const (
	wentOffline  ending = iota // the user's last connection is gone; nothing held
	shuttingDown               // the server shuts down
	parked                     // waiting for a hint with no task (hub.park)
	yielded                    // waiting in line for a task, others having waited (sched)
)

// ended is wentOffline, or shuttingDown once ctx is done.
func ended(ctx context.Context) ending {
	if ctx.Err() != nil {
		return shuttingDown
	}
	return wentOffline
}

// pop acknowledges what c.acks names and pops up to n messages: in one
// script on the command client, or, hinted, on the hint connection of the
// user's master (one plain LMOVE after a hint to a queue found empty, the
// script otherwise; an ack alone, lazily, when nothing was written since).
func (c *consumer) pop(ctx context.Context, n int) ([]string, error) {
	actx := context.WithoutCancel(ctx)
	if c.h.hints == nil {
		msgs, err := c.h.q.AckPopToken(actx, c.s.user, c.acks(), n, c.token)
		c.full = len(msgs) == n
		return msgs, err
	}
	select {
	case <-c.s.hint: // a write since the last pop, while the consumer was busy
		c.hinted = true
	default:
	}
	if c.left == 0 && !c.hinted && c.acking > 0 {
		// The queue was empty, and no write since: acknowledge alone,
		// sharing a write with other users' calls.
		return nil, c.h.hints.Ack(actx, c.s.user, c.acks(), c.token)
	}
	var msgs []string
	var left int64
	var err error
	if c.left != 0 {
		// The length is unknown, or messages keep coming (more since the
		// last LLEN, likely): a batch by script, one command where plain
		// pops would take one per message. Its writes hint back, which
		// costs a pop only if the queue is then found empty.
		msgs, left, err = c.h.hints.PopBatch(actx, c.s.user, c.acks(), n, c.token)
	} else { // woken by a hint: a message or a few, by plain pops
		msgs, left, err = c.h.hints.Pop(actx, c.s.user, c.acks(), 1, c.token)
	}
	if err == nil { // a failed call leaves what it knew (a retry needs it)
		c.left, c.full, c.hinted = left, left > 0, false
	}
	return msgs, err
}

// awaitHint waits until the user's queue was written to (a hint, or the
// sweep found it non-empty: c.more), its connections changed, or, while
// it holds batches, a round passed (they are looked at again).
func (c *consumer) awaitHint(ctx context.Context) {
	if !c.h.isOnline(c.s) {
		return // the loop's waitOnline sees why
	}
	var round <-chan time.Time
	if len(c.flights) > 0 {
		t := time.NewTimer(heldRound)
		defer t.Stop()
		round = t.C
	}
	c.h.pause()
	defer c.h.unpause()
	select {
	case <-c.s.hint:
		c.more, c.hinted = true, true
	case <-c.s.wake:
	case <-round:
	case <-ctx.Done():
	}
}

// step is what the consumer does after next.
type step int

const (
	proceed step = iota // pop (c.more) or block, acknowledging c.acking messages
	again               // look again: something settled or went back to the queue
	stop                // the server shuts down
)

// next looks at the batches held before the next pop: it counts what it
// may acknowledge with the pop (c.acks), returns the held batches to the
// queue when the oldest failed, closes a connection that acknowledged
// nothing for -write-timeout, and, when the queue ran dry or a failing
// message goes alone, waits a while for confirmations.
func (c *consumer) next(ctx context.Context) step {
	n, done, headFailed := settle(c.flights)
	if !headFailed && done < len(c.flights) && c.h.expireAcks(c.flights[done], time.Now()) {
		n, done, headFailed = settle(c.flights) // its ack connections gave up on it
	}
	if headFailed {
		// Every connection the oldest batch was written to closed before
		// its peer acknowledged it: it goes back, with everything after
		// it. That counts as a failed delivery (the dead-letter rule) only
		// when a client closed saying it cannot take it (1009 too big, …:
		// conn.refused): a connection that drops while bytes are on their
		// way says nothing against the message.
		refused := c.flights[done].refusedBy()
		if n > 0 {
			c.ackNow(ctx, n, done)
		}
		c.dropFlights(len(c.flights))
		if refused {
			c.failures = c.h.requeueFailed(ctx, c.s.user)
		} else if !c.h.requeue(ctx, c.s.user) {
			return stop
		}
		c.more, c.left = true, -1
		return again
	}
	c.acking, c.ackingFlights = n, done
	if done > 0 {
		c.slowAcks = false
	}
	held := len(c.flights) > done
	if held {
		c.h.closeStalled(c.flights[done])
	}
	c.room = c.h.ackRoom(c.s)
	// Nothing is popped while another instance pops for the user's ack
	// connections (what it pops comes here relayed), or while every ack
	// connection here is at its window (for the plain connections either,
	// until acknowledgements, which wake it, or the timeout make room, or
	// the connections change).
	if (c.room < 0 && c.deferToAckers(ctx)) || c.room == 0 {
		return c.holdOff(ctx, n, done)
	}
	switch {
	case held && c.isolating():
		// One message at a time, and the next only once this one is
		// confirmed or failed: the dead-letter rule condemns only a
		// processing list of one.
		c.awaitProgress(ctx, done, heldRound)
		if ctx.Err() != nil {
			return stop
		}
		return again
	case c.more && c.full:
		// A full batch: more is likely waiting. Acknowledge what is
		// confirmed with the next pop, without waiting.
	case held && !c.slowAcks:
		// The queue is (probably) dry: a client that reads acknowledges
		// within a round trip. Waiting for that here lets the next pop
		// acknowledge it, instead of a call of its own. If none comes for
		// a while, pop (or block) with the batches held; they are
		// acknowledged with a later pop.
		if c.awaitProgress(ctx, done, settleWait) {
			return again
		}
		c.slowAcks = true
	}
	if n > 0 {
		c.more = true // an acknowledgement goes with a pop
	}
	return proceed
}

// holdOff waits instead of popping (next), having acknowledged the n
// messages of the done flights that are confirmed: no pop carries them.
func (c *consumer) holdOff(ctx context.Context, n, done int) step {
	if n > 0 {
		c.ackNow(ctx, n, done)
	}
	if !c.h.isOnline(c.s) {
		// Its user left: the loop's waitOnline ends the consumer (it
		// skips that look while c.more says the queue may hold more).
		c.more = false
		return again
	}
	c.awaitAckers(ctx)
	if ctx.Err() != nil {
		return stop
	}
	return again
}

// requeueAfterFailure returns everything held to the queue after a Redis
// call whose outcome is unknown, and backs off; false when the server
// shuts down first.
func (c *consumer) requeueAfterFailure(ctx context.Context) bool {
	c.dropFlights(len(c.flights))
	c.more, c.left = true, -1
	return c.h.requeue(ctx, c.s.user) && c.h.backoff(ctx, &c.bo)
}

// acks is what the next pop acknowledges: the confirmed oldest messages,
// if the processing list holds what this consumer holds.
func (c *consumer) acks() redisq.Acks {
	held := 0
	for _, f := range c.flights {
		held += f.n
	}
	return redisq.Acks{Oldest: c.acking, Held: held}
}

// isolating says that the queue's deliveries failed often enough in a row
// that its messages go one at a time (redisq.IsolateAfter).
func (c *consumer) isolating() bool { return c.failures >= redisq.IsolateAfter }

// awaitProgress polls the flights until more than done of them are
// confirmed or the oldest unconfirmed one failed (true), or within passed
// (0: no limit) or ctx ended (false). Nothing signals a TCP
// acknowledgement: it is asked for (SIOCOUTQ), at growing intervals.
func (c *consumer) awaitProgress(ctx context.Context, done int, within time.Duration) bool {
	var deadline time.Time
	if within > 0 {
		deadline = time.Now().Add(within)
	}
	c.h.pause() // a slow client holds no slot
	defer c.h.unpause()
	var pause time.Duration
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		pause = pollStep(pause)
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return false
			}
			pause = min(pause, left)
		}
		t.Reset(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			return false
		}
		if _, d, failed := settle(c.flights); d > done || failed {
			return true
		}
	}
}

// settleAll waits until every flight is confirmed or failed (their
// connections are closing: they linger at most -write-timeout, or until
// the shutdown's deadline), then acknowledges the confirmed ones that come
// first. What it leaves in c.flights the caller returns to the queue. A
// connection of the user that comes meanwhile ends the wait: it is served
// at once, and what was still on its way to the old ones goes to it,
// perhaps twice (a page reload).
func (c *consumer) settleAll(ctx context.Context) {
	if len(c.flights) == 0 {
		return
	}
	h := c.h
	h.pause()
	defer h.unpause()
	deadline := time.Now().Add(2*h.writeTimeout + time.Second)
	var pause time.Duration
	for {
		n, done, headFailed := settle(c.flights)
		if headFailed || done == len(c.flights) || !time.Now().Before(h.closeBound(deadline)) || h.cameBack(ctx, c.s) {
			if n > 0 {
				c.ackNow(ctx, n, done)
			}
			return
		}
		pause = pollStep(pause)
		time.Sleep(pause)
	}
}

// ackNow acknowledges the n messages of the oldest done flights at once,
// outside a pop. If that fails they stay held, and go back to the queue
// with the rest: a duplicate, not a loss.
func (c *consumer) ackNow(ctx context.Context, n, done int) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	defer cancel()
	c.acking = n
	if err := c.h.q.AckOldest(actx, c.s.user, c.acks()); err != nil {
		c.h.redisFailed(err)
		c.acking = 0
		return
	}
	c.acking, c.ackingFlights = n, done
	c.acked(ctx)
}

// acked drops the flights the last call acknowledged, and counts them.
func (c *consumer) acked(ctx context.Context) {
	if c.acking == 0 {
		return
	}
	c.h.stats.Delivered.Add(int64(c.acking))
	part := c.acking // beyond the whole flights: the acknowledged oldest of the next (settle)
	for _, f := range c.flights[:c.ackingFlights] {
		part -= f.n
	}
	c.forgetFlights(c.ackingFlights, false)
	if part > 0 {
		c.flights[0].n -= part
	}
	if c.failures > 0 {
		c.failures = 0
		_ = c.h.q.ClearFailures(ctx, c.s.user)
	}
}

// dropFlights forgets the oldest n flights, going back to the queue.
func (c *consumer) dropFlights(n int) { c.forgetFlights(n, true) }

// forgetFlights forgets the oldest n flights, acknowledged or going back
// to the queue (requeued): their messages no longer hold the ack
// connections' windows, and those going back may come to them again.
func (c *consumer) forgetFlights(n int, requeued bool) {
	for _, f := range c.flights[:n] {
		for _, m := range f.acks {
			m.c.ack.release(m.end, requeued)
		}
	}
	rest := copy(c.flights, c.flights[n:])
	clear(c.flights[rest:])
	c.flights = c.flights[:rest]
	c.acking, c.ackingFlights = 0, 0
}

// hook, set only by tests, runs before each delivery ("deliver") and after
// each delivery that a connection took ("delivered"): it lets a test make a
// consumer panic, or shut the server down at a chosen step.
var hook atomic.Pointer[func(ctx context.Context, user, stage string)]

func testHook(ctx context.Context, user, stage string) {
	if f := hook.Load(); f != nil {
		(*f)(ctx, user, stage)
	}
}

// crashed cleans up after a consumer that panicked: a bug, but one that must
// not leave its user stuck with a session nobody serves. What it popped goes
// back to the queue, the session leaves the registry, and its connections
// are closed with 1011: their clients reconnect and get a fresh consumer.
func (h *hub) crashed(ctx context.Context, s *session, v any) {
	h.m.panics.Inc()
	h.log.Error("consumer panicked; its user's connections are closed and its messages requeued",
		"user", s.user, "panic", v, "stack", string(debug.Stack()))
	h.requeue(ctx, s.user)
	h.mu.Lock()
	s.dead = true
	h.dropSession(s)
	conns := slices.Clone(s.conns)
	h.mu.Unlock()
	for _, c := range conns {
		c.closeWith(ws.StatusInternalServerError, errConsumerCrashed.Error(), time.Now().Add(time.Second))
	}
}

// deliverUser writes msgs relayed from instance origin to the plain
// connections of user here, if the user is still online. Ack connections
// get what their own instance pops: a relayed copy was acknowledged
// already; if the user has some here, origin may have missed that it
// should not pop (ackers.go, announceAckers).
func (h *hub) deliverUser(user, origin string, msgs []string) {
	h.mu.Lock()
	s := h.users[user]
	announce := s != nil && h.dueAnnouncement(s)
	h.mu.Unlock()
	if announce {
		go h.announceAckers(user, origin)
	}
	if s != nil {
		h.deliver(s, msgs, time.Now(), false, nil)
	}
}

// deliver hands msgs to every open connection of s and waits until one of
// them has written them to its socket (written: f follows their way to the
// client, confirm.go), or every one failed (they go back to the queue).
// tried says whether any connection got as far as writing them: if none
// did (the user left meanwhile), their going back is no failure of theirs.
// It does not wait for the other connections: a tab that stops reading
// holds up no one. A consumer (consumer: not the relay) gives up its slot
// while it writes, once the batch is encoded: a write may stall on a full
// socket. Ack connections get the batch as ack frames if ab gives its ids
// and their window has room for all of it (ack.go).
func (h *hub) deliver(s *session, msgs []string, popped time.Time, consumer bool, ab *ackBatch) (f flight, written, tried bool) {
	conns := h.connsOf(s)
	conns, f.acks = takers(conns, ab, len(msgs))
	if len(conns) == 0 {
		return f, false, false
	}
	f.n = len(msgs)
	buf := getBuf()
	*buf = h.enc.appendFrames((*buf)[:0], s.user, h.q.Key(s.user), msgs)
	var ackBuf *[]byte
	if len(f.acks) > 0 {
		ackBuf = getBuf()
		*ackBuf = appendAckFrames((*ackBuf)[:0], ab)
		h.m.redelivered.Add(float64(ab.redeliveries()))
	}
	if consumer {
		h.pause()
		defer h.unpause()
	}
	if len(conns) == 1 {
		frames := *buf
		if conns[0].ack != nil {
			frames = *ackBuf
		}
		if end, written, tried, ok := conns[0].writeNow(frames); ok {
			if written {
				h.m.observePopToWrite(popped)
			}
			putBuf(buf)
			if ackBuf != nil {
				putBuf(ackBuf)
			}
			f.one = mark{conns[0], end}
			return f, written, tried
		}
	}
	f.t = newTicket(buf, len(conns), popped, h.m)
	f.t.ackBuf = ackBuf
	for _, c := range conns {
		c.send(f.t)
	}
	written, tried = f.t.wait()
	return f, written, tried
}

// takers are the connections of conns that take a batch of n messages:
// the plain ones, and the ack ones if ab gives the batch's ids and their
// window has room for n more; those record it, and marks says where it
// ends in each one's sequence. A batch popped for ack connections (ab)
// that none of them can take goes to nobody: it must not leave Redis on
// a plain connection's TCP confirmation.
func takers(conns []*conn, ab *ackBatch, n int) (to []*conn, marks []ackMark) {
	to = conns[:0] // conns is the caller's own snapshot
	for _, c := range conns {
		switch {
		case c.ack == nil:
		case ab == nil || c.ack.room() < n:
			continue
		default:
			marks = append(marks, ackMark{c, c.ack.record(ab.ids)})
		}
		to = append(to, c)
	}
	if ab != nil && len(marks) == 0 {
		return nil, nil
	}
	return to, marks
}

// requeue returns the processing list of user to the queue, retrying while
// Redis is down. It reports false when the server shuts down before it
// succeeded: the messages then stay in the processing list for Recover.
func (h *hub) requeue(ctx context.Context, user string) bool {
	return h.retryDetached(ctx, func(actx context.Context) error {
		n, err := h.q.Requeue(actx, user)
		if err == nil {
			h.stats.Requeued.Add(int64(n))
		}
		return err
	})
}

// start readies the user's queue for c in one round trip
// (redisq.Queue.Start), retrying while Redis is down. It reports false
// when the server shuts down first.
func (h *hub) start(ctx context.Context, c *consumer) bool {
	return h.retryDetached(ctx, func(actx context.Context) error {
		st, err := h.q.Start(actx, c.s.user)
		if err == nil {
			h.stats.Requeued.Add(int64(st.Requeued))
			c.failures = st.Failures
			c.ackElsewhere, c.ackCheckedAt = st.AckElsewhere, time.Now()
			if st.AckElsewhere {
				h.log.Debug("another instance holds ack connections of the user: popping left to it", "user", c.s.user)
			}
		}
		return err
	})
}

// detachedTimeout bounds one Redis call that must outlive a cancelled
// context: a shutdown is exactly when in-flight messages have to go back.
const detachedTimeout = 2 * time.Second

// retryDetached is retry for such calls: each attempt runs under a context
// of its own, detachedTimeout long, that ctx's end does not cancel.
func (h *hub) retryDetached(ctx context.Context, op func(context.Context) error) bool {
	return h.retry(ctx, func() error {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
		defer cancel()
		return op(actx)
	})
}

// retry runs op until it succeeds (true), backing off while Redis fails,
// or until ctx ends first (false).
func (h *hub) retry(ctx context.Context, op func() error) bool {
	var bo backoff
	for {
		err := op()
		if err == nil {
			return true
		}
		h.redisFailed(err)
		if !h.backoff(ctx, &bo) {
			return false
		}
	}
}

// register records the user's queue in this instance's registry, retrying
// while Redis is down; false when the server shuts down first.
func (h *hub) register(ctx context.Context, user string) bool {
	return h.retry(ctx, func() error { return h.q.Register(ctx, user) })
}

// requeueFailed returns a batch that no connection took, counting the
// failure (redisq.Queue.RequeueFailed); a message that failed too often
// goes to the dead-letter list instead. It returns the failures so far.
func (h *hub) requeueFailed(ctx context.Context, user string) int {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	moved, failures, dead, err := h.q.RequeueFailed(rctx, user)
	cancel()
	if err != nil {
		h.log.Debug("counting a failed delivery failed; requeueing uncounted", "user", user, "err", err)
		h.requeue(ctx, user) // uncounted, with retries
		return 0
	}
	h.stats.Requeued.Add(int64(moved))
	if dead {
		h.m.deadLettered.Add(float64(moved))
		h.log.Warn("message moved to the dead-letter list: every connection it reached failed", "user", user,
			"deliveries", redisq.DeadAfter, "list", h.q.DeadKey(user), "messages", moved)
		return 0
	}
	return failures
}

// backoff waits for bo's next delay without holding a slot (sched); it
// reports false if ctx ended first. Called by consumer tasks only, as are
// the retries that use it.
func (h *hub) backoff(ctx context.Context, bo *backoff) bool {
	h.pause()
	defer h.unpause()
	return bo.wait(ctx)
}

// backoff is a capped exponential delay with jitter, so that thousands of
// consumers do not hit a recovering Redis in step.
type backoff struct{ d time.Duration }

const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 2 * time.Second
)

func (b *backoff) reset() { b.d = 0 }

// next is the next delay: twice the last, within [backoffMin, backoffMax],
// less up to half of it (jitter).
func (b *backoff) next() time.Duration {
	b.d = min(max(2*b.d, backoffMin), backoffMax)
	return b.d/2 + rand.N(b.d/2+1)
}

// wait sleeps for the next delay; it reports false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.next())
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// redisFailed records a failed Redis command of a consumer as an outage,
// unless it never left: a pool timeout says every pooled connection was
// busy, and a lapsed claim that this process must not touch its lists
// until it renewed the claim, not that Redis is down; a diverged
// processing list and a cluster slot on the move are Redis answering.
func (h *hub) redisFailed(err error) {
	switch {
	case errors.Is(err, redis.ErrPoolTimeout):
		h.log.Debug("redis pool busy; retrying", "err", err)
	case errors.Is(err, redisq.ErrClaimLapsed):
		h.log.Debug("instance id claim not renewed in time; waiting", "err", err)
	case errors.Is(err, redisq.ErrDiverged):
		h.log.Warn("processing list changed behind its consumer; requeueing what it held (it may come twice)", "err", err)
	case redisq.SlotMoving(err):
		// A script whose keys a slot migration split between two nodes,
		// a MOVED or ASK before the slot map caught up: Redis answers.
		h.log.Debug("cluster slot moving; retrying", "err", err)
	default:
		h.health.fail(err)
	}
}
