package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// runClient opens n WebSocket connections (a goroutine each: the client's
// cost is not measured), reads the greeting, holds them idle, collects the
// server's pushes, then runs echo round trips on random connections, prints
// a JSON line and closes everything.
func runClient(addr string, n, pushN, echoN, srcs, conc int) {
	type cconn struct {
		nc  net.Conn
		wmu sync.Mutex
	}
	conns := make([]*cconn, n)
	var (
		mu      sync.Mutex
		pushLat []time.Duration
		echoLat []time.Duration
		pushes  atomic.Int64
		echoes  atomic.Int64
	)
	var greeted sync.WaitGroup
	greeted.Add(n)
	var failed atomic.Int64
	sem := make(chan struct{}, conc)
	t0 := time.Now()
	var dials sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		dials.Add(1)
		go func(i int) {
			defer dials.Done()
			src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%srcs))}
			d := ws.Dialer{NetDial: func(ctx context.Context, network, a string) (net.Conn, error) {
				nd := net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}
				var err error
				for try := 0; try < 50; try++ { // the server may still be starting
					var c net.Conn
					if c, err = nd.DialContext(ctx, network, a); err == nil {
						return c, nil
					}
					time.Sleep(100 * time.Millisecond)
				}
				return nil, err
			}}
			nc, br, _, err := d.Dial(context.Background(), "ws://"+addr+"/ws")
			<-sem
			if err != nil {
				failed.Add(1)
				greeted.Done()
				log.Printf("dial %d: %v", i, err)
				return
			}
			c := &cconn{nc: nc}
			conns[i] = c
			var r io.Reader = nc
			if br != nil {
				r = io.MultiReader(br, nc)
			}
			r = bufio.NewReaderSize(r, 512)
			first := true
			for {
				h, err := ws.ReadHeader(r)
				if err != nil {
					if first {
						failed.Add(1)
						greeted.Done()
					}
					return
				}
				p := make([]byte, h.Length)
				if _, err := io.ReadFull(r, p); err != nil {
					return
				}
				now := time.Now().UnixNano()
				if first {
					first = false
					greeted.Done()
					continue
				}
				s := string(p)
				switch {
				case strings.HasPrefix(s, "p "):
					ts, _ := strconv.ParseInt(s[2:], 10, 64)
					mu.Lock()
					pushLat = append(pushLat, time.Duration(now-ts))
					mu.Unlock()
					pushes.Add(1)
				case strings.HasPrefix(s, "e "):
					ts, _ := strconv.ParseInt(s[2:], 10, 64)
					mu.Lock()
					echoLat = append(echoLat, time.Duration(now-ts))
					mu.Unlock()
					echoes.Add(1)
				}
			}
		}(i)
	}
	greeted.Wait()
	connectSec := time.Since(t0).Seconds()
	log.Printf("%d connected and greeted in %.1fs (%d failed)", n-int(failed.Load()), connectSec, failed.Load())

	wait := func(ctr *atomic.Int64, want int64, d time.Duration) {
		end := time.Now().Add(d)
		for ctr.Load() < want && time.Now().Before(end) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait(&pushes, int64(pushN), 60*time.Second)
	time.Sleep(200 * time.Millisecond)

	// Echo: a masked text frame to random connections, the server echoes it
	// from its read path (pool task for epoll, event loop for gnet).
	perm := rand.Perm(n)
	sent := 0
	for k := 0; k < n && sent < echoN; k++ {
		c := conns[perm[k]]
		if c == nil {
			continue
		}
		msg := []byte("e " + strconv.FormatInt(time.Now().UnixNano(), 10))
		c.wmu.Lock()
		err := wsutil.WriteClientText(c.nc, msg)
		c.wmu.Unlock()
		if err == nil {
			sent++
		}
		time.Sleep(time.Millisecond)
	}
	wait(&echoes, int64(sent), 10*time.Second)

	mu.Lock()
	out := map[string]any{
		"role": "client", "n": n, "failed": failed.Load(), "connect_sec": connectSec,
		"push_got": pushes.Load(), "push_p50_us": pct(pushLat, .5), "push_p99_us": pct(pushLat, .99), "push_max_us": pct(pushLat, 1),
		"echo_sent": sent, "echo_got": echoes.Load(), "echo_p50_us": pct(echoLat, .5), "echo_p99_us": pct(echoLat, .99),
	}
	mu.Unlock()
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	for _, c := range conns {
		if c != nil {
			c.nc.Close()
		}
	}
	os.Exit(0)
}
