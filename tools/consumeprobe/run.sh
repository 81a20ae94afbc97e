#!/bin/sh
# The measurements of docs/consumption.md: 3 rounds, every option run once
# per round (round-robin, so that the ratios come from the same window).
# Usage: tools/consumeprobe/run.sh PORT  (a redis-server of your own:
#   redis-server --port PORT --save '' --appendonly no --maxclients 15000)
set -eu
port=$1
go build -o /tmp/consumeprobe ./tools/consumeprobe
p() { timeout 60 /tmp/consumeprobe -redis 127.0.0.1:$port -warm 3s -dur 12s "$@" | grep '^RESULT'; }
for round in 1 2 3; do
	for users in 1000 10000; do
		for mode in A B Bm Br Bp C D P; do
			p -mode $mode -users $users -rate 2000
		done
		p -mode A -users $users -rate 2000 -round 1s | sed 's/mode=A/mode=A1s/'
	done
done
for i in 1 2 3; do
	p -mode Bm -users 1000 -rate 2000 -kill -killgap 2s -resweep=false | sed 's/mode=Bm/mode=Bm-kill-gap2s-noresweep/'
	p -mode Bm -users 1000 -rate 2000 -kill | sed 's/mode=Bm/mode=Bm-kill/'
	p -mode B -users 1000 -rate 2000 -kill | sed 's/mode=B /mode=B-kill /'
done
for users in 10000 100000; do
	timeout 60 /tmp/consumeprobe -redis 127.0.0.1:$port -mode sweep -users $users -repeat 5 | grep '^RESULT'
done
timeout 60 /tmp/consumeprobe -redis 127.0.0.1:$port -mode noloop | grep '^RESULT'
