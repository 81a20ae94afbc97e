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
// "{Q}:failures" and "{Q}:dead" (failed deliveries and the dead-letter list,
// [Queue.RequeueFailed]). Per instance: "redpush:instance:I" (heartbeat),
// "redpush:claim:I" (one live process per id, [Queue.Claim]) and
// "redpush:lists:I" (the registry of its queues with a processing list,
// [Queue.Register]); "redpush:instances" lists the instances.
//
// Design of consumption without a blocked connection per user (the scale
// work, not built yet): docs/consumption.md measures the options and
// recommends client-tracking hints with plain LMOVE pops.
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
// user's relay channel ([Queue.RelayChannel], [ParseRelay]); a token fences
// it so that a go-redis retry cannot ack a batch nobody delivered. An
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
// Entry points: [Dial] parses a -redis URL ([ParseEndpoint]: one server, a
// Sentinel-managed master, or a Cluster) and builds the two go-redis clients
// the design asks for (one sized for blocking consumers, one small for
// commands); [New] builds a [Queue] over them.
//
// Concurrency: a Queue is safe for concurrent use. The processing list of a
// user is owned by one consumer at a time: callers must not run Pop, Ack or
// Requeue for the same user from two goroutines at once.
package redisq
