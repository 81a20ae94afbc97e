package server_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

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
