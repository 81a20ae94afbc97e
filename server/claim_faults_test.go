package server_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// fnHook is a go-redis hook on a gateway's command client: fn runs each
// command (next) or answers it without sending it, and may rewrite its
// outcome; pipe does the same for pipelines. A nil one lets them pass.
type fnHook struct {
	fn   func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error
	pipe func(ctx context.Context, cmds []redis.Cmder, next redis.ProcessPipelineHook) error
}

func (h fnHook) DialHook(n redis.DialHook) redis.DialHook { return n }
func (h fnHook) ProcessPipelineHook(n redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	if h.pipe == nil {
		return n
	}
	return func(ctx context.Context, cmds []redis.Cmder) error { return h.pipe(ctx, cmds, n) }
}
func (h fnHook) ProcessHook(n redis.ProcessHook) redis.ProcessHook {
	if h.fn == nil {
		return n
	}
	return func(ctx context.Context, cmd redis.Cmder) error { return h.fn(ctx, cmd, n) }
}

// timeOutAfterPop reports, once armed, an ack script that ran and popped a
// batch as redis.ErrPoolTimeout: what go-redis returns when its first
// attempt ran, its reply was lost, and its retries found the pool busy.
func timeOutAfterPop(cmd redis.Cmder, err error, armed, fired *atomic.Bool) error {
	c, ok := cmd.(*redis.Cmd)
	if !ok || err != nil || !armed.Load() {
		return err
	}
	if v, _ := c.StringSlice(); len(v) > 0 && armed.CompareAndSwap(true, false) {
		fired.Store(true)
		cmd.SetErr(redis.ErrPoolTimeout)
		return redis.ErrPoolTimeout
	}
	return err
}

// The ack script's first attempt ran (acked b, popped c) and go-redis then
// reported ErrPoolTimeout; the pool stays busy; a shutdown comes during the
// retry backoff. Acknowledging with a new token would delete c, never
// written; the consumer requeues instead.
func TestShutdownDuringAPoolTimeoutRetryLosesNothing(t *testing.T) {
	var armed, fired atomic.Bool
	h := fnHook{fn: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if !hasArg(cmd, "{user_ps_messages}:relay") {
			return next(ctx, cmd)
		}
		n := fmt.Sprint(cmd.Args()[6])
		if fired.Load() && n != "0" { // pool still saturated: nothing sent
			cmd.SetErr(redis.ErrPoolTimeout)
			return redis.ErrPoolTimeout
		}
		return timeOutAfterPop(cmd, next(ctx, cmd), &armed, &fired)
	}}
	g := gatewayWithHook(t, h, server.Config{Format: server.FormatRaw, Batch: 1})
	ctx := context.Background()
	c := g.dialReady("ps")
	g.push("ps", "a")
	if got := c.MustRead(); got != "a" {
		t.Fatalf("got %q", got)
	}
	awaitBlocked(t, g, 1) // the consumer is blocked in BLMOVE
	armed.Store(true)
	g.push("ps", "b", "c")
	if got := c.MustRead(); got != "b" {
		t.Fatalf("got %q", got)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if !fired.Load() {
			return errors.New("not fired")
		}
		return nil
	})
	_ = g.shutdown()
	for {
		m, _, err := c.Read(time.Second)
		if err != nil {
			break
		}
		if m == "c" {
			t.Fatal("c was delivered after all")
		}
	}
	q, _ := g.rc.LRange(ctx, "user_ps_messages", 0, -1).Result()
	p, _ := g.rc.LRange(ctx, "{user_ps_messages}:processing:test", 0, -1).Result()
	t.Logf("queue=%v processing=%v", q, p)
	if !strings.Contains(strings.Join(append(q, p...), ","), "c") {
		t.Fatalf("message c was popped, never written, and is neither queued nor in flight: lost")
	}
}

// A process stalls (here: its command client hangs) while its consumer's
// BLMOVE is blocked in Redis; the claim expires and a successor takes the
// id. A blocked BLMOVE ends before the claim may expire, so none of the
// stalled process's can move the next message into the processing list
// its successor now owns (and whose ack would delete it unsent).
func TestAStalledProcessesBlockedPopTakesNothingFromItsSuccessor(t *testing.T) {
	var stalled atomic.Bool
	release := make(chan struct{})
	h := fnHook{fn: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if stalled.Load() {
			select {
			case <-release:
			case <-ctx.Done():
				cmd.SetErr(ctx.Err())
				return ctx.Err()
			}
		}
		return next(ctx, cmd)
	}}
	a := gatewayWithHook(t, h, server.Config{Instance: "x", Format: server.FormatRaw})
	defer close(release)
	ctx := context.Background()
	ca := a.dialReady("st")
	awaitBlocked(t, a, 1) // A's BLMOVE
	stalled.Store(true)   // A freezes
	ca.Reset()            // its tab goes away; A cannot wake its BLMOVE
	testutil.Eventually(t, 10*time.Second, func() error {
		if n, _ := a.rc.Exists(ctx, "redpush:claim:x").Result(); n != 0 {
			return errors.New("claim not expired")
		}
		return nil
	})
	b := startGatewayAt(t, a.rds.URL(), a.rc, server.Config{Instance: "x", Format: server.FormatRaw, Consumer: server.ConsumerBlocking})
	cb := b.dialReady("st")
	awaitBlocked(t, b, 1) // B's (and A's, if it outlived the claim)
	a.push("st", "m1")    // goes to the oldest blocked BLMOVE
	a.awaitQueueEmpty("st")
	a.push("st", "m2")
	var got []string
	for {
		m, _, err := cb.Read(3 * time.Second)
		if err != nil {
			break
		}
		got = append(got, m)
	}
	q, _ := a.rc.LRange(ctx, "user_st_messages", 0, -1).Result()
	p, _ := a.rc.LRange(ctx, "{user_st_messages}:processing:x", 0, -1).Result()
	t.Logf("B's tab got %v; queue=%v processing=%v", got, q, p)
	all := strings.Join(append(append(got, q...), p...), ",")
	if !strings.Contains(all, "m1") {
		t.Fatal("m1 lost: moved by the stale process's BLMOVE, acknowledged unsent by the successor")
	}
}

// awaitBlocked waits until Redis counts at least n clients blocked.
func awaitBlocked(t *testing.T, g *gateway, n int) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		info, err := g.rc.Info(context.Background(), "clients").Result()
		if err != nil {
			return err
		}
		for _, l := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(l, "blocked_clients:"); ok {
				if b, _ := strconv.Atoi(v); b >= n {
					return nil
				}
				return fmt.Errorf("%s blocked, want %d", v, n)
			}
		}
		return errors.New("no blocked_clients in INFO")
	})
}
