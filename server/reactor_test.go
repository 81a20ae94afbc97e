//go:build linux && !redpush_goroutines

package server_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// On Linux a plain connection that says nothing costs no goroutine: the
// reactor holds its socket in an epoll set, and its consumer is parked.
// 300 idle connections add (nearly) no goroutines to the process, and each
// still gets its push. Seen failing with the reactor off: +300.
func TestIdleConnectionsHoldNoGoroutine(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	const users = 300
	before := runtime.NumGoroutine()
	clients := g.dialUsers("idle", users)
	g.awaitConsumers(users, 10*time.Second)
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := g.srv.Snapshot().ConsumerTasks; n != 0 {
			return fmt.Errorf("%d consumer tasks", n)
		}
		if v := metric(t, g, "redpush_reactor_connections"); v != users {
			return fmt.Errorf("the reactor reads %v connections, want %d", v, users)
		}
		// Writers, dialers and handshake goroutines end a moment later.
		if grew := runtime.NumGoroutine() - before; grew > users/10 {
			return fmt.Errorf("%d idle connections added %d goroutines", users, grew)
		}
		return nil
	})
	for u, c := range clients {
		g.push(fmt.Sprint("idle", u), "still there")
		if got := c.MustRead(); got != "still there" {
			t.Fatalf("user %d got %q", u, got)
		}
	}
}
