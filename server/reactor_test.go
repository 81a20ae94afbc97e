//go:build linux && !redpush_goroutines

package server_test

import (
	"bytes"
	"fmt"
	"runtime"
	"runtime/pprof"
	"strings"
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

func goroutinesIn(fn string) int {
	var b bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	return strings.Count(b.String(), fn)
}

// A client that is silent and does not read, while a push to it is
// stalled: the reactor's idle close is tried once, not once per idle sweep
// (each would wait on its write lock; the goroutine path's reader waits
// in its ping instead). Sampled over several sweeps. Seen
// failing (found by review) in the reactor: 24 goroutines in 4 s.
func TestAnIdleCloseIsTriedOnce(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, IdleTimeout: time.Second, WriteTimeout: 6 * time.Second})
	testutil.DialBuffer(t, g.addr, "stuck", 4096)
	for range 8 {
		g.push("stuck", strings.Repeat("x", 1<<20)) // never read: a write stalls, holding the write lock
	}
	const closing = "server.(*conn).closeWith"
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := goroutinesIn(closing); n == 0 {
			return fmt.Errorf("no close yet")
		}
		return nil
	})
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if n := goroutinesIn(closing); n > 1 {
			t.Fatalf("%d goroutines close one stalled connection", n)
		}
	}
}
