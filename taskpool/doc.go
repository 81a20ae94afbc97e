// Package taskpool is the Swoole task() model of redpush over a bounded ants
// pool: an open event hands a long-running task (a user's consumer) to the
// pool, like $server->task() hands work to a task worker.
//
// Unlike Swoole's task queue, a full pool refuses at once: [Pool.Submit]
// returns [ErrFull] instead of waiting, so that a caller never hangs. The
// server answers HTTP 503 before the WebSocket upgrade when a blocking
// consumer finds no task; hinted consumers are bounded by slots of the
// server's own (server/sched.go), and the pool only runs their goroutines.
//
// Entry points: [New], [Pool.Submit], [Pool.Resize], [Pool.Shutdown]. Every task receives a
// context that Shutdown cancels; Shutdown then waits, up to its deadline, for
// the tasks to return.
//
// Concurrency: all methods are safe for concurrent use.
package taskpool
