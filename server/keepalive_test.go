package server_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

// holdRegisterAll is a hook that holds, once armed, the next RegisterAll
// pipeline (SADD redpush:lists:<id> first, no EVAL: not Start) until
// release is closed, and closes done once it went through.
func holdRegisterAll(armed *atomic.Bool, entered, release, done chan struct{}) fnHook {
	return fnHook{pipe: func(ctx context.Context, cmds []redis.Cmder, next redis.ProcessPipelineHook) error {
		if len(cmds) < 2 || cmds[0].Name() != "sadd" || !armed.Load() {
			return next(ctx, cmds)
		}
		for _, c := range cmds {
			if c.Name() == "eval" || c.Name() == "evalsha" {
				return next(ctx, cmds)
			}
		}
		if !armed.CompareAndSwap(true, false) {
			return next(ctx, cmds)
		}
		close(entered)
		<-release
		err := next(ctx, cmds)
		close(done)
		return err
	}}
}

// A user leaves while the periodic registration of the online users is on
// its way with a snapshot that still names them: it adds the entries back
// after the consumer unregistered them, and they must go again, or other
// instances would publish that user's batches for nobody for as long as
// this one lives (seen failing: both entries stayed).
func TestARegistrationRacingALeavingUserLeavesNoEntry(t *testing.T) {
	rds := testutil.StartRedis(t)
	clients, err := redisq.Dial(context.Background(), rds.URL(), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = clients.Close() })
	var armed atomic.Bool
	entered, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	clients.Command.AddHook(holdRegisterAll(&armed, entered, release, done))
	g := startGatewayOn(t, clients, rds.Client(), server.Config{Format: server.FormatRaw, InstanceTTL: time.Second})
	ctx := context.Background()
	entries := func() (relay, lists bool) {
		relay, _ = g.rc.SIsMember(ctx, "{user_st_messages}:instances", "test").Result()
		lists, _ = g.rc.SIsMember(ctx, "redpush:lists:test", "user_st_messages").Result()
		return relay, lists
	}
	c := g.dialReady("st")
	testutil.Eventually(t, 5*time.Second, func() error {
		if relay, lists := entries(); !relay || !lists {
			return fmt.Errorf("not registered yet")
		}
		return nil
	})
	armed.Store(true)
	select {
	case <-entered: // the snapshot was taken, with "st" in it
	case <-time.After(10 * time.Second):
		t.Fatal("no registration of the online users within 10 s")
	}
	c.SendClose()
	testutil.Eventually(t, 5*time.Second, func() error {
		if s := g.srv.Snapshot(); s.Users != 0 {
			return fmt.Errorf("not retired yet: %+v", s)
		}
		return nil
	})
	close(release)
	<-done
	testutil.Eventually(t, 5*time.Second, func() error {
		if relay, lists := entries(); relay || lists {
			return fmt.Errorf("entries of a user who left: relay set %v, registry %v", relay, lists)
		}
		return nil
	})
}
