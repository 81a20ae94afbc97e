package main

import (
	"os"
	"strconv"
	"strings"
)

// procSample is what /proc says about a server: one process and all its
// descendants (a Swoole server is a master, a manager, workers and task
// workers; the task worker does most of the work).
type procSample struct {
	rss   int64   // bytes, summed over the processes (shared pages count once per process)
	cpu   float64 // user+system seconds, including children that exited and were reaped
	procs int     // processes counted
	top   int64   // the RSS of the largest process, bytes
}

var (
	clockTicks = 100.0 // USER_HZ; 100 on every Linux this runs on
	pageSize   = int64(os.Getpagesize())
)

// procStat is one process's line of /proc/PID/stat.
type procStat struct {
	ppid int
	cpu  float64
	rss  int64
}

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	s := string(b)
	// Fields after the parenthesised command name, which may hold spaces:
	// f[0] is the state (field 3 of proc(5)), so field n is f[n-3].
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 22 {
		return procStat{}, false
	}
	num := func(n int) float64 { v, _ := strconv.ParseFloat(f[n-3], 64); return v }
	ppid, _ := strconv.Atoi(f[4-3])
	return procStat{
		ppid: ppid,
		// utime, stime, cutime, cstime: a child's CPU moves to its parent's
		// cutime when it is reaped, so the sum survives workers exiting.
		cpu: (num(14) + num(15) + num(16) + num(17)) / clockTicks,
		rss: int64(num(24)) * pageSize,
	}, true
}

// sampleTree sums the process pid and its descendants.
func sampleTree(pid int) (procSample, bool) {
	root, ok := readStat(pid)
	if !ok {
		return procSample{}, false
	}
	children := map[int][]int{}
	stats := map[int]procStat{pid: root}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			p, err := strconv.Atoi(e.Name())
			if err != nil || p == pid {
				continue
			}
			if st, ok := readStat(p); ok {
				stats[p] = st
				children[st.ppid] = append(children[st.ppid], p)
			}
		}
	}
	var s procSample
	for todo := []int{pid}; len(todo) > 0; {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		st := stats[p]
		s.rss += st.rss
		s.cpu += st.cpu
		s.procs++
		s.top = max(s.top, st.rss)
		todo = append(todo, children[p]...)
	}
	return s, true
}

// sampleProcs sums a list of unrelated processes (Redis servers) on their own.
func sampleProcs(pids []int) (procSample, bool) {
	var s procSample
	for _, pid := range pids {
		st, ok := readStat(pid)
		if !ok {
			return s, false
		}
		s.rss += st.rss
		s.cpu += st.cpu
		s.procs++
	}
	return s, len(pids) > 0
}
