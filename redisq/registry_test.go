package redisq_test

import (
	"context"
	"errors"
	"slices"
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
	rds, mk := startQueues(t)
	ctx := context.Background()
	a, b := mk(redisq.Config{Instance: "a", Batch: 1}), mk(redisq.Config{Instance: "b", Batch: 1})
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

// Start registers the queue, returns what a previous consumer left in its
// processing list, oldest message first, and reads the failed deliveries,
// all in one call; with nothing left and no failures it says 0 and 0.
func TestStartRegistersRequeuesAndReadsFailures(t *testing.T) {
	rds, mk := startQueues(t)
	ctx := context.Background()
	q := mk(redisq.Config{Instance: "a", Batch: 2})
	rc := rds.Client()
	if st, err := q.Start(ctx, "fresh"); err != nil || st.Requeued != 0 || st.Failures != 0 {
		t.Fatalf("fresh queue: Start = %+v, %v; want zeros, nil", st, err)
	}
	rc.LPush(ctx, "user_u_messages", "m1", "m2", "m3")
	if msgs, err := q.AckPop(ctx, "u"); err != nil || len(msgs) != 2 {
		t.Fatalf("AckPop = %v, %v", msgs, err)
	}
	rc.Set(ctx, "{user_u_messages}:failures", 2, 0)
	st, err := q.Start(ctx, "u")
	n, f := st.Requeued, st.Failures
	if err != nil || n != 2 || f != 2 {
		t.Fatalf("Start = %d, %d, %v; want 2 requeued, 2 failures", n, f, err)
	}
	if got, _ := rc.LRange(ctx, "user_u_messages", 0, -1).Result(); len(got) != 3 || got[2] != "m1" {
		t.Fatalf("queue after Start: %v, want m1 at the right (read next)", got)
	}
	for _, u := range []string{"fresh", "u"} {
		if ok, _ := rc.SIsMember(ctx, "redpush:lists:a", "user_"+u+"_messages").Result(); !ok {
			t.Errorf("queue of %s not registered", u)
		}
	}
}

// The set of the instances serving a user (the relay's listeners) follows
// the registry: Start and Register add the instance, Unregister removes it,
// and so does the reclaim of a dead instance.
func TestInstancesServingAUserFollowTheRegistry(t *testing.T) {
	rds, mk := startQueues(t)
	ctx := context.Background()
	a, d, b := mk(redisq.Config{Instance: "a"}), mk(redisq.Config{Instance: "d"}), mk(redisq.Config{Instance: "b"})
	rc := rds.Client()
	serving := func() []string {
		m, _ := rc.SMembers(ctx, "{user_x_messages}:instances").Result()
		slices.Sort(m)
		return m
	}
	if _, err := a.Start(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	_, _ = d.Heartbeat(ctx, 50*time.Millisecond)
	if err := d.Register(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if got := serving(); !slices.Equal(got, []string{"a", "d"}) {
		t.Fatalf("serving %v, want a and d", got)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n, _ := rc.Exists(ctx, "redpush:instance:d").Result(); n != 0 {
			return errors.New("d's heartbeat alive")
		}
		return nil
	})
	_, _ = b.Heartbeat(ctx, time.Minute)
	if _, _, err := b.ReclaimDead(ctx); err != nil {
		t.Fatal(err)
	}
	if got := serving(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after d died: serving %v, want a", got)
	}
	if err := a.Unregister(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if got := serving(); len(got) != 0 {
		t.Fatalf("after a unregistered: serving %v", got)
	}
}

// A failures key of another type counts as no failures, and is deleted:
// the consumer starts (seen failing: Start returned WRONGTYPE, and the
// consumer retried it forever) and can count failures again.
func TestStartReadsAFailuresKeyOfAnotherTypeAsNone(t *testing.T) {
	rds, mk := startQueues(t)
	ctx := context.Background()
	q := mk(redisq.Config{Instance: "a"})
	rds.Client().RPush(ctx, "{user_w_messages}:failures", "x")
	if st, err := q.Start(ctx, "w"); err != nil || st.Failures != 0 {
		t.Errorf("Start = %d failures, %v; want 0, nil", st.Failures, err)
	}
	// Deleted, or every failure counted after it would fail too.
	if typ := rds.Client().Type(ctx, "{user_w_messages}:failures").Val(); typ != "none" {
		t.Errorf("the mistyped failures key is still a %s", typ)
	}
}

// startQueues starts a redis-server and returns it with a maker of queues
// on it, one per configuration (instance id, batch size).
func startQueues(t *testing.T) (*testutil.Redis, func(redisq.Config) *redisq.Queue) {
	t.Helper()
	rds := testutil.StartRedis(t)
	c, err := redisq.Dial(context.Background(), rds.URL(), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return rds, func(cfg redisq.Config) *redisq.Queue {
		q, err := redisq.New(c.Blocking, c.Command, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
}
