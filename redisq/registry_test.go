package redisq_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
)

// A Redis outage longer than -instance-ttl: a live instance's heartbeat
// lapses, another instance's ReclaimDead returns its list (a duplicate, as
// documented). The registry entries stay while the instance may still be
// alive, and its next heartbeat says it was dropped (relisted), so that it
// registers its queues again; when it later dies for good, ReclaimDead
// returns what it had in flight.
func TestALiveInstanceTakenForDeadRegistersAgain(t *testing.T) {
	rds := testutil.StartRedis(t)
	ctx := context.Background()
	c, err := redisq.Dial(ctx, rds.URL(), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mk := func(id string) *redisq.Queue {
		q, err := redisq.New(c.Blocking, c.Command, redisq.Config{Instance: id, Batch: 1})
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	a, b := mk("a"), mk("b")
	rc := rds.Client()
	rc.LPush(ctx, "user_u_messages", "m1", "m2", "m3")
	expired := func() {
		testutil.Eventually(t, 5*time.Second, func() error {
			if n, _ := rc.Exists(ctx, "redpush:instance:a").Result(); n != 0 {
				return errors.New("heartbeat alive")
			}
			return nil
		})
	}
	_, _ = a.Heartbeat(ctx, 50*time.Millisecond)
	_ = a.Register(ctx, "u")
	if _, err := a.AckPop(ctx, "u"); err != nil {
		t.Fatal(err)
	}
	expired() // outage: A's heartbeats fail
	_, _ = b.Heartbeat(ctx, time.Minute)
	if l, m, err := b.ReclaimDead(ctx); err != nil || l != 1 {
		t.Fatalf("first reclaim %d %d %v", l, m, err)
	}
	// Redis back; A lives on, its consumer keeps serving u.
	if relisted, err := a.Heartbeat(ctx, 50*time.Millisecond); err != nil || !relisted {
		t.Fatalf("Heartbeat = %v, %v; want it to say that A had been dropped", relisted, err)
	}
	if err := a.RegisterAll(ctx, []string{"u"}); err != nil { // as the server does then
		t.Fatal(err)
	}
	msgs, err := a.AckPop(ctx, "u")
	if err != nil || len(msgs) != 1 {
		t.Fatal(msgs, err)
	}
	expired() // now A dies for good, with msgs in flight
	l, m, err := b.ReclaimDead(ctx)
	inflight, _ := rc.LRange(ctx, a.ProcessingKey("u"), 0, -1).Result()
	reg, _ := rc.SMembers(ctx, "redpush:lists:a").Result()
	if err != nil || len(inflight) > 0 {
		t.Logf("ReclaimDead = %d lists %d msgs %v; A's list %v; registry of a %v", l, m, err, inflight, reg)
		t.Fatalf("dead instance's in-flight %v not returned: registry entry was dropped while it lived", inflight)
	}
}
