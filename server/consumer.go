package server

import (
	"context"
	"math/rand/v2"
	"time"
)

// consume is the task of one online user: pop a batch, write it to every
// connection of the user, ack it, repeat; it returns when the user's last
// connection is gone or the server shuts down. Between pop and ack the batch
// lives in the user's processing list, so whatever stops this loop — a failed
// write, a closed connection, a shutdown, a crash — leaves the messages in
// Redis to be requeued, by this loop or by the recovery of the next start.
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
	idle := false // the queue was seen empty: block at once
	for h.waitOnline(ctx, s) {
		msgs, err := b.Pop(ctx, s.user, idle)
		if err != nil {
			if ctx.Err() == nil {
				h.health.fail(err)
			}
			// The reply may have been lost after Redis moved messages into
			// the processing list: put them back before popping again, or
			// the next ack would delete them unseen.
			if !h.requeue(ctx, s.user) || !bo.wait(ctx) {
				return
			}
			idle = false
			continue
		}
		h.health.ok()
		bo.reset()
		if idle, err = h.drain(ctx, s, msgs); err != nil && !h.requeue(ctx, s.user) {
			return
		}
	}
}

// drain delivers msgs and then batch after batch while the queue has more:
// each ack fetches the next batch in the same round trip. It reports whether
// it left the queue empty; on an error the processing list must be requeued.
func (h *hub) drain(ctx context.Context, s *session, msgs []string) (empty bool, err error) {
	for len(msgs) > 0 {
		if ctx.Err() != nil || !h.deliver(s, msgs) {
			return false, errNotDelivered
		}
		n := len(msgs)
		if msgs, err = h.q.AckPop(ctx, s.user); err != nil {
			// Whether the ack happened is unknown: requeueing may deliver
			// this batch twice, which is better than losing it.
			h.health.fail(err)
			return false, err
		}
		h.stats.Delivered.Add(int64(n))
	}
	return true, nil
}

// deliver writes msgs to every open connection of s and reports whether at
// least one connection took them.
func (h *hub) deliver(s *session, msgs []string) bool {
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
			h.log.Debug("push failed", "fd", c.fd, "user", s.user, "err", err)
			continue
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
