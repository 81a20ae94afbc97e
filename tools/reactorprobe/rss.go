package main

import (
	"bufio"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// snapshot is what the server reports at start and once all connections
// are idle.
type snapshot struct {
	RSSRawKB   int64  `json:"rss_raw_kb"`  // VmRSS as is
	RSSGCKB    int64  `json:"rss_gc_kb"`   // VmRSS after runtime.GC + debug.FreeOSMemory
	HeapInuse  uint64 `json:"heap_inuse"`  // after the GC
	HeapAlloc  uint64 `json:"heap_alloc"`  // live heap after the GC
	StackInuse uint64 `json:"stack_inuse"` // goroutine stacks
	Goroutines int    `json:"goroutines"`
	Threads    int    `json:"threads"`
}

func vmRSSKB() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	var rss int64 = -1
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, "VmRSS:") {
			rss, _ = strconv.ParseInt(strings.Fields(line)[1], 10, 64)
		}
	}
	return rss
}

func threads() int {
	d, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return -1
	}
	return len(d)
}

func snap() snapshot {
	var s snapshot
	s.RSSRawKB = vmRSSKB()
	runtime.GC()
	debug.FreeOSMemory()
	s.RSSGCKB = vmRSSKB()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.HeapInuse, s.HeapAlloc, s.StackInuse = ms.HeapInuse, ms.HeapAlloc, ms.StackInuse
	s.Goroutines = runtime.NumGoroutine()
	s.Threads = threads()
	return s
}

// cpuTime is user+system CPU used by this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
