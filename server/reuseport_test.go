package server_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

// Processes that share a port with ReusePort and no Instance each claim
// the lowest free slot of the default id; the kernel spreads connections
// over both, and each serves its own; a slot given up is taken again.
func TestReusePortSlots(t *testing.T) {
	rds := testutil.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	base := server.DefaultInstance(addr)
	type proc struct {
		srv  *server.Server
		stop context.CancelFunc
		done chan error
	}
	start := func() *proc {
		clients, err := redisq.Dial(context.Background(), rds.URL(), 64) // a blocking connection per user
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = clients.Close() })
		cfg := server.Config{Addr: addr, ReusePort: true, Format: server.FormatRaw, Logger: slog.New(slog.DiscardHandler)}
		srv, err := server.New(cfg, clients)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := server.Listen(cfg)
		if err != nil {
			t.Fatalf("listen on a port another process holds with SO_REUSEPORT: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		p := &proc{srv: srv, stop: cancel, done: make(chan error, 1)}
		go func() { p.done <- srv.Serve(ctx, ln) }()
		t.Cleanup(func() { cancel(); <-p.done })
		return p
	}
	claimed := func(slot int) string {
		id := fmt.Sprintf("%s-%d", base, slot)
		testutil.Eventually(t, 10*time.Second, func() error {
			if n, _ := rds.Client().Exists(context.Background(), "redpush:claim:"+id).Result(); n != 1 {
				return fmt.Errorf("%s is not claimed", id)
			}
			return nil
		})
		return id
	}
	a := start()
	claimed(0)
	b := start()
	claimed(1)
	var clients []*testutil.Client
	for u := range 40 {
		c := testutil.Dial(t, addr, fmt.Sprint("r", u))
		if got := c.MustRead(); got != "hello;\n" {
			t.Fatalf("greeting %q", got)
		}
		clients = append(clients, c)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		na, nb := a.srv.Snapshot().Conns, b.srv.Snapshot().Conns
		if na+nb != 40 || na == 0 || nb == 0 {
			return fmt.Errorf("connections %d and %d, want 40 spread over both", na, nb)
		}
		return nil
	})
	for u, c := range clients {
		if err := rds.Client().LPush(context.Background(), fmt.Sprintf("user_r%d_messages", u), "m").Err(); err != nil {
			t.Fatal(err)
		}
		if got := c.MustRead(); got != "m" {
			t.Fatalf("user r%d got %q", u, got)
		}
	}
	// Slot 0 given up (a clean stop releases its claim): the next
	// process takes it again.
	a.stop()
	if err := <-a.done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	a.done <- nil
	start()
	claimed(0)
}
