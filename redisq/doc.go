// Package redisq is the per-user message queue of redpush, kept in Redis lists.
//
// Producers LPUSH into a user's queue (user_{id}_messages by default); the
// oldest message sits at the right end. A consumer takes messages with
// [Queue.AckPop] (a batch, LMOVE in a script) or [Blocker.Pop] (BLMOVE when
// the queue is empty), which move them atomically from the right of the queue
// into a processing list owned by this instance and this user. Once the
// delivery of the oldest messages there is confirmed (the server counts a
// batch delivered when the client's TCP acknowledged it), the consumer's
// next [Queue.AckPopToken] (or [Queue.AckOldest]) drops that many from the
// processing list's old end, while newer batches may still wait there for
// their confirmation; if a delivery failed it calls [Queue.Requeue], which
// moves everything held back to the right end of the queue, oldest last so
// that it is read first again. A message is therefore always in exactly
// one of the two lists until it was delivered: a crash between pop and write
// leaves it in the processing list, and [Queue.Recover] returns it at the next
// start of the same instance.
//
// Key layout: the processing list of queue Q on instance I is
// "{Q}:processing:I". The hash tag puts both keys in one Redis Cluster slot
// so that the multi-key commands and scripts work on a cluster too; so do
// "{Q}:ack:I" (the ack fence), "{Q}:relay" (the relay channel),
// "{Q}:instances" (the instances serving the user: the relay's listeners),
// "{Q}:failures" and "{Q}:dead" (failed deliveries and the dead-letter list,
// [Queue.RequeueFailed]), "{Q}:presence" and "{Q}:connections" (presence,
// [Queue.SetPresence]; the latter's "<instance>/ack" fields say where the
// user's ack connections are, [Queue.AckElsewhere]) and "{Q}:ackseq" (the
// ids of acknowledged delivery, [Queue.Wrap]: a message popped for an ack
// connection is rewritten in the processing list as an envelope that
// carries its id, and keeps it wherever it goes; [ParseEnvelope]). Per instance: "redpush:instance:I" (heartbeat),
// "redpush:claim:I" (one live process per id, [Queue.Claim]) and
// "redpush:lists:I" (the registry of its queues with a processing list,
// [Queue.Register]); "redpush:instances" lists the instances.
//
// # Consuming: hinted (the default) or blocking
//
// A consumer must learn that its user's queue is no longer empty. Two
// ways, both over the same lists, scripts and processing lists, so that
// instances of either kind share one Redis (a rolling upgrade mixes them):
//
// Hinted ([Queue.StartHints], [Hints]): one RESP3 connection per Redis
// master and process, with CLIENT TRACKING on BCAST PREFIX <the queue
// keys' prefix> NOLOOP. Redis then pushes an "invalidate" naming every
// queue key another connection writes (a producer's LPUSH, a requeue), and
// keeps no per-key table for it (BCAST). The server hands each hint to the
// consumer of that user, if it is online here; a consumer waits on its
// hint instead of a Redis connection, so the Redis connections of a
// process no longer grow with its online users (maxclients no longer
// bounds them). The pops and acks travel on the same connection,
// pipelined across consumers. A consumer woken by a hint to a queue it
// found empty pops with plain commands ([Hints.Pop]): the ackPop script
// with a count of 0 when there is something to acknowledge (it writes no
// queue key, so it raises no hint), one LMOVE, then LLEN. Plain, because
// NOLOOP spares a connection the hints of its own plain writes but not
// those of its scripts (measured on Redis 7.0, docs/consumption.md): a
// trickled message popped by script would hint back, and cost a second,
// empty pop. Otherwise (LLEN said more are waiting, or the length is
// unknown: a consumer's first pop, after a requeue) the ackPop script pops
// up to a batch in one command ([Hints.PopBatch]); its hint back costs a
// pop only if the queue is then empty. An ack with nothing to pop
// ([Hints.Ack]) waits up to 2 ms to share a write with other calls. At most
// 16 pops wait for their replies at once: under load consumers wait their
// turn and take bigger batches (unbounded, the fastest rate fell to half
// the blocking consumers').
//
// Hints are fire-and-forget. The ones sent while no hint connection
// listens (it broke, Redis restarted, a failover) are lost, so the caller
// sweeps: at once after every (re)connect, and every few seconds, it reads
// the length of every online user's queue ([Queue.Lengths], pipelined) and
// hints the ones that hold messages. A call on a connection that breaks
// has an unknown outcome: its consumer returns everything it holds to the
// queue (the processing list is the truth). Before a new connection
// carries anything, the old one is fenced: a command still unread in its
// socket buffer (bytes on their way through a partition) could otherwise
// run later, after its consumer requeued and popped anew. If the server is
// the one it reached (same run_id), it is killed there (CLIENT KILL ID);
// if the server restarted, the connection died with it; if it is another
// (a Sentinel failover), the old one reaches the old master, which refuses
// writes once it is a replica (a split brain, where it still takes writes,
// is the one case not covered). A pipe replaced for a new go-redis client
// of the same address is killed the same way before the new one is used. Hinted consumption needs CLIENT KILL and INFO: a server that
// refuses them makes StartHints fail with [ErrNoHints]. Calls on the hint
// connection are never retried, so the ack fence's token only matters for
// blocking consumers; the DIVERGED guard holds for both. On a cluster each
// master has its own hint connection and announces only its own keys; a
// MOVED reply reloads the slot map, and the consumer pops again on the new
// master's connection. A server that refuses any of this (no HELLO 3 or
// CLIENT TRACKING, CLIENT KILL or INFO: Redis < 6, an ACL such as
// -@dangerous, the embedded quick-start Redis) makes StartHints fail with
// [ErrNoHints]; the server then consumes blocking. Refused after start (an
// ACL changed), the connection retries and warns once a minute; its users'
// messages wait meanwhile.
//
// go-redis cannot hold that connection (it reads a push only when it reads
// a reply on the same connection); internal/resp3 reads it. rueidis, a
// Redis client that tracks keys for its client-side cache, was not used:
// it would be a second Redis client stack (dialing, TLS, Sentinel,
// Cluster, credentials) beside go-redis for one connection per master,
// its tracking is tied to its cache, and its multiplexed connections (each
// tracking) would each receive every hint and hint one another's pops.
//
// Blocking: each consumer pops through its own [Blocker], a dedicated
// connection whose CLIENT ID lets [Blocker.Wake] end a blocked BLMOVE at
// once (CLIENT UNBLOCK). Consumers therefore stop at once when their user
// leaves; on a cluster the connection goes to the master of the user's
// slot. Where CLIENT ID is unavailable (the embedded quick-start Redis) or
// refused (an ACL) they block in 1 s rounds instead. A round never outlives
// the instance's claim (below): 1–2 s.
//
// Several instances: the ack script publishes each acknowledged batch on the
// user's relay channel ([Queue.RelayChannel], [ParseRelay]) when another
// instance serves the user ("{Q}:instances", kept with the registry); a token fences
// it so that a go-redis retry cannot ack a batch nobody delivered. On a
// Cluster with SPUBLISH the relay is sharded pub/sub, subscribed on one
// connection per master, one channel per SSUBSCRIBE ([Relays]). An
// instance that died for good is found by its expired heartbeat
// ([Queue.Heartbeat], [Queue.ReclaimDead]). Two live processes never share
// an instance id: each claims it at start and renews the claim every second
// ([Queue.Claim], [Claim.Renew]; with -reuseport the lowest free slot of a
// base id, [Queue.ClaimSlot]). While the last renewal is too old for the
// claim to be sure, every command that changes a processing list fails
// with [ErrClaimLapsed] without being sent, and each carries a deadline
// before the claim may expire: a process that stalled cannot touch lists
// that a successor with the same id may own. Housekeeping reads the
// registry ([Queue.ReclaimDead]), not the keyspace; [Queue.ReclaimDeadScan]
// is the rare safety net.
//
// Presence (presence.go): per user, a sorted set of the instances that
// vouch, until a time, that the user has a connection there, and a hash of
// their connection counts; one Lua script sets an instance's entry, removes
// entries found expired and publishes the join and leave events
// ([Queue.SetPresence], [Queue.ReadPresence], [Queue.PresenceKey]).
//
// Entry points: [Dial] parses a -redis URL ([ParseEndpoint]: one server, a
// Sentinel-managed master, or a Cluster) and builds the two go-redis clients
// the design asks for (one sized for blocking consumers, one small for
// commands); [New] builds a [Queue] over them.
//
// Concurrency: a Queue and Hints are safe for concurrent use. The processing list of a
// user is owned by one consumer at a time: callers must not run Pop, Ack or
// Requeue for the same user from two goroutines at once.
package redisq
