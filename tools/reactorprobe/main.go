package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// server is one of the connection models under test.
type server interface {
	// start listens on addr and serves until the process exits.
	start(addr string) error
	// push writes frame to the i-th connection registered (0 <= i < n),
	// from the caller's goroutine, i.e. a server-initiated write.
	push(i int, frame []byte) error
}

// live counts connections upgraded, greeted and not yet closed;
// registered counts those ever handed to the idle model (push indexes).
var live, registered atomic.Int64

func greeting(i int64) []byte {
	return serverFrame(ws.OpText, []byte("hello "+strconv.FormatInt(i, 10)))
}

type result struct {
	Mode        string   `json:"mode"`
	N           int      `json:"n"`
	Before      snapshot `json:"before"`
	After       snapshot `json:"after"`
	KBPerConnGC float64  `json:"kb_per_conn_gc"`  // (RSSGC after - before)/N
	KBPerConnRw float64  `json:"kb_per_conn_raw"` // (RSSRaw after - before)/N
	HeapPerConn float64  `json:"heap_inuse_b_per_conn"`
	ConnectSec  float64  `json:"connect_sec"`
	IdleCPUms   float64  `json:"idle_cpu_ms"` // CPU used over the idle window
	IdleSec     float64  `json:"idle_sec"`
	PushN       int      `json:"push_n"`
	PushErrs    int      `json:"push_errs"`
	PushLoopUs  float64  `json:"push_loop_us"` // time to issue all pushes
	Err         string   `json:"err,omitempty"`
}

func main() {
	role := flag.String("role", "server", "server | client")
	mode := flag.String("mode", "epoll", "server model: goroutine | epoll | epoll-keep | gnet | gnet-enroll")
	addr := flag.String("addr", "127.0.0.1:9400", "listen / dial address")
	n := flag.Int("n", 10000, "connections")
	settle := flag.Duration("settle", 5*time.Second, "idle time before the after-measurement")
	pushN := flag.Int("push", 1000, "server-initiated frames to distinct random connections")
	echoN := flag.Int("echo", 100, "client: echo round trips on random connections (reads through the model)")
	workers := flag.Int("workers", 8, "epoll/gnet-enroll: pool size for upgrades and readable sockets")
	srcs := flag.Int("srcs", 4, "client: loopback source addresses 127.0.0.1..127.0.0.<srcs>")
	conc := flag.Int("conc", 64, "client: concurrent dials")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix(*role + " ")

	if *role == "client" {
		runClient(*addr, *n, *pushN, *echoN, *srcs, *conc)
		return
	}

	var s server
	switch *mode {
	case "goroutine":
		s = &goroutineServer{}
	case "epoll":
		s = &epollServer{workers: *workers}
	case "epoll-keep":
		s = &epollServer{workers: *workers, keep: true}
	case "gnet":
		s = &gnetServer{}
	case "gnet-enroll":
		s = &gnetServer{enroll: true, workers: *workers}
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
	res := result{Mode: *mode, N: *n, PushN: *pushN}
	if err := s.start(*addr); err != nil {
		log.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	res.Before = snap()
	log.Printf("baseline %+v", res.Before)
	fmt.Fprintln(os.Stderr, "READY")

	if live.Load() > 0 {
		res.Err = "connections arrived before the baseline: start the client after READY"
	}
	t0 := time.Now()
	deadline := time.Now().Add(90 * time.Second)
	for live.Load() < int64(*n) {
		if time.Now().After(deadline) {
			res.Err = fmt.Sprintf("only %d of %d connected", live.Load(), *n)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	res.ConnectSec = time.Since(t0).Seconds()
	cpu0, w0 := cpuTime(), time.Now()
	time.Sleep(*settle)
	res.IdleCPUms = float64(cpuTime()-cpu0) / 1e6
	res.IdleSec = time.Since(w0).Seconds()
	res.After = snap()
	log.Printf("after %+v", res.After)
	res.KBPerConnGC = float64(res.After.RSSGCKB-res.Before.RSSGCKB) / float64(*n)
	res.KBPerConnRw = float64(res.After.RSSRawKB-res.Before.RSSRawKB) / float64(*n)
	res.HeapPerConn = (float64(res.After.HeapInuse) - float64(res.Before.HeapInuse)) / float64(*n)

	// Server-initiated writes: one small text frame to pushN distinct random
	// connections; the frame carries the send time, the client measures the
	// latency.
	reg := int(registered.Load())
	idx := rand.Perm(reg)
	if *pushN > reg {
		*pushN = reg
	}
	tp := time.Now()
	for k := 0; k < *pushN; k++ {
		f := serverFrame(ws.OpText, []byte("p "+strconv.FormatInt(time.Now().UnixNano(), 10)))
		if err := s.push(idx[k], f); err != nil {
			res.PushErrs++
		}
	}
	res.PushLoopUs = float64(time.Since(tp).Microseconds())

	// The client closes everything when it has its pushes and echoes.
	deadline = time.Now().Add(60 * time.Second)
	for live.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
}

func pct(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return -1
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	k := int(float64(len(d)-1) * p)
	return float64(d[k].Microseconds())
}
