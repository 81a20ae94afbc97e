package server

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/redpush/redpush/redisq"
)

// consume is the task of one online user: pop a batch, write it to every
// connection of the user, ack it, repeat; it returns when the user's last
// connection is gone or the server shuts down. Between pop and ack the batch
// lives in the user's processing list, so whatever stops this loop — a failed
// write, a closed connection, a shutdown, a crash — leaves the messages in
// Redis to be requeued, by this loop or by the recovery of the next start.
//
// Each ack travels with the next pop (AckPop, batches of up to Config.Batch)
// until the queue is found empty; then the consumer blocks on its own
// connection (Blocker.Pop) until the next message or a wake.
func (h *hub) consume(ctx context.Context, s *session) {
	h.consumers.Add(1)
	defer h.consumers.Add(-1)
	defer close(s.done)
	b := h.q.Blocker()
	defer b.Close()
	h.mu.Lock()
	s.blocker = b
	h.mu.Unlock()
	// A previous consumer of this user could not requeue its last batch only
	// if Redis was down; returning it first keeps the order.
	if !h.requeue(ctx, s.user) {
		return
	}
	var bo backoff
	pending := 0 // delivered, not yet acknowledged: the processing list
	more := true // the queue may hold messages: pop without blocking
	if !h.waitOnline(ctx, s) {
		return
	}
	for {
		// While batches keep coming the user is online: skip the registry
		// lock until the queue runs dry or a delivery found nobody.
		if !more && !h.waitOnline(ctx, s) {
			break
		}
		var msgs []string
		var err error
		if more {
			msgs, err = h.q.AckPop(ctx, s.user)
		} else { // nothing pending: the AckPop that found the queue empty acked it
			msgs, err = b.Pop(ctx, s.user)
		}
		if err != nil {
			switch {
			case ctx.Err() != nil:
			case errors.Is(err, redisq.ErrSlotMoved):
				h.log.Debug("cluster slot moved", "user", s.user, "err", err)
			default:
				h.health.fail(err)
			}
			// Whether the ack happened, and whether Redis moved messages
			// into the processing list before the reply was lost, is
			// unknown: requeue all of it (the pending batch may come
			// twice) before popping again, never ack it unseen.
			pending, more = 0, true
			if !h.requeue(ctx, s.user) || !bo.wait(ctx) {
				return
			}
			continue
		}
		h.health.ok()
		bo.reset()
		h.stats.Delivered.Add(int64(pending))
		pending = 0
		// Until a pop comes back empty, more may have arrived meanwhile:
		// keep taking batches, which is what makes a busy consumer cheap.
		more = len(msgs) > 0
		if !more {
			continue
		}
		if ctx.Err() != nil || !h.deliver(s, msgs, time.Now()) {
			if !h.requeue(ctx, s.user) || !h.waitOnline(ctx, s) {
				return
			}
			more = true // the requeued batch is next
			continue
		}
		pending = len(msgs)
	}
	if pending > 0 {
		h.ack(ctx, s.user, pending)
	}
}

// deliverUser writes msgs relayed from another instance to the connections
// of user here, if the user is still online.
func (h *hub) deliverUser(user string, msgs []string) {
	h.mu.Lock()
	s := h.users[user]
	h.mu.Unlock()
	if s != nil {
		h.deliver(s, msgs, time.Now())
	}
}

// deliver writes msgs to every open connection of s and reports whether at
// least one connection took them.
func (h *hub) deliver(s *session, msgs []string, popped time.Time) bool {
	conns := h.connsOf(s)
	if len(conns) == 0 {
		return false
	}
	buf := getBuf()
	defer putBuf(buf)
	*buf = h.enc.appendFrames((*buf)[:0], s.user, h.q.Key(s.user), msgs)
	ok := false
	for _, c := range conns {
		if err := c.write(*buf); err != nil {
			h.m.writeFailures.Inc()
			h.log.Debug("push failed", "fd", c.fd, "user", s.user, "err", err)
			continue
		}
		if !ok {
			h.m.observePopToWrite(popped)
		}
		ok = true
	}
	return ok
}

// requeue returns the processing list of user to the queue, retrying while
// Redis is down. It reports false when the server shuts down before it
// succeeded: the messages then stay in the processing list for Recover.
func (h *hub) requeue(ctx context.Context, user string) bool {
	var bo backoff
	for {
		// Requeueing must outlive a cancelled ctx: shutdown is exactly when
		// in-flight messages have to go back.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		n, err := h.q.Requeue(actx, user)
		cancel()
		if err == nil {
			h.stats.Requeued.Add(int64(n))
			return true
		}
		h.health.fail(err)
		if !bo.wait(ctx) {
			return false
		}
	}
}

// ack acknowledges the last delivered batch of a consumer that ends. If
// Redis is down, the batch stays in the processing list and comes again
// after a requeue or a restart: a duplicate, not a loss.
func (h *hub) ack(ctx context.Context, user string, n int) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := h.q.Ack(actx, user); err != nil {
		h.health.fail(err)
		return
	}
	h.stats.Delivered.Add(int64(n))
}

// backoff is a capped exponential delay with jitter, so that thousands of
// consumers do not hit a recovering Redis in step.
type backoff struct{ d time.Duration }

const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 2 * time.Second
)

func (b *backoff) reset() { b.d = 0 }

// wait sleeps for the next delay; it reports false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	b.d = min(max(2*b.d, backoffMin), backoffMax)
	d := b.d/2 + rand.N(b.d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
