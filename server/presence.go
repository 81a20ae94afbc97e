package server

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/redpush/redpush/redisq"
)

// presence keeps this instance's presence entries in Redis
// (redisq.Queue.SetPresence) in line with its connections: a user whose
// connections here changed is written at once, by one goroutine, so that a
// user whose last connection closed is offline within a round trip; and
// every heartbeat has every online user's entry refreshed, which keeps it
// from expiring. Changes go first: a refresh is written refreshChunk users
// at a time, with the changes that came meanwhile written between. Writes
// that fail are marked again after a backoff, without holding up the
// others.
type presence struct {
	h   *hub
	q   *redisq.Queue
	ttl time.Duration // the entries' lifetime: Config.InstanceTTL

	mu sync.Mutex
	// changed are the users whose connections here changed since their
	// last write; due, those whose refresh is due, true if it also
	// extends the keys' expiry (every redisq.ExtendEvery-th refresh).
	changed   map[string]struct{}
	due       map[string]bool
	pending   map[string]struct{} // failed writes waiting for their retry
	refreshes int
	pace      time.Duration // between two chunks of a refresh
	kick      chan struct{}
	retryIn   time.Duration // the next retry's delay: grows while writes keep failing
	failedAt  time.Time     // when a failure was last logged at Warn
}

func newPresence(h *hub, q *redisq.Queue, ttl time.Duration) *presence {
	return &presence{h: h, q: q, ttl: ttl, changed: map[string]struct{}{}, due: map[string]bool{}, pending: map[string]struct{}{},
		kick: make(chan struct{}, 1)}
}

// userChanged records that user's connections here changed.
func (p *presence) userChanged(user string) {
	p.mu.Lock()
	p.changed[user] = struct{}{}
	p.mu.Unlock()
	p.poke()
}

// refresh has every online user's entry written again, so that it does not
// expire while this instance lives: called with each heartbeat. The run
// goroutine writes them, as it writes changes, so that a refresh never
// overwrites a newer count with the one it read before.
func (p *presence) refresh() {
	users := p.h.onlineUsers()
	p.mu.Lock()
	p.refreshes++
	extend := p.refreshes%redisq.ExtendEvery == 1
	for _, u := range users {
		if _, waiting := p.pending[u]; !waiting { // its retry writes it
			p.due[u] = p.due[u] || extend
		}
	}
	// Spread over half the heartbeat's period: a process's 20,000 entries
	// at once cost Redis ~80 ms in one go, which the pops queued behind
	// them waited (p99 at 100,000 users rose from ~60 to ~150 ms).
	p.pace = p.ttl / 6 / time.Duration(max(1, len(p.due)/refreshChunk))
	p.mu.Unlock()
	p.poke()
}

// run writes until ctx ends, then writes every user it knows of as
// offline (the shutdown closed or is closing their connections; a
// connection still open past the shutdown's timeout is no reason to vouch
// for it once this process is gone) within presenceFlushTimeout.
func (p *presence) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), presenceFlushTimeout)
			defer cancel()
			p.final(fctx)
			return
		case <-p.kick:
		}
		p.flush(ctx)
	}
}

// presenceFlushTimeout bounds the last write at shutdown.
const presenceFlushTimeout = 2 * time.Second

// poke wakes run.
func (p *presence) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// refreshChunk is how many entries a refresh writes in one pipeline.
const refreshChunk = 100

// flush writes the changed users, then one chunk of the due ones, and
// again until none is left, p.pace between two chunks: under a stream of
// changes the refresh still moves on, a chunk a pass.
func (p *presence) flush(ctx context.Context) {
	ok := true
	for ctx.Err() == nil {
		p.mu.Lock()
		changed := slices.Collect(maps.Keys(p.changed))
		clear(p.changed)
		due, extend := take(p.due, refreshChunk)
		more, pace := len(p.due) > 0, p.pace
		p.mu.Unlock()
		if len(changed) == 0 && len(due) == 0 {
			if ok {
				p.mu.Lock()
				p.retryIn = 0
				p.mu.Unlock()
			}
			return
		}
		if len(changed) > 0 {
			ok = p.writeChanged(ctx, changed) && ok
		}
		if len(due) > 0 {
			ok = p.writeDue(ctx, due, extend) && ok
		}
		if more {
			p.sleep(ctx, pace)
		}
	}
}

// sleep waits d, or less if a change comes (the loop writes it first).
func (p *presence) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.kick:
	case <-ctx.Done():
	}
}

// writeChanged writes users' entries with their connections here now.
func (p *presence) writeChanged(ctx context.Context, users []string) bool {
	for len(users) > 0 {
		n := min(len(users), 1000)
		failed, err := p.q.SetPresence(ctx, p.h.connCounts(users[:n]), p.ttl)
		if err != nil {
			p.mu.Lock()
			for _, u := range users[n:] { // not tried: they go with the next pass
				p.changed[u] = struct{}{}
			}
			p.mu.Unlock()
			p.retry(failedOr(failed, users[:n]), err, func(u string) { p.changed[u] = struct{}{} })
			return false
		}
		users = users[n:]
	}
	return true
}

// writeDue refreshes users' entries; users with no connection here left
// are skipped (the write of that change removed their entry), and those
// whose entry is missing are written as changed, with their connections
// as they are then.
func (p *presence) writeDue(ctx context.Context, users []string, extend bool) bool {
	ups := p.h.connCounts(users)
	live := ups[:0]
	for _, u := range ups {
		if u.Conns > 0 {
			live = append(live, u)
		}
	}
	missing, failed, err := p.q.RefreshPresence(ctx, live, p.ttl, extend)
	if len(missing) > 0 {
		p.mu.Lock()
		for _, m := range missing {
			if _, waiting := p.pending[m.User]; !waiting {
				p.changed[m.User] = struct{}{}
			}
		}
		p.mu.Unlock()
	}
	if err != nil {
		p.retry(failedOr(failed, users), err, func(u string) { p.due[u] = p.due[u] || extend })
		return false
	}
	return true
}

// failedOr names the users of failed, or all of users if it names none
// (a failure before any write).
func failedOr(failed []redisq.PresenceUpdate, users []string) []string {
	if len(failed) == 0 {
		return users
	}
	out := make([]string, len(failed))
	for i, f := range failed {
		out[i] = f.User
	}
	return out
}

// presenceRetryMax caps the delay before failed writes are tried again: a
// failure that lasts (an ACL that refuses the presence channel) is tried
// again every 30 s, not every few seconds for every online user.
const presenceRetryMax = 30 * time.Second

// retry marks users again (mark, under p.mu) once the delay passed, one
// timer per user at most (a user already waiting is left to its timer),
// and logs at Warn once a minute: presence that cannot be written leaves
// users offline, or online, to the business code that asks.
func (p *presence) retry(users []string, err error, mark func(user string)) {
	p.mu.Lock()
	waiting := users[:0:0]
	for _, u := range users {
		if _, ok := p.pending[u]; !ok {
			p.pending[u] = struct{}{}
			waiting = append(waiting, u)
		}
	}
	p.retryIn = min(max(2*p.retryIn, backoffMin), presenceRetryMax)
	delay := p.retryIn
	warn := time.Since(p.failedAt) >= time.Minute
	if warn {
		p.failedAt = time.Now()
	}
	p.mu.Unlock()
	if warn {
		p.h.log.Warn("writing presence failed; trying again (if Redis refuses the presence channel, allow it or set -presence-channel off)",
			"users", len(users), "err", err)
	}
	if len(waiting) == 0 {
		return
	}
	time.AfterFunc(delay, func() {
		p.mu.Lock()
		for _, u := range waiting {
			delete(p.pending, u)
			mark(u)
		}
		p.mu.Unlock()
		p.poke()
	})
}

// final writes every user it knows of (changed, due, waiting for a
// retry), and every user with a session, as having no connection here.
func (p *presence) final(ctx context.Context) {
	p.mu.Lock()
	users := slices.AppendSeq(slices.Collect(maps.Keys(p.changed)), maps.Keys(p.pending))
	users = slices.AppendSeq(users, maps.Keys(p.due))
	p.mu.Unlock()
	users = append(users, p.h.onlineUsers()...)
	seen := make(map[string]bool, len(users))
	ups := make([]redisq.PresenceUpdate, 0, len(users))
	for _, u := range users {
		if !seen[u] {
			seen[u] = true
			ups = append(ups, redisq.PresenceUpdate{User: u})
		}
	}
	for len(ups) > 0 && ctx.Err() == nil {
		n := min(len(ups), 1000)
		if _, err := p.q.SetPresence(ctx, ups[:n], p.ttl); err != nil {
			p.h.log.Warn("writing presence at shutdown failed; this instance's users stay online for business code until their entries expire", "err", err)
			return
		}
		ups = ups[n:]
	}
}

// take removes up to n users from due and returns them, and whether one
// of them is to extend the keys' expiry.
func take(due map[string]bool, n int) (users []string, extend bool) {
	users = make([]string, 0, min(n, len(due)))
	for u, e := range due {
		if len(users) == n {
			break
		}
		users = append(users, u)
		extend = extend || e
		delete(due, u)
	}
	return users, extend
}
