package redisq

import (
	"cmp"
	"context"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Housekeeping that does not grow with the keyspace. Each instance records
// in Redis the queues it may hold a processing list of, so that the
// instances reclaiming a dead one's messages read a short list instead of
// SCANning every key of a shared Redis every few seconds:
//
//	redpush:instances        SET of instance ids that may hold processing
//	                         lists (each live instance adds itself with
//	                         every heartbeat)
//	redpush:lists:<instance> SET of the queue keys whose processing list of
//	                         that instance may be non-empty
//
// A consumer registers its queue before its first pop and unregisters it
// once its processing list is empty and it is done (Register, Unregister).
// An instance taken for dead (its heartbeat lapsed while it lived, during
// an outage) finds itself dropped from redpush:instances at its next
// heartbeat and registers every queue it serves again (RegisterAll); a
// list it popped into in between, if it then died for good, is left to
// the SCAN.
// An entry whose list is in fact empty costs one idle requeue; a list with
// no entry would be reclaimed only by the slow SCAN that remains as a safety
// net (ReclaimDeadScan): for lists of versions without the registry, during
// a rolling upgrade.

// The same records say which users a dead instance had online: its
// presence entries (presence.go) are removed with its relay entries.
//
// They also say where a user is online, for the relay: the ack
// script publishes a batch only when another instance serves the user.
//
//	{<queue>}:instances      SET of the instances that serve the queue's
//	                         user (same slot as the queue)
//
// An instance adds itself with Register (and RegisterAll) and removes
// itself with Unregister; a dead instance is removed once it is found dead
// (dropRegistry). A stale entry costs a publication nobody reads. A
// missing one costs the relayed copies of that while, which are best
// effort: the server registers every online user again every minute
// (RegisterAll), so an entry Redis lost (a restart from an older snapshot,
// a failover to a replica that lagged) comes back within that.

const instancesKey = "redpush:instances"

func listsKey(instance string) string { return "redpush:lists:" + instance }

// Register records that this instance may hold a processing list of user's
// queue. Call it before the first pop of a consumer.
func (q *Queue) Register(ctx context.Context, user string) error {
	return q.RegisterAll(ctx, []string{user})
}

// RegisterAll is Register for many users at once.
func (q *Queue) RegisterAll(ctx context.Context, users []string) error {
	for len(users) > 0 {
		n := min(len(users), 1000)
		keys := make([]any, n)
		for i, u := range users[:n] {
			keys[i] = q.Key(u)
		}
		_, err := q.cmd.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.SAdd(ctx, listsKey(q.instance), keys...)
			for _, u := range users[:n] {
				p.SAdd(ctx, q.instancesKey(u), q.instance)
			}
			return nil
		})
		if err != nil {
			return err
		}
		users = users[n:]
	}
	return nil
}

// Unregister drops the records, once the processing list is empty and the
// consumer is done with it: the relay set's entry first, then the
// registry's, which is how a dead instance's relay entries are found
// (dropRegistry). In one pipeline on a cluster (two nodes) the second could
// succeed alone and leave a relay entry nothing finds.
func (q *Queue) Unregister(ctx context.Context, user string) error {
	if err := q.cmd.SRem(ctx, q.instancesKey(user), q.instance).Err(); err != nil {
		return err
	}
	return q.cmd.SRem(ctx, listsKey(q.instance), q.Key(user)).Err()
}

// instancesKey is the set of instances serving user, e.g.
// "{user_42_messages}:instances".
func (q *Queue) instancesKey(user string) string { return instancesOf(q.Key(user)) }

// instancesOf is the set of instances serving the user of queue.
func instancesOf(queue string) string { return "{" + queue + "}:instances" }

// reclaimRegistered returns the processing lists that instance registered
// to their queues. The entries stay: the caller drops the registry once it
// is sure the instance is gone.
func (q *Queue) reclaimRegistered(ctx context.Context, instance string) (lists, msgs int, err error) {
	iter := q.cmd.SScan(ctx, listsKey(instance), 0, "", 1000).Iterator()
	for iter.Next(ctx) {
		queue := iter.Val()
		n, err := requeueAll.Run(ctx, q.cmd, []string{"{" + queue + "}:processing:" + instance, queue}).Int()
		if err != nil {
			return lists, msgs, err
		}
		if n > 0 {
			lists++
			msgs += n
		}
	}
	return lists, msgs, iter.Err()
}

// dropRegistry forgets instance, unless its heartbeat is back: its lists
// were returned, and if it lives after all it lists itself again with its
// next heartbeat and registers its queues again.
//
// It also removes instance from the relay's set of every queue it
// registered ({Q}:instances), here and not while its lists are returned: an
// instance whose heartbeat comes back during that walk must stay in them.
// One whose heartbeat comes back after the check above is dropped from
// redpush:instances below, and its next heartbeat registers everything
// again (relisted).
func (q *Queue) dropRegistry(ctx context.Context, instance string) error {
	if n, err := q.cmd.Exists(ctx, heartbeatKey(instance)).Result(); err != nil || n == 1 {
		return err
	}
	err := q.forEachRegistered(ctx, instance, func(queues []string) error {
		// A walk over 100,000 users takes a while: an instance that
		// restarts meanwhile keeps what it registered since.
		if n, err := q.cmd.Exists(ctx, heartbeatKey(instance)).Result(); err != nil || n == 1 {
			return cmp.Or(err, errCameBack)
		}
		return q.forgetListener(ctx, instance, queues)
	})
	if errors.Is(err, errCameBack) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := q.cmd.Del(ctx, listsKey(instance)).Err(); err != nil {
		return err
	}
	return q.cmd.SRem(ctx, instancesKey, instance).Err()
}

// errCameBack stops dropRegistry: the instance's heartbeat is back.
var errCameBack = errors.New("redisq: the instance is alive again")

// forEachRegistered calls fn with the queues instance registered, up to
// 1,000 at a time.
func (q *Queue) forEachRegistered(ctx context.Context, instance string, fn func(queues []string) error) error {
	iter := q.cmd.SScan(ctx, listsKey(instance), 0, "", 1000).Iterator()
	var queues []string
	for iter.Next(ctx) {
		queues = append(queues, iter.Val())
		if len(queues) == 1000 {
			if err := fn(queues); err != nil {
				return err
			}
			queues = queues[:0]
		}
	}
	if err := iter.Err(); err != nil || len(queues) == 0 {
		return err
	}
	return fn(queues)
}

// forgetListener removes instance from the relay sets of queues, and its
// presence entries of their users (forgetPresence).
func (q *Queue) forgetListener(ctx context.Context, instance string, queues []string) error {
	if len(queues) == 0 {
		return nil
	}
	_, err := q.cmd.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, queue := range queues {
			p.SRem(ctx, instancesOf(queue), instance)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Entries of the dead instance vouch for about a sixth of a lifetime
	// more at most (its last refresh came within that of its last
	// heartbeat, a lifetime ago; a change written just before it died, up
	// to a third); one of an instance restarted with the same id since its
	// heartbeat was checked vouches for half a lifetime more at least
	// (refreshed every third, spread over a sixth). An entry between the
	// two is left to expire, with no offline event.
	return q.forgetPresence(ctx, instance, queues, q.presenceTTL/3)
}

// forgetPresence removes instance's presence entries of the users of
// queues, which publishes "offline" for a user it was the last to hold: an
// instance found dead (forget: only entries that vouch for less than that
// more), or this one starting again after a crash (forget 0: all).
func (q *Queue) forgetPresence(ctx context.Context, instance string, queues []string, forget time.Duration) error {
	gone := make([]PresenceUpdate, 0, len(queues))
	for _, queue := range queues {
		if u, ok := q.userOf(queue); ok {
			gone = append(gone, PresenceUpdate{User: u})
		}
	}
	_, err := q.setPresenceOf(ctx, instance, gone, q.presenceTTL, forget)
	return err
}

// ReclaimDead returns to their queues the processing lists of instances
// whose heartbeat expired: an instance that died and never came back. Its
// cost grows with the number of instances and of their registered lists,
// not with the keyspace. A live instance whose heartbeat was lost (Redis
// restarted without persistence) may see messages it holds delivered
// twice, never lost: its consumers' next acknowledgement finds their
// processing lists changed and requeues instead (ErrDiverged).
func (q *Queue) ReclaimDead(ctx context.Context) (lists, msgs int, err error) {
	ids, err := q.cmd.SMembers(ctx, instancesKey).Result()
	if err != nil {
		return 0, 0, err
	}
	others := ids[:0]
	for _, id := range ids {
		if id != q.instance && ValidID(id) {
			others = append(others, id)
		}
	}
	if len(others) == 0 {
		return 0, 0, nil
	}
	alive := make([]*redis.IntCmd, len(others))
	_, err = q.cmd.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range others {
			alive[i] = p.Exists(ctx, heartbeatKey(id))
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	for i, id := range others {
		if alive[i].Val() == 1 {
			continue
		}
		l, m, err := q.reclaimRegistered(ctx, id)
		lists, msgs = lists+l, msgs+m
		if err != nil {
			return lists, msgs, err
		}
		if err := q.dropRegistry(ctx, id); err != nil {
			return lists, msgs, err
		}
	}
	return lists, msgs, nil
}

// Start readies user's queue for a new consumer of this instance in one
// round trip: it registers the queue (Register), returns to the queue what
// an earlier consumer left in the processing list (Requeue: it could not
// when Redis was down), reads the queue's failed deliveries (Failures),
// and whether another instance holds ack connections of the user
// (AckElsewhere). Each part may run again: a Start that failed is simply
// called again. Commands one after another would cost a connecting user
// a round trip each; a connect storm is made of them.
func (q *Queue) Start(ctx context.Context, user string) (Started, error) {
	ctx, cancel, err := q.leased(ctx)
	if err != nil {
		return Started{}, err
	}
	defer cancel()
	now, err := q.clock.now(ctx, q.cmd)
	if err != nil {
		return Started{}, err
	}
	var moved *redis.Cmd
	var count *redis.StringCmd
	var presence presenceRead
	cmds, err := q.cmd.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, listsKey(q.instance), q.Key(user))
		p.SAdd(ctx, q.instancesKey(user), q.instance)
		// Eval, not EvalSha: a pipeline cannot fall back on NOSCRIPT.
		moved = requeueAll.Eval(ctx, p, []string{q.ProcessingKey(user), q.Key(user)})
		count = p.Get(ctx, q.failuresKey(user))
		presence = q.readPresence(ctx, p, user, now)
		return nil
	})
	mistyped := false
	for _, c := range cmds {
		err := c.Err()
		if c == count && err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE") {
			mistyped = true
			continue
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			return Started{}, err
		}
	}
	var st Started
	if st.Requeued, err = moved.Int(); err != nil {
		return Started{}, err
	}
	st.AckElsewhere = presence.acksElsewhere(q.instance)
	if mistyped {
		// The failures key is redpush's own; as another type it would
		// fail every count after it (the dead-letter rule off for good).
		q.log.Warn("the failures key of a queue held another type; deleted", "key", q.failuresKey(user))
		if err := q.cmd.Del(ctx, q.failuresKey(user)).Err(); err != nil {
			return Started{}, err
		}
		return st, nil
	}
	st.Failures, _ = count.Int() // none yet (nil), or not a number: start from 0
	return st, nil
}

// Started is what Start found.
type Started struct {
	Requeued     int  // messages returned from the processing list
	Failures     int  // the queue's failed deliveries in a row
	AckElsewhere bool // another instance holds ack connections of the user
}
