#!/usr/bin/env python3
"""Medians of 3 runs per (mode, users) from run.sh's RESULT lines (stdin)."""
import re, statistics, sys
from collections import defaultdict

runs = defaultdict(list)
other = []
for line in sys.stdin:
    if not line.startswith('RESULT'):
        continue
    kv = dict(re.findall(r'(\w[\w/.]*)=(\[[^\]]*\]|"[^"]*"|\S+)', line))
    if 'mode' not in kv or kv['mode'] == 'sweep':
        other.append(line.strip())
        continue
    runs[(kv['mode'], int(kv['users']))].append(kv)

cols = [('redis_us/msg', 'Redis µs/msg'), ('probe_us/msg', 'probe µs/msg'), ('clients', 'Redis conns'),
        ('p50_ms', 'p50 ms'), ('p99_ms', 'p99 ms'), ('p999_ms', 'p99.9 ms'), ('max_ms', 'max ms'),
        ('pops', 'pops'), ('empty_pops', 'empty pops'), ('hints', 'hints'), ('missing', 'missing'), ('dups', 'dups'),
        ('order_violations', 'order'), ('sweep_hits', 'sweep hits'), ('reconnects', 'reconn'),
        ('recovery_requeued', 'recov rq'), ('recovery_acked', 'recov ack')]

def num(v):
    return float(v.strip('[]').split()[0]) if v.strip('[]') else 0.0

print('| mode | users | n | ' + ' | '.join(c[1] for c in cols) + ' |')
print('|' + ' --- |' * (len(cols) + 3))
for (mode, users), rs in runs.items():
    cells = []
    for k, _ in cols:
        vals = [num(r[k]) for r in rs if k in r]
        m = statistics.median(vals) if vals else 0
        cells.append(f'{m:.2f}' if k.endswith('_ms') or k.endswith('/msg') else f'{m:.0f}')
    print(f'| {mode} | {users} | {len(rs)} | ' + ' | '.join(cells) + ' |')
for l in other:
    print(l)
