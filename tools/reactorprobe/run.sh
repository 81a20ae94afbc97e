#!/usr/bin/env bash
# Runs each server model against the client, one pair at a time, and appends
# one JSON line per process to results.jsonl; summarize.py prints medians.
#   bash run.sh [N] [RUNS] [modes...]
set -euo pipefail
cd "$(dirname "$0")"
N=${1:-10000}
RUNS=${2:-3}
shift 2 || true
MODES=${*:-goroutine epoll gnet gnet-enroll}
go build -o /tmp/reactorprobe .
OUT=${OUT:-results.jsonl}
port=$((9400 + RANDOM % 500))
for run in $(seq 1 "$RUNS"); do
  for mode in $MODES; do
    port=$((port + 1)) # a fresh port per run: no TIME_WAIT clash with the last run
    log=/tmp/reactorprobe-$mode-$run
    timeout 150 /tmp/reactorprobe -role server -mode "$mode" -addr 127.0.0.1:$port -n "$N" >"$log.srv" 2>"$log.srv.err" &
    sp=$!
    for _ in $(seq 100); do grep -q READY "$log.srv.err" && break; sleep 0.1; done
    timeout 140 /tmp/reactorprobe -role client -addr 127.0.0.1:$port -n "$N" >"$log.cli" 2>"$log.cli.err" || echo "client $mode $run failed" >&2
    wait $sp || echo "server $mode $run failed" >&2
    # gnet prints its launch line on stdout: keep only the JSON lines
    { grep '^{' "$log.srv" | sed "s/^{/{\"run\":$run,/"; grep '^{' "$log.cli" | sed "s/^{/{\"run\":$run,\"mode\":\"$mode\",/"; } >>"$OUT"
    tail -1 "$log.srv"; tail -1 "$log.cli"
    sleep 2
  done
done
