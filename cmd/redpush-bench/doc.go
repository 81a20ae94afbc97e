// Command redpush-bench measures any Swoole-compatible push server end to
// end, speaking the original's protocol: clients connect with ?user_id=,
// read the greeting, producers LPUSH into user_{id}_messages, and every
// pushed frame is parsed, matched to what was sent, and timed. With -ack
// the clients use redpush's acknowledged delivery (?ack=1) instead, and
// acknowledge each message as they read it; so does a share of the chaos
// run's users (chaos.go, chaosseat.go), whose accounting is stricter.
//
//	redpush-bench -url ws://127.0.0.1:9502/ -redis redis://127.0.0.1:6379 \
//	    -users 100 -messages 100 -json out.json
//	redpush-bench suite                      # make bench: BENCHMARKS.md
//	redpush-bench compare -a CMD -b CMD …    # two servers side by side
//
// Each payload is "<user>|<seq>|<scheduled-nanos>|<lag-µs>|" padded to
// -payload bytes. The way of a run (run.go): refuse queues that already hold
// messages → preload a -backlog → connect (client.go) → send on a schedule
// (producer.go) → wait for stragglers → wait until Redis's lists settle and
// read what they hold (leftovers.go) → match every message by user and
// sequence number (account.go) → judge (verdict.go). The tracker
// (tracker.go) books each receipt: first receipts, duplicates, order, wrong
// user, and the latency from the scheduled push (corrected for coordinated
// omission). The monitor (monitor.go) samples the server's process tree and
// Redis (procstat.go, redisstat.go) over the interval of the messages.
//
// -spawn (spawn.go) splits the users over child processes that move through
// the phases together; suite.go and compare.go start a fresh redis-server
// and server process per run (runner.go) and run the bench as a child.
//
// It exits 0 when the run passed, 1 when it failed (see -allow), 2 when it
// could not run or the flags were wrong.
package main
