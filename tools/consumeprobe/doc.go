// Command consumeprobe measures ways for redpush to consume per-user Redis
// queues without one Redis connection per online user (issue 10 §1). It is
// a throwaway probe, kept for the record of docs/consumption.md.
//
// One run = one process: it empties the user_* keys of the Redis it is
// given (use a redis-server of your own), starts the consumers of -mode,
// spawns itself as the producer (-role producer: pipelined LPUSH to random
// users at -rate, payload "<seq>:<unix nanos>:<padding>"), measures for
// -dur after -warm, then stops the producer, waits for the queues to drain
// and checks that every message was popped exactly once, in order per user.
//
// Modes:
//
//	A   today's gateway: a goroutine and a blocking connection per user
//	    (redisq AckPop batches, Blocker.Pop BLMOVE rounds of -round)
//	B   one RESP3 connection, CLIENT TRACKING on BCAST PREFIX user_ NOLOOP:
//	    invalidate pushes hint; the pops (script) and acks (DEL) go back
//	    pipelined on the same connection
//	Bm  B popping with plain pipelined LMOVE commands (NOLOOP does not
//	    cover writes made by a script on Redis 7.0; see -mode noloop)
//	Br  B with go-redis only (RESP2): CLIENT TRACKING ... REDIRECT to a
//	    PubSub connection SUBSCRIBEd to __redis__:invalidate; pops and acks
//	    pipelined per round on the tracking go-redis Conn
//	Bp  hints as B on a receive-only tracking connection; pops and acks on
//	    a go-redis pool, one task per hinted user (their pops hint too)
//	C   keyspace notifications (CONFIG SET notify-keyspace-events Kl,
//	    PSUBSCRIBE __keyspace@0__:user_*); tasks as Bp
//	D   BLMPOP over all queues on -dconns connections (no processing list)
//	P   producer only (the LPUSH share of Redis CPU)
//	sweep  cost of one LLEN sweep of -users queues (no producer)
//	noloop which writes on a NOLOOP tracking connection still hint it
//
// B, Bp and C also sweep every -sweep (LLEN of every queue, pipelined).
// -kill (B, Bm) kills the tracking connection (CLIENT KILL ID) mid-window.
package main
