package redisq

import (
	"context"
	"errors"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Blocker is the Redis connection one consumer blocks on.
//
// With a plain client (one Redis server, or a Sentinel-managed master) it is
// a dedicated connection whose CLIENT ID is known, so [Blocker.Wake] can end
// a blocked BLMOVE at once with CLIENT UNBLOCK. A consumer then notices at
// once that its user left or that the server shuts down, and an idle user
// costs one command per long round (10 s) instead of one a second. With other
// clients (a cluster) Wake reports false and rounds stay short (1 s).
//
// A Blocker is used by one consumer goroutine; Wake may be called from any.
type Blocker struct {
	q     *Queue
	plain *redis.Client // nil when dedicated connections are unavailable

	mu sync.Mutex
	cn *redis.Conn // the dedicated connection; nil until first use or after an error
	id int64       // its CLIENT ID, 0 when cn is nil
}

// Blocker returns a Blocker for one consumer. Close it when the consumer ends.
func (q *Queue) Blocker() *Blocker {
	b := &Blocker{q: q}
	b.plain, _ = q.blocking.(*redis.Client)
	return b
}

// Pop waits for the next message of user, blocking for at most one round,
// and moves it into the processing list. It returns none when the round
// ended or Wake interrupted it. Call it only with an empty processing list
// (after AckPop found the queue empty): the message it returns must be
// followed by AckPop, Ack or Requeue. A burst that follows is better taken
// with AckPop, in batches.
func (b *Blocker) Pop(ctx context.Context, user string) ([]string, error) {
	if b.plain != nil && !b.q.noWake.Load() {
		cn, err := b.conn(ctx)
		if err == nil {
			msgs, err := b.q.blockPop(ctx, cn, b.q.wakeRound, user)
			if err != nil && !errors.Is(err, context.Canceled) {
				// A broken dedicated connection stays broken: dial a new
				// one (with a new CLIENT ID) next time.
				b.reset()
			}
			return msgs, err
		}
		if !b.q.noWake.Load() {
			return nil, err
		}
	}
	return b.q.blockPop(ctx, b.q.blocking, b.q.round, user)
}

func (b *Blocker) conn(ctx context.Context) (*redis.Conn, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cn != nil {
		return b.cn, nil
	}
	cn := b.plain.Conn()
	id, err := cn.ClientID(ctx).Result()
	if err != nil {
		_ = cn.Close()
		var rerr redis.Error
		if errors.As(err, &rerr) {
			// The server refuses CLIENT ID (the embedded quick-start
			// Redis does): fall back to short rounds for every consumer.
			b.q.noWake.Store(true)
		}
		return nil, err
	}
	b.cn, b.id = cn, id
	return cn, nil
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
	id := b.id
	b.mu.Unlock()
	if id == 0 {
		return false, nil
	}
	n, err := b.q.cmd.ClientUnblock(ctx, id).Result()
	return n == 1, err
}

// Close releases the dedicated connection.
func (b *Blocker) Close() { b.reset() }
