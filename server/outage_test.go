package server_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// The ack of m1 travels with the pop of m2 (one script). Redis runs it, and
// its reply is lost with the connection; Redis then stays unreachable
// until the consumer's retries have failed. The consumer cannot know that
// the ack happened, nor that m2 was popped: it must requeue what the
// processing list holds, never ack it unseen. So m2 is not lost, and the
// metrics show the outage: redis_up 0, redis_errors_total and
// messages_requeued_total moving.
func TestRedisErrorHidingAnAckRequeues(t *testing.T) {
	rds := testutil.StartRedis(t)
	proxy := testutil.StartProxy(t, rds.Addr())
	msgs := []string{"hidden-ack-m1", "hidden-ack-m2", "hidden-ack-m3", "hidden-ack-m4", "hidden-ack-m5"}
	rc := rds.Client()
	g := startGatewayAt(t, "redis://"+proxy.Addr(), rc, server.Config{Format: server.FormatRaw, Batch: 1})
	g.rds = rds
	g.push("h", msgs...)
	cut := proxy.CutOnReply("hidden-ack-m2")
	c := g.dialReady("h")
	if got := c.MustRead(); got != msgs[0] {
		t.Fatalf("got %q, want %q", got, msgs[0])
	}
	select {
	case <-cut:
	case <-time.After(10 * time.Second):
		t.Fatal("the reply that acks m1 and pops m2 never came")
	}
	// Redis did both: m1 acked, m2 in the processing list.
	if held := rc.LRange(t.Context(), "{user_h_messages}:processing:test", 0, -1).Val(); len(held) != 1 || held[0] != msgs[1] {
		t.Fatalf("processing list %q after the lost reply, want [%s]", held, msgs[1])
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if v := metric(t, g, "redpush_redis_up"); v != 0 {
			return fmt.Errorf("redpush_redis_up = %v during the outage, want 0", v)
		}
		return nil
	})
	if v := metric(t, g, "redpush_redis_errors_total"); v < 1 {
		t.Fatalf("redpush_redis_errors_total = %v during the outage", v)
	}
	// Through the outage the consumer keeps what it holds in Redis.
	if held := rc.LRange(t.Context(), "{user_h_messages}:processing:test", 0, -1).Val(); len(held) != 1 || held[0] != msgs[1] {
		t.Fatalf("processing list %q during the outage, want [%s]", held, msgs[1])
	}
	proxy.Heal()
	for _, want := range msgs[1:] {
		if got := c.MustRead(); got != want {
			t.Fatalf("after the outage got %q, want %q", got, want)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if v := metric(t, g, "redpush_redis_up"); v != 1 {
			return fmt.Errorf("redpush_redis_up = %v after the outage", v)
		}
		if v := metric(t, g, "redpush_messages_requeued_total"); v != 1 {
			return fmt.Errorf("redpush_messages_requeued_total = %v, want 1 (m2)", v)
		}
		return nil
	})
	if keys := rc.Keys(t.Context(), "*processing*").Val(); len(keys) != 0 {
		// The last batch's ack is still pending (the consumer waits for
		// more); only m5 may be held.
		if held := rc.LRange(t.Context(), keys[0], 0, -1).Val(); len(keys) != 1 || strings.Join(held, ",") != msgs[4] {
			t.Fatalf("processing lists left: %v %q", keys, held)
		}
	}
}

// A consumer whose Redis commands fail retries with a capped, jittered
// backoff: 50 ms first, doubling, at most 2 s. Here Redis refuses the
// consumer's keys (an ACL: NOPERM, nothing else changes) for 10 s; each
// attempt is the consumer's requeue script, seen in Redis's
// rejected_calls, polled every few milliseconds.
func TestConsumerBacksOff50msTo2s(t *testing.T) {
	rds := testutil.StartRedis(t)
	ctx := context.Background()
	if err := rds.Client().Do(ctx, "ACL", "SETUSER", "admin", "on", "nopass", "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(&redis.Options{Addr: rds.Addr(), Username: "admin"})
	defer admin.Close()
	g := startGatewayAt(t, rds.URL(), admin, server.Config{Format: server.FormatRaw})
	g.rds = rds
	// The gateway's own keys stay allowed (its claim and heartbeat, the
	// user's presence, whose writes are scripts too).
	if err := admin.Do(ctx, "ACL", "SETUSER", "default", "resetkeys", "~redpush:*",
		"~{user_bo_messages}:presence", "~{user_bo_messages}:connections").Err(); err != nil {
		t.Fatal(err)
	}
	scripts := func() int {
		info := admin.Info(ctx, "commandstats").Val()
		n := 0
		for _, cmd := range []string{"evalsha", "eval"} {
			if _, v, ok := strings.Cut(info, "cmdstat_"+cmd+":"); ok {
				_, v, _ = strings.Cut(v, "rejected_calls=")
				k, _ := strconv.Atoi(strings.Split(v, ",")[0])
				n += k
			}
		}
		return n
	}
	last := scripts()
	c := g.dialReady("bo") // its consumer's first requeue is refused
	const window = 10 * time.Second
	var attempts []time.Time
	for start := time.Now(); time.Since(start) < window; {
		if n := scripts(); n != last {
			for range n - last {
				attempts = append(attempts, time.Now())
			}
			last = n
		}
		time.Sleep(2 * time.Millisecond) // the polling interval
	}
	end := time.Now()
	if err := admin.Do(ctx, "ACL", "SETUSER", "default", "allkeys").Err(); err != nil {
		t.Fatal(err)
	}
	if len(attempts) == 0 {
		t.Fatal("the consumer never tried")
	}
	var gaps []time.Duration
	for i := 1; i < len(attempts); i++ {
		gaps = append(gaps, attempts[i].Sub(attempts[i-1]))
	}
	t.Logf("%d attempts in %v; gaps %v", len(attempts), window, gaps)
	// 50 ms first: by 500 ms at least 3 retries (25-50, 50-100, 100-200
	// ms), where a first delay of a second would allow none.
	early := 0
	for _, a := range attempts[1:] {
		if a.Sub(attempts[0]) <= 500*time.Millisecond {
			early++
		}
	}
	if early < 3 {
		t.Errorf("%d retries within 500 ms of the first failure, want at least 3 (backoff from 50 ms)", early)
	}
	// At most 2 s (jitter takes it down to 1 s): no gap, not even the
	// open one at the end, over 2 s plus slack for a loaded machine.
	if open := end.Sub(attempts[len(attempts)-1]); open > 2500*time.Millisecond {
		t.Errorf("no retry for the last %v of the outage, want one every 2 s at most", open)
	}
	grew := false
	for _, d := range gaps {
		if d > 2500*time.Millisecond {
			t.Errorf("a gap of %v between retries, want at most 2 s", d)
		}
		grew = grew || d >= 800*time.Millisecond
	}
	// Doubling to the cap: gaps reach a second or so; 10 s hold about
	// 10-14 attempts, not the hundreds of a fixed short delay.
	if !grew || len(attempts) > 20 {
		t.Errorf("%d attempts in %v, longest gap under 800 ms = %v: want a backoff growing to 1-2 s", len(attempts), window, !grew)
	}
	// Redis answers again: the user is served.
	g.push("bo", "after")
	if got := c.MustRead(); got != "after" {
		t.Fatalf("got %q", got)
	}
}
