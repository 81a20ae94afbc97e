package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// -reuseport: two processes serve one port, each under an id of its own
// (the lowest free slot of host-port); and a restart without downtime —
// start the new process, SIGTERM the old one — loses nothing while
// messages keep coming and clients reconnect.
func TestReusePortHandoverLosesNothing(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	args := []string{"-redis", rds.URL(), "-format", "raw", "-reuseport"}
	base := server.DefaultInstance(addr)
	old := startProcAt(t, addr, nil, args...)
	awaitLog(t, old, "instance="+base+"-0")

	const users = 20
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	got := make([]map[int]bool, users)
	var mu sync.Mutex
	var readers sync.WaitGroup
	dials := make([]int, users)
	for u := range users {
		got[u] = map[int]bool{}
		readers.Go(func() { // a browser tab: reconnects whenever its connection ends
			for ctx.Err() == nil {
				nc, err := testutil.TryDial(addr, fmt.Sprintf("/?user_id=h%d", u))
				if err != nil {
					time.Sleep(20 * time.Millisecond) // a client's retry delay, not a synchronisation
					continue
				}
				mu.Lock()
				dials[u]++
				mu.Unlock()
				c := testutil.NewClient(t, nc)
				go func() { <-ctx.Done(); nc.Close() }()
				for {
					m, _, err := c.Read(time.Minute)
					if err != nil {
						break
					}
					var seq int
					if _, err := fmt.Sscanf(m, "m%d", &seq); err == nil {
						mu.Lock()
						got[u][seq] = true
						mu.Unlock()
					}
				}
			}
		})
	}
	sent := make([]int, users)
	produce := func(n int) {
		for range n {
			u := rand.IntN(users)
			if err := rc.LPush(ctx, fmt.Sprintf("user_h%d_messages", u), fmt.Sprintf("m%d", sent[u])).Err(); err != nil {
				t.Fatal(err)
			}
			sent[u]++
		}
	}
	produce(500)
	next := startProcAt(t, addr, nil, args...)
	awaitLog(t, next, "instance="+base+"-1")
	produce(500)
	if err := old.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	produce(500) // while the old one drains
	if code := old.wait(15 * time.Second); code != 0 {
		t.Fatalf("the old process exited %d", code)
	}
	produce(500) // only the new one serves
	testutil.Eventually(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for u := range users {
			for seq := range sent[u] {
				if !got[u][seq] {
					return fmt.Errorf("user h%d: message %d of %d not received", u, seq, sent[u])
				}
			}
		}
		return nil
	})
	mu.Lock()
	reconnected := 0
	for _, d := range dials {
		if d > 1 {
			reconnected++
		}
	}
	mu.Unlock()
	if reconnected == 0 {
		t.Fatal("no client reconnected: the handover proved nothing")
	}
	// A message leaves the processing list once its client's TCP
	// acknowledged it, a moment after the client read it: wait for that.
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, pattern := range []string{"user_h*_messages", "{user_h*_messages}:processing:*"} {
			if keys, _ := rc.Keys(ctx, pattern).Result(); len(keys) > 0 {
				return fmt.Errorf("left in Redis: %v", keys)
			}
		}
		return nil
	})
	stop()
	readers.Wait()
}

// awaitLog waits until p's log holds want.
func awaitLog(t *testing.T, p *proc, want string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(p.stderr.String(), want) {
			return errors.New("log lacks " + want)
		}
		return nil
	})
}
