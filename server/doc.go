// Package server is the reactor of redpush: one accept loop, the WebSocket
// upgrade and every frame with gobwas/ws, the connection registry, and the
// plain-HTTP side (demo page, /check, /healthz, /readyz, /metrics, the push
// API) on the same port.
//
// Entry points: [New] builds a Server from a [Config] and the Redis clients;
// [Server.Run] listens on Config.Addr, [Server.Serve] on a given listener;
// both return after an ordered shutdown once their context is cancelled.
//
// Lifecycle of a connection: the accept loop hands each socket to a goroutine
// that reads the request head under the handshake deadline. A request with an
// Upgrade header is upgraded by gobwas/ws; anything else goes to a net/http
// server fed through an in-process listener. Before the upgrade the user id is
// validated (400, or 401 for a token) and the user is admitted (503 past
// Config.MaxUsers online users, or, blocking, when the task pool has no
// room for its consumer; 429 when the user holds
// Config.MaxConnsPerUser connections already); each refusal is counted and
// logged at a bounded rate, and GET
// /check gives the same verdict without upgrading, for the demo page. After
// the upgrade the goroutine sends the greeting ("hello;\n", or
// {"event":"hello"} in json format) and registers the connection under its
// user. On Linux it then hands a plain TCP connection to the reactor
// (reactor_linux.go: an epoll set, reader tasks that feed each readable
// connection's frameReader, an idle sweep) and ends; a TLS connection, or
// any in the portable build (reactor_other.go, or -tags
// redpush_goroutines), is read by the goroutine itself (readLoop). Either
// way endConn ends it.
//
// Shutdown: /readyz turns 503 first; the listener stays open while clients
// are closed with 1001 and consumers requeue, so new clients get a 503 with
// a reason meanwhile; then it closes. With Config.ReusePort the listener
// closes first: the other processes on the port take the new clients.
//
// Concurrency contract:
//   - Each user has at most one consumer per process (run by a task of the
//     pool; at a shutdown, by a goroutine the shutdown waits for). It
//     is the only goroutine that pops the user's queue. Hinted, an idle
//     consumer parks (hub.park): it holds nothing and no task, its state
//     stays in the session, and whoever takes it out of session.parked
//     under the hub's lock (a hint, the user's last connection leaving)
//     schedules the one consumer to go on, so there is still at most one.
//     Hinted consumers are scheduled (sched.go): at most Config.Workers
//     work at once, each holding a slot; one that waits (for a client, for
//     Redis) gives its slot up; the rest wait in line, and a busy consumer
//     yields its slot (with what it holds) while others wait. The consumer
//     hands each popped
//     batch to every open connection of that user (writer.go: each
//     connection's outbox, drained by a writer goroutine of its own that
//     lives while there is something to write), waits until one writer has
//     written it, and pops on; it acks a batch once a connection's peer
//     acknowledged its bytes over TCP (confirm.go), oldest first, with its
//     next pop. It requeues what it holds when every connection failed a
//     batch (counting the failure: redisq's dead-letter rule) or closed
//     before its peer acknowledged it (counted only when a client closed
//     saying it cannot take it: 1003, 1007, 1008, 1009, 4000). A consumer that panics is
//     recovered: requeue, session dropped, connections closed 1011.
//     For an ack connection (?ack=1; ack.go) the client's own
//     acknowledgement replaces TCP's: its state per connection is an
//     acker (acker.go), a batch for it gets ids written into Redis first
//     (redisq.Queue.Wrap), and across instances only instances holding
//     one pop (ackers.go).
//   - Writes to a socket are serialised by the connection's write lock: the
//     writer's batches (all that is queued, in one writev), the
//     consumer's direct writes, and the close frames take it in turn, each
//     under the write deadline. The goroutine reader writes its pongs,
//     replies and pings itself; the reactor queues them in the outbox
//     (conn.post), and stops reading a connection whose outbox holds more
//     than maxAnswers until it drained (watch: paused). A client that stops reading holds up neither its user's
//     other connections nor the consumer; it is closed after
//     Config.WriteTimeout, or when its outbox stays over
//     Config.MaxQueuedBytes. Once a shutdown began, every write is bounded
//     by its deadline too (conn.stop).
//   - Partial client messages grow as their bytes arrive, and all of them
//     together are bounded by Config.MaxPendingBytes (reader.go); a client
//     may send Config.MaxMessageRate frames a second. A connection with a
//     token is closed when the token expires.
//   - A close the server decides (its client's input, silence, slowness, a
//     shutdown) half-closes the socket and lingers (conn.closeLocked,
//     conn.linger): the reader drops what the client still sends until
//     the client's kernel acknowledged every byte written, or the client
//     closed, or -write-timeout passed. Closing at once would let the
//     client's next frame (a pong, after it read on) make the kernel reset
//     the connection and discard what was still on its way to it.
//   - The instance id is claimed in Redis for the life of Serve
//     (redisq.Queue.Claim): a process that loses it stops serving.
//   - A consumer ends at once after its user's last connection closed: the
//     release wakes its blocked BLMOVE with CLIENT UNBLOCK (redisq.Blocker),
//     or, where that is unavailable, within one 1 s round; if it holds
//     batches not yet confirmed, it first waits for the closing
//     connections to end their linger (or for a new connection of the
//     user, which it then serves), acks what their peers acknowledged and
//     requeues the rest. It never writes
//     to a connection of another user: connections are found through the
//     user's own session only, and fds are never reused.
//   - Several instances on one Redis (relay.go): an instance subscribes to
//     the relay channel of each user online there; the ack script publishes
//     every acknowledged batch on it when another instance serves the user
//     (redisq's "{Q}:instances"), and the relay goroutine writes what
//     other instances published to the local connections of that user, in
//     the order they were published: one writer goroutine per user with
//     relayed batches waiting (at most 1,024 batches in all), so a slow
//     client holds up neither the relay nor other users. Subscription
//     changes are made by one goroutine, never under the hub's lock.
//   - Presence (presence.go, presenceapi.go): a change of a user's
//     connections here marks the user; one goroutine writes the marked
//     users' entries (redisq.Queue.SetPresence) at once, and the heartbeat
//     writes every online user's again. GET and POST /api/presence read
//     them (redisq.Queue.ReadPresence).
package server
