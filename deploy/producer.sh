#!/bin/sh
# The demo producer of docker-compose.yml, as business code would be: it
# only talks to Redis, LPUSHing into user_{id}_messages.
#
# It pushes a tick every EVERY seconds to USERS, the users the demo page
# uses (42: the page's default), and caps each queue at KEEP messages with
# LTRIM (the newest stay; the consumer reads the oldest first), so that a
# stack left running for days holds at most KEEP ticks for a user who is
# away, not days of them.
set -eu
host=${REDIS_HOST:-redis}
port=${REDIS_PORT:-6379}
users=${USERS:-42}
keep=${KEEP:-100}
every=${EVERY:-1}
i=0
while true; do
	for u in $users; do
		key="user_${u}_messages"
		# One transaction: the queue never holds more than KEEP.
		printf 'MULTI\nLPUSH %s "tick %s for user %s at %s"\nLTRIM %s 0 %s\nEXEC\n' \
			"$key" "$i" "$u" "$(date +%T)" "$key" $((keep - 1)) |
			redis-cli -h "$host" -p "$port" >/dev/null
	done
	i=$((i + 1))
	sleep "$every"
done
