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
// validated (400) and the user's consumer is admitted to the task pool (503
// when full); each refusal is counted and logged at a bounded rate, and GET
// /check gives the same verdict without upgrading, for the demo page. After
// the upgrade the goroutine sends the greeting ("hello;\n", or
// {"event":"hello"} in json format), registers the connection under its
// user, and becomes the connection's reader.
//
// Shutdown: /readyz turns 503 first; the listener stays open while clients
// are closed with 1001 and consumers requeue, so new clients get a 503 with
// a reason meanwhile; then it closes.
//
// Concurrency contract:
//   - Each user has at most one consumer per process (a task of the pool). It
//     is the only goroutine that pops the user's queue, and it writes each
//     popped batch to every open connection of that user, then acks it, or
//     requeues it when no connection took it.
//   - Writes to a socket are serialised by the connection's write lock: the
//     consumer's pushes and the reader's pongs, pings and close frames take
//     it in turn, each under the write deadline, so a client that stops
//     reading is disconnected after Config.WriteTimeout and stalls only its
//     own user's consumer.
//   - A consumer ends at once after its user's last connection closed: the
//     release wakes its blocked BLMOVE with CLIENT UNBLOCK (redisq.Blocker),
//     or, where that is unavailable, within one 1 s round. It never writes
//     to a connection of another user: connections are found through the
//     user's own session only, and fds are never reused.
//   - Several instances on one Redis (relay.go): an instance subscribes to
//     the relay channel of each user online there; the ack script publishes
//     every acknowledged batch on it, and the relay goroutine writes what
//     other instances published to the local connections of that user, each
//     batch on a goroutine of its own (at most 1,024 at once), so a slow
//     client holds up neither the relay nor the consumer. Subscription
//     changes are made by one goroutine, never under the hub's lock.
package server
