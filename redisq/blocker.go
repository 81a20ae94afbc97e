package redisq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Blocker is the Redis connection one consumer blocks on.
//
// It is a dedicated connection whose CLIENT ID is known, so [Blocker.Wake]
// can end a blocked BLMOVE at once with CLIENT UNBLOCK, sent to the same
// server. A consumer then notices at once that its user left or that the
// server shuts down, and an idle user costs one command per long round
// instead of one a second (rounds end before the instance claim may
// expire: 1–2 s; see blockPop). On a cluster the connection goes to the master of
// the user's slot; when the slot moves, BLMOVE fails with MOVED, Pop returns
// [ErrSlotMoved] after asking go-redis to reload the slot map, and the next
// Pop dials the new master. Where CLIENT ID is refused (the embedded
// quick-start Redis) Wake reports false and rounds stay short (1 s).
//
// A Blocker is used by one consumer goroutine; Wake may be called from any.
type Blocker struct {
	q *Queue

	mu      sync.Mutex
	cn      *redis.Conn   // the dedicated connection; nil until first use or after an error
	id      int64         // its CLIENT ID, 0 when cn is nil
	unblock *redis.Client // a command client of cn's server
}

// Blocker returns a Blocker for one consumer. Close it when the consumer ends.
func (q *Queue) Blocker() *Blocker { return &Blocker{q: q} }

// Pop waits for the next message of user, blocking for at most one round,
// and moves it into the processing list. It returns none when the round
// ended or Wake interrupted it. Call it after AckPop found the queue
// empty; the processing list may still hold delivered messages that wait
// for confirmation: the new one goes in as the newest. A burst that
// follows is better taken with AckPop, in batches.
func (b *Blocker) Pop(ctx context.Context, user string) ([]string, error) {
	return b.PopWithin(ctx, user, b.q.wakeRound)
}

// PopWithin is Pop with a round of at most round (whole seconds, at least
// one): for a consumer that holds messages it acknowledges after the next
// pop, and that must not wait a long round for it.
func (b *Blocker) PopWithin(ctx context.Context, user string, round time.Duration) ([]string, error) {
	if err := b.q.guard(); err != nil {
		return nil, err // before dialling: a lapsed claim is no broken connection
	}
	if !b.q.noWake.Load() {
		cn, err := b.conn(ctx, user)
		if err == nil {
			msgs, err := b.q.blockPop(ctx, cn, min(round, b.q.wakeRound), user)
			if err != nil && !errors.Is(err, context.Canceled) {
				// A broken dedicated connection stays broken: dial a new
				// one (with a new CLIENT ID) next time.
				b.reset()
			}
			if isRedirect(err) {
				// The slot moved: let both cluster clients learn where,
				// so that the next Pop blocks on the new master.
				b.q.reloadSlots(ctx)
				err = fmt.Errorf("%w: %v", ErrSlotMoved, err)
			}
			return msgs, err
		}
		if !b.q.noWake.Load() && !errors.Is(err, errIDRefused) {
			return nil, err // Redis unreachable: an outage
		}
	}
	return b.q.blockPop(ctx, b.q.blocking, min(round, b.q.round), user)
}

// errIDRefused: Redis refused CLIENT ID lately; Pop blocks in short rounds.
var errIDRefused = errors.New("redisq: CLIENT ID refused")

// refuseAgainAfter is how long consumers block in short rounds, without
// asking, after Redis refused CLIENT ID (an ACL without it, a password
// being rotated): asking at every round would double an idle user's
// commands.
var refuseAgainAfter = 30 * time.Second

func (b *Blocker) conn(ctx context.Context, user string) (*redis.Conn, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cn != nil {
		return b.cn, nil
	}
	if time.Now().UnixNano() < b.q.refusedID.Load() {
		return nil, errIDRefused
	}
	blocking, cmd, err := b.q.servers(ctx, b.q.Key(user))
	if err != nil {
		return nil, err
	}
	cn := blocking.Conn()
	id, err := cn.ClientID(ctx).Result()
	if err != nil {
		_ = cn.Close()
		var rerr redis.Error
		switch {
		case isUnknownCommand(err):
			// The server has no CLIENT ID (the embedded quick-start Redis):
			// fall back to short rounds for every consumer, for good.
			b.q.noWake.Store(true)
			b.q.noWakeLog.Do(func() {
				b.q.log.Warn("Redis has no CLIENT ID: consumers block in 1 s rounds and notice a user's departure up to a round late", "err", err)
			})
		case errors.As(err, &rerr):
			// Refused (NOPERM, or WRONGPASS while a password rotates): it
			// may pass. Short rounds meanwhile; ask again later.
			now := time.Now()
			b.q.refusedID.Store(now.Add(refuseAgainAfter).UnixNano())
			if last := b.q.refusedLog.Load(); now.UnixNano()-last >= int64(time.Minute) && b.q.refusedLog.CompareAndSwap(last, now.UnixNano()) {
				b.q.log.Warn("Redis refused CLIENT ID: consumers block in 1 s rounds, and ask again in 30 s", "err", err)
			}
			return nil, fmt.Errorf("%w: %w", errIDRefused, err)
		}
		return nil, err
	}
	b.cn, b.id, b.unblock = cn, id, cmd
	return cn, nil
}

// isUnknownCommand reports whether err is the server's answer to a command
// or subcommand it does not have (not a refusal of one it has).
func isUnknownCommand(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	msg := strings.ToLower(rerr.Error())
	return strings.Contains(msg, "unknown command") || strings.Contains(msg, "unknown subcommand")
}

// isRedirect reports whether err is a cluster node's MOVED or ASK answer.
func isRedirect(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	msg := rerr.Error()
	return strings.HasPrefix(msg, "MOVED ") || strings.HasPrefix(msg, "ASK ")
}

// reloadSlots makes the cluster clients, if any, reload the slot map in the
// background (go-redis only does so by itself when a command through the
// cluster client meets a redirect, or once a minute).
func (q *Queue) reloadSlots(ctx context.Context) {
	for _, c := range []redis.UniversalClient{q.blocking, q.cmd} {
		if cc, ok := c.(*redis.ClusterClient); ok {
			cc.ReloadState(ctx)
		}
	}
}

// servers returns the blocking and the command client of the server that
// holds key: the clients themselves, or on a cluster their clients of the
// master of key's slot.
func (q *Queue) servers(ctx context.Context, key string) (blocking, cmd *redis.Client, err error) {
	switch bc := q.blocking.(type) {
	case *redis.Client:
		if cmd, ok := q.cmd.(*redis.Client); ok {
			return bc, cmd, nil
		}
	case *redis.ClusterClient:
		if cc, ok := q.cmd.(*redis.ClusterClient); ok {
			if blocking, err = bc.MasterForKey(ctx, key); err != nil {
				return nil, nil, err
			}
			cmd, err = cc.MasterForKey(ctx, key)
			return blocking, cmd, err
		}
	}
	return nil, nil, fmt.Errorf("redisq: cannot block on a %T with a %T for commands", q.blocking, q.cmd)
}

func (b *Blocker) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cn != nil {
		_ = b.cn.Close()
		b.cn, b.id = nil, 0
	}
}

// Wake ends a BLMOVE this Blocker is blocked in, as if its round had timed
// out. It reports whether a blocked command was ended; false also when the
// consumer was not blocked at that moment, so callers retry until the
// consumer has seen what it was woken for.
func (b *Blocker) Wake(ctx context.Context) (bool, error) {
	b.mu.Lock()
	id, cmd := b.id, b.unblock
	b.mu.Unlock()
	if id == 0 {
		return false, nil
	}
	n, err := cmd.ClientUnblock(ctx, id).Result()
	return n == 1, err
}

// Close releases the dedicated connection.
func (b *Blocker) Close() { b.reset() }
