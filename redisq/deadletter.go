package redisq

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// A batch that no connection took goes back to the queue and comes again.
// A message that kills every connection it reaches (a page that crashes on
// it) would cycle forever, so such failures are counted per queue in
// {Q}:failures: the consumer pops one message at a time once the count
// reaches IsolateAfter (so the culprit goes alone), and at DeadAfter the
// message moves to the dead-letter list {Q}:dead, beside the queue in the
// same cluster slot, instead of back to the queue — only ever a message
// that went alone. The count is shared by every instance serving the queue;
// a failure is a delivery that every connection of the user failed to
// write (a connection closed before its turn does not count), or that a
// client closed on before acknowledging it, saying it cannot take it (1003,
// 1007, 1008, 1009: it refused the message); a connection that dropped after the write,
// before its peer acknowledged the bytes, is no failure (a network that
// drops says nothing against the message). A delivered batch
// resets the count (ClearFailures). Requeues for other reasons — shutdown,
// Redis errors — are not failures of the message and are not counted.

const (
	IsolateAfter = 3
	DeadAfter    = 10
)

// failuresKey counts the consecutive failed deliveries of user's queue.
func (q *Queue) failuresKey(user string) string { return "{" + q.Key(user) + "}:failures" }

// DeadKey is the dead-letter list of user's queue, e.g.
// "{user_42_messages}:dead"; the newest message is on the left.
func (q *Queue) DeadKey(user string) string { return "{" + q.Key(user) + "}:dead" }

// requeueFailed counts one failure of the processing list KEYS[1] of queue
// KEYS[2] in KEYS[3] and returns it to the queue, or, at ARGV[1] failures,
// moves it to the dead-letter list KEYS[4] and resets the count, but only
// when it holds one message: a batch is never condemned whole, whatever the
// count (another instance's failures, or a count read late), it goes back
// and the consumer, seeing the count, pops one message at a time. It
// returns {moved, failures, dead (0 or 1)}.
var requeueFailed = redis.NewScript(`
local f = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], 86400)
local dest, dead = KEYS[2], 0
if f >= tonumber(ARGV[1]) and redis.call('LLEN', KEYS[1]) == 1 then
  dest, dead = KEYS[4], 1
  redis.call('DEL', KEYS[3])
end
local n = 0
if dead == 1 then
  while redis.call('LMOVE', KEYS[1], dest, 'RIGHT', 'LEFT') do n = n + 1 end
else
  while redis.call('LMOVE', KEYS[1], dest, 'LEFT', 'RIGHT') do n = n + 1 end
end
return {n, f, dead}
`)

// RequeueFailed is Requeue for a batch that no connection took: it counts
// the failure, and returns how many messages it moved, the count so far,
// and whether they went to the dead-letter list instead of the queue.
func (q *Queue) RequeueFailed(ctx context.Context, user string) (moved, failures int, dead bool, err error) {
	ctx, cancel, err := q.leased(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	defer cancel()
	keys := []string{q.ProcessingKey(user), q.Key(user), q.failuresKey(user), q.DeadKey(user)}
	r, err := requeueFailed.Run(ctx, q.cmd, keys, DeadAfter).Int64Slice()
	if err != nil || len(r) != 3 {
		return 0, 0, false, err
	}
	return int(r[0]), int(r[1]), r[2] == 1, nil
}

// ClearFailures resets the count after a delivery.
func (q *Queue) ClearFailures(ctx context.Context, user string) error {
	return q.cmd.Del(ctx, q.failuresKey(user)).Err()
}
