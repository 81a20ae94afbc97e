// Package taskpool is the Swoole task() model of redpush over a bounded ants
// pool: an open event hands a long-running task (a user's consumer) to the
// pool, like $server->task() hands work to a task worker.
//
// Unlike Swoole's task queue, a full pool refuses at once: [Pool.Submit]
// returns [ErrFull] instead of waiting, so the caller can answer HTTP 503
// before the WebSocket upgrade and the accept loop never hangs.
//
// The server queues hinted consumers that find the pool busy in a line of
// its own (server/sched.go), so that a wait never blocks its caller.
//
// Entry points: [New], [Pool.Submit], [Pool.Resize], [Pool.Shutdown]. Every task receives a
// context that Shutdown cancels; Shutdown then waits, up to its deadline, for
// the tasks to return.
//
// Concurrency: all methods are safe for concurrent use.
package taskpool
