// Package redisq is the per-user message queue of redpush, kept in Redis lists.
//
// Producers LPUSH into a user's queue (user_{id}_messages by default); the
// oldest message sits at the right end. A consumer takes messages with
// [Queue.Pop], which moves them atomically (BLMOVE / LMOVE) from the right of
// the queue into a processing list owned by this instance and this user. After
// the messages were written to the user's sockets the consumer calls
// [Queue.Ack], which drops the processing list; if the write failed it calls
// [Queue.Requeue], which moves them back to the right end of the queue, oldest
// last so that it is read first again. A message is therefore always in exactly
// one of the two lists until it was delivered: a crash between pop and write
// leaves it in the processing list, and [Queue.Recover] returns it at the next
// start of the same instance.
//
// Key layout (see DESIGN.md §3): the processing list of queue Q on instance I
// is "{Q}:processing:I". The hash tag puts both keys in one Redis Cluster slot
// so that the multi-key commands and scripts work on a cluster too.
//
// Blocking: each consumer pops through its own [Blocker], a dedicated
// connection whose CLIENT ID lets [Blocker.Wake] end a blocked BLMOVE at
// once (CLIENT UNBLOCK). Consumers therefore block in long rounds and still
// stop at once when their user leaves; where a dedicated connection is not
// available (cluster clients) they block in 1 s rounds instead.
//
// Entry points: [Dial] builds the two go-redis clients the design asks for
// (one sized for blocking consumers, one small for commands); [New] builds a
// [Queue] over them.
//
// Concurrency: a Queue is safe for concurrent use. The processing list of a
// user is owned by one consumer at a time: callers must not run Pop, Ack or
// Requeue for the same user from two goroutines at once.
package redisq
