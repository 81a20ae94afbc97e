package server

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/redpush/redpush/redisq"
)

// presence keeps this instance's presence entries in Redis
// (redisq.Queue.SetPresence) in line with its connections: a user whose
// connections here changed is written at once, by one goroutine, so that a
// user whose last connection closed is offline within a round trip; and
// every heartbeat writes every online user again, which keeps the entries
// from expiring. Writes that fail are tried again after a backoff.
type presence struct {
	h   *hub
	q   *redisq.Queue
	ttl time.Duration // the entries' lifetime: Config.InstanceTTL

	mu sync.Mutex
	// dirty are the users to write: true, their connections here changed
	// since the last write; false, only a heartbeat's refresh is due.
	dirty map[string]bool
	kick  chan struct{}
	// refreshes counts the heartbeats' refreshes; every
	// redisq.ExtendEvery-th also extends the keys' expiry: extend says
	// that the next write of refreshes does.
	refreshes int
	extend    bool
}

func newPresence(h *hub, q *redisq.Queue, ttl time.Duration) *presence {
	return &presence{h: h, q: q, ttl: ttl, dirty: map[string]bool{}, kick: make(chan struct{}, 1)}
}

// changed records that user's connections here changed.
func (p *presence) changed(user string) {
	p.mu.Lock()
	p.dirty[user] = true
	p.mu.Unlock()
	p.poke()
}

// run writes changes until ctx ends, then once more (the shutdown's closes)
// within presenceFlushTimeout.
func (p *presence) run(ctx context.Context) {
	var bo backoff
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), presenceFlushTimeout)
			p.flush(fctx)
			cancel()
			return
		case <-p.kick:
		}
		if !p.flush(ctx) {
			p.poke()     // for what the failed writes left
			bo.wait(ctx) // if ctx ends, the loop writes once more
			continue
		}
		bo.reset()
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

// flush writes every dirty user's connections here, 1,000 a pipeline;
// false if some write failed (those users stay dirty).
func (p *presence) flush(ctx context.Context) bool {
	p.mu.Lock()
	var changed, due []string
	for u, c := range p.dirty {
		if c {
			changed = append(changed, u)
		} else {
			due = append(due, u)
		}
	}
	clear(p.dirty)
	extend := p.extend
	p.extend = false
	p.mu.Unlock()
	failed, err := p.write(ctx, changed, false, false)
	refreshFailed, rerr := p.write(ctx, due, true, extend)
	if err = cmp.Or(err, rerr); err == nil {
		return true
	}
	p.h.log.Debug("writing presence failed; trying again", "users", len(failed)+len(refreshFailed), "err", err)
	p.mu.Lock()
	for _, f := range failed {
		p.dirty[f.User] = true
	}
	for _, f := range refreshFailed {
		if _, ok := p.dirty[f.User]; !ok {
			p.dirty[f.User] = false
		}
	}
	p.extend = p.extend || extend && len(refreshFailed) > 0
	p.mu.Unlock()
	return false
}

// write writes users' entries, 1,000 a pipeline, with their connections
// here as it finds them; a refresh skips users who have none (the write of
// their change removed their entry).
func (p *presence) write(ctx context.Context, users []string, refresh, extend bool) ([]redisq.PresenceUpdate, error) {
	set := p.q.SetPresence
	if refresh {
		set = func(ctx context.Context, ups []redisq.PresenceUpdate, ttl time.Duration) ([]redisq.PresenceUpdate, error) {
			return p.q.RefreshPresence(ctx, ups, ttl, extend)
		}
	}
	var failed []redisq.PresenceUpdate
	var err error
	for len(users) > 0 {
		n := min(len(users), 1000)
		ups := p.h.connCounts(users[:n])
		if refresh {
			ups = slices.DeleteFunc(ups, func(u redisq.PresenceUpdate) bool { return u.Conns == 0 })
		}
		f, ferr := set(ctx, ups, p.ttl)
		failed, err = append(failed, f...), cmp.Or(err, ferr)
		users = users[n:]
	}
	return failed, err
}

// refresh has every online user's entry written again, so that it does not
// expire while this instance lives: called with each heartbeat. The run
// goroutine writes them, as it writes changes, so that a refresh never
// overwrites a newer count with the one it read before.
func (p *presence) refresh() {
	users := p.h.onlineUsers()
	p.mu.Lock()
	p.refreshes++
	p.extend = p.extend || p.refreshes%redisq.ExtendEvery == 1
	for _, u := range users {
		if _, ok := p.dirty[u]; !ok {
			p.dirty[u] = false
		}
	}
	p.mu.Unlock()
	p.poke()
}
