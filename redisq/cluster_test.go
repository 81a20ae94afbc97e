package redisq_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
)

// On a cluster, each Blocker blocks on the master of its user's slot, Wake
// ends that block at once (not after the 30 s round), and Recover finds the
// processing lists on every master.
func TestQueueOnACluster(t *testing.T) {
	cl := testutil.StartCluster(t)
	c, err := redisq.Dial(context.Background(), cl.URL(), 8)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q, err := redisq.New(c.Blocking, c.Command, redisq.Config{Instance: "i1", WakeRound: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	users := cl.UsersOnEachMaster("u", q.Key)
	for _, u := range users {
		b := q.Blocker()
		popped := make(chan error, 1)
		go func() {
			msgs, err := b.Pop(ctx, u)
			if err == nil && len(msgs) != 0 {
				err = fmt.Errorf("popped %v from an empty queue", msgs)
			}
			popped <- err
		}()
		testutil.Eventually(t, 5*time.Second, func() error { // until the Pop blocks
			if woke, err := b.Wake(ctx); err != nil || !woke {
				return fmt.Errorf("wake = %v, %v", woke, err)
			}
			return nil
		})
		if err := <-popped; err != nil {
			t.Fatalf("user %s: %v", u, err)
		}
		b.Close()
	}
	rc := cl.Client()
	for _, u := range users {
		rc.LPush(ctx, q.Key(u), "m1", "m2")
		if msgs, err := q.AckPop(ctx, u); err != nil || len(msgs) != 2 {
			t.Fatalf("AckPop(%s) = %v, %v", u, msgs, err)
		}
	}
	if lists, msgs, err := q.Recover(ctx); err != nil || lists != 3 || msgs != 6 {
		t.Fatalf("Recover = %d lists, %d messages, %v; want 3 and 6", lists, msgs, err)
	}
	for _, u := range users {
		if n := rc.LLen(ctx, q.Key(u)).Val(); n != 2 {
			t.Errorf("queue of %s holds %d after Recover, want 2", u, n)
		}
	}
}
