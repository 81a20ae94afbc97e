package server

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
)

// Writes that fail (here: the shutdown's cancelled context) lose no user:
// the users of the failed chunk wait for their retry, those after it go
// back to be written, and the shutdown's final write takes every one of
// them offline. Before, the users after a failed chunk were dropped and
// the failed ones were marked again only by a timer that fired after the
// writer had ended: all 1,500 stayed online.
func TestFailedPresenceWritesLoseNoUser(t *testing.T) {
	rds := testutil.StartRedis(t)
	ctx := context.Background()
	clients, err := redisq.Dial(ctx, rds.URL(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer clients.Close()
	q, err := redisq.New(clients.Blocking, clients.Command, redisq.Config{Instance: "pi"})
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 30 * time.Second
	users := make([]string, 1500)
	online := make([]redisq.PresenceUpdate, len(users))
	for i := range users {
		users[i] = fmt.Sprint("pi", i)
		online[i] = redisq.PresenceUpdate{User: users[i], Conns: 1}
	}
	for i := 0; i < len(online); i += 500 {
		if _, err := q.SetPresence(ctx, online[i:i+500], ttl); err != nil {
			t.Fatal(err)
		}
	}
	p := newPresence(newHub(nil, q, encoder{format: FormatRaw}, slog.Default()), q, ttl)
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if p.writeChanged(gone, users) { // their connections closed; the write fails
		t.Fatal("a write with a cancelled context succeeded")
	}
	p.final(ctx)
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	left := 0
	for _, u := range users {
		left += int(rds.Client().ZCount(ctx, q.PresenceKey(u), now, "+inf").Val())
	}
	if left != 0 {
		t.Fatalf("%d of %d users still online after the final write", left, len(users))
	}
}
