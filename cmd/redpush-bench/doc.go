// Command redpush-bench measures any Swoole-compatible push server end to
// end, speaking only the original's protocol: clients connect with
// ?user_id=, read the greeting, producers LPUSH into user_{id}_messages, and
// every pushed frame is parsed, matched to what was sent, and timed from the
// LPUSH to the client's read.
//
//	redpush-bench -url ws://127.0.0.1:9502/ -redis redis://127.0.0.1:6379 \
//	    -users 100 -messages 100 -json out.json
//
// Each payload is "<user>|<seq>|<unix-nanos>|" padded to -payload bytes, so
// the bench detects loss, duplicates, reordering per connection and messages
// that reached the wrong user. It exits 1 when anything was lost, duplicated
// or misdelivered (unless -allow-loss), 2 for bad flags.
package main
