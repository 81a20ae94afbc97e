#!/usr/bin/env python3
"""Medians per mode from results.jsonl (written by run.sh)."""
import json, sys, statistics as st
from collections import defaultdict

path = sys.argv[1] if len(sys.argv) > 1 else "results.jsonl"
srv, cli = defaultdict(list), defaultdict(list)
for line in open(path):
    r = json.loads(line)
    (cli if r.get("role") == "client" else srv)[r["mode"]].append(r)

def med(rs, f):
    return st.median(f(r) for r in rs)

print(f"{'mode':12} {'runs':>4} {'KB/conn GC':>10} {'KB/conn raw':>11} {'heap B/conn':>11} {'goroutines':>10} "
      f"{'heap MiB':>8} {'stack MiB':>9} {'thr':>4} {'idle CPU ms/5s':>14} {'connect s':>9}")
for m, rs in srv.items():
    print(f"{m:12} {len(rs):4} {med(rs, lambda r: r['kb_per_conn_gc']):10.2f} {med(rs, lambda r: r['kb_per_conn_raw']):11.2f} "
          f"{med(rs, lambda r: r['heap_inuse_b_per_conn']):11.0f} {med(rs, lambda r: r['after']['goroutines']):10.0f} "
          f"{med(rs, lambda r: r['after']['heap_inuse'])/2**20:8.1f} {med(rs, lambda r: r['after']['stack_inuse'])/2**20:9.1f} "
          f"{med(rs, lambda r: r['after']['threads']):4.0f} {med(rs, lambda r: r['idle_cpu_ms']):14.1f} {med(rs, lambda r: r['connect_sec']):9.2f}")
print()
print(f"{'mode':12} {'push got':>8} {'loop ms':>7} {'p50 us':>7} {'p99 us':>7} {'max us':>7} {'echo got':>8} {'echo p50':>8} {'echo p99':>8}")
for m, rs in cli.items():
    ss = srv[m]
    print(f"{m:12} {med(rs, lambda r: r['push_got']):8.0f} {med(ss, lambda r: r['push_loop_us'])/1000:7.1f} "
          f"{med(rs, lambda r: r['push_p50_us']):7.0f} {med(rs, lambda r: r['push_p99_us']):7.0f} {med(rs, lambda r: r['push_max_us']):7.0f} "
          f"{med(rs, lambda r: r['echo_got']):8.0f} {med(rs, lambda r: r['echo_p50_us']):8.0f} {med(rs, lambda r: r['echo_p99_us']):8.0f}")
