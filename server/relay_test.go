package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// A user with a connection on each of three instances sharing one Redis
// (three devices): every connection receives every message once.
func TestEveryConnectionOnEveryInstanceGetsEveryMessage(t *testing.T) {
	rds := testutil.StartRedis(t)
	var conns []*testutil.Client
	for i := range 3 {
		g := startGateway(t, rds, server.Config{Instance: fmt.Sprint("inst", i), Format: server.FormatRaw})
		conns = append(conns, g.dialReady("42"))
		defer func() {
			if t.Failed() {
				t.Logf("instance %d log:\n%s", i, g.logs.String())
			}
		}()
	}
	g := &gateway{t: t, rc: rds.Client()}
	// Subscriptions are asynchronous: wait until all three instances listen.
	testutil.Eventually(t, 5*time.Second, func() error {
		n, err := g.rc.PubSubNumSub(t.Context(), "{user_42_messages}:relay").Result()
		if err != nil || n["{user_42_messages}:relay"] != 3 {
			return fmt.Errorf("subscribers %v (%v)", n, err)
		}
		return nil
	})
	msgs := testutil.Seq("m", 300)
	for _, m := range msgs { // one LPUSH each: batches land on different instances
		g.push("42", m)
	}
	for i, c := range conns {
		seen := map[string]int{}
		for range msgs {
			seen[c.MustRead()]++
		}
		for _, m := range msgs {
			if seen[m] != 1 {
				t.Fatalf("connection on instance %d saw %q %d times", i, m, seen[m])
			}
		}
	}
}
