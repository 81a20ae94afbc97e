package server

import (
	"context"
	"time"
)

// Acknowledged delivery across instances: while any instance holds an ack
// connection of a user, only instances that hold one pop the user's
// queue; the others write the relayed copies to their plain connections.
// Where the ack connections are is in the presence hash (the
// "<instance>/ack" fields, redisq.Queue.AckElsewhere), read at the user's
// first connection here (redisq.Queue.Start), and again when an instance
// announces a change on the user's relay channel ("!ack").

// deferToAckers reports whether another instance holds ack connections of
// the user, which this one (none here) leaves the popping to: reading it
// again when an instance said its ack connections changed (the relay's
// "!ack", ackersChanged) and, while deferring, every heldRound (an
// instance that died says nothing; its entries expire).
func (c *consumer) deferToAckers(ctx context.Context) bool {
	recheck := c.s.ackRecheck.Swap(false)
	if !recheck && (!c.ackElsewhere || time.Since(c.ackCheckedAt) < heldRound) {
		return c.ackElsewhere
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	elsewhere, err := c.h.q.AckElsewhere(actx, c.s.user)
	cancel()
	c.ackCheckedAt = time.Now()
	if err != nil {
		c.h.log.Debug("reading where the ack connections are failed", "user", c.s.user, "err", err)
		return c.ackElsewhere // looked at again in a round
	}
	switch {
	case c.ackElsewhere && !elsewhere:
		c.more, c.left = true, -1 // what the other instance left is for this one
		c.h.log.Debug("no other instance holds ack connections of the user any more: popping here", "user", c.s.user)
	case !c.ackElsewhere && elsewhere:
		c.h.log.Debug("another instance holds ack connections of the user: popping left to it", "user", c.s.user)
	}
	c.ackElsewhere = elsewhere
	return elsewhere
}

// awaitAckers waits a round, or until the user's connections here change,
// one of them acknowledges, or ack connections changed somewhere: while
// another instance pops for the user, or every ack connection here is at
// its window.
func (c *consumer) awaitAckers(ctx context.Context) {
	c.h.pause()
	defer c.h.unpause()
	t := time.NewTimer(heldRound)
	defer t.Stop()
	select {
	case <-c.s.wake:
	case <-t.C:
	case <-ctx.Done():
	}
}

// ackersChanged tells the consumer of user, if online here, that an
// instance's ack connections of the user came or went (the relay's "!ack").
// A parked consumer goes on at once, to look.
func (h *hub) ackersChanged(user string) {
	h.mu.Lock()
	s := h.users[user]
	var pc *consumer
	if s != nil {
		s.ackRecheck.Store(true)
		pc, s.parked = s.parked, nil
	}
	h.mu.Unlock()
	if s != nil {
		s.notify()
	}
	if pc != nil {
		h.resume(pc)
	}
}

// dueAnnouncement reports whether s has ack connections here and was not
// announced for within the last second (it then counts as announced).
// Called under hub.mu, for a batch another instance popped for s's user.
func (h *hub) dueAnnouncement(s *session) bool {
	if s.ackConns.Load() == 0 || time.Since(s.announced) < time.Second {
		return false
	}
	s.announced = time.Now()
	return true
}

// announceAckers is told of a batch instance origin popped for user, who
// has ack connections here: origin should not pop, and missed the
// announcement (pub/sub is best effort: it was resubscribing, or not yet
// subscribed when it read where the ack connections are). It is announced
// again (at most once a second per user: dueAnnouncement), after a look at
// origin's own ack connections: two instances that both hold some both
// pop, and relay to each other, rightly.
func (h *hub) announceAckers(user, origin string) {
	ctx, cancel := context.WithTimeout(context.Background(), detachedTimeout)
	defer cancel()
	holds, err := h.q.HoldsAcks(ctx, user, origin)
	switch {
	case err == nil && holds:
		h.log.Debug("relayed from an instance that holds ack connections of the user too: not announcing", "user", user, "origin", origin)
		return
	case err == nil:
		err = h.q.AnnounceAckers(ctx, user)
	}
	if err != nil {
		h.log.Debug("announcing ack connections failed", "user", user, "err", err)
	}
}
