package server_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// Hinted consumption (the default) holds no Redis connection per online
// user: a Redis that admits 60 clients serves 500 online users through one
// gateway, each of whom gets its message. Blocking consumers would need
// 500 connections.
func TestManyUsersThroughFewRedisConnections(t *testing.T) {
	rds := testutil.StartRedis(t, "--maxclients", "60")
	g := startGateway(t, rds, server.Config{Format: server.FormatRaw})
	const users = 500
	clients := g.dialUsers("many", users)
	g.awaitConsumers(users, 10*time.Second)
	for u := range users {
		g.push(fmt.Sprint("many", u), fmt.Sprint("for ", u))
	}
	for u, c := range clients {
		if got := c.MustRead(); got != fmt.Sprint("for ", u) {
			t.Fatalf("user %d got %q", u, got)
		}
	}
	info := g.rc.Info(t.Context(), "clients", "stats").Val()
	connected, rejected := infoInt(t, info, "connected_clients"), infoInt(t, info, "rejected_connections")
	t.Logf("%d online users: Redis holds %d clients, rejected %d", users, connected, rejected)
	if connected > 40 || rejected != 0 {
		t.Errorf("Redis holds %d clients and rejected %d, want a few (command pool, relay, one hint connection, the test's) and none", connected, rejected)
	}
}

// An idle user's consumer parks: it holds no task (no goroutine) while
// its queue is empty, and a hint, or its user leaving, starts one that
// resumes it. With the consumer parked: a push is delivered, and the last
// connection closing retires the session and its registry entry.
func TestAnIdleUserHoldsNoConsumerTask(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	const users = 50
	clients := g.dialUsers("idle", users)
	g.awaitConsumers(users, 10*time.Second)
	idle := func() {
		t.Helper()
		testutil.Eventually(t, 5*time.Second, func() error {
			if n := g.srv.Snapshot().ConsumerTasks; n != 0 {
				return fmt.Errorf("%d consumer tasks running for %d idle users", n, users)
			}
			return nil
		})
	}
	idle()
	for round := range 3 { // parked, resumed, parked again, …
		for u := range users {
			g.push(fmt.Sprint("idle", u), fmt.Sprint(round, " for ", u))
		}
		for u, c := range clients {
			if got, want := c.MustRead(), fmt.Sprint(round, " for ", u); got != want {
				t.Fatalf("user %d got %q, want %q", u, got, want)
			}
		}
		idle()
	}
	clients[7].SendClose()
	g.awaitConsumers(users-1, 5*time.Second)
	if ok, _ := g.rc.SIsMember(t.Context(), "redpush:lists:test", "user_idle7_messages").Result(); ok {
		t.Error("the user left, and its queue is still in the instance's registry")
	}
	if s := g.srv.Snapshot(); s.Users != users-1 {
		t.Errorf("%d users online, want %d", s.Users, users-1)
	}
}

// infoInt reads one integer field of INFO.
func infoInt(t *testing.T, info, field string) int {
	t.Helper()
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("INFO %s: %q", field, v)
			}
			return n
		}
	}
	t.Fatalf("INFO has no %s:\n%s", field, info)
	return 0
}

// The hint connection carries every consumer's pops and acks; killed (by
// Redis, so no stale command of it runs later: redisq/pipe_test.go covers
// the fence) in the middle of a stream, its unanswered calls have unknown
// outcomes. Each consumer then returns what it holds to its queue, and the
// replacement connection looks at every online user's queue (hints sent
// while none listened are lost): nothing is lost, nothing is left in
// flight.
func TestHintConnectionKilledMidStreamLosesNothing(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, Instance: "kill"})
	const users, each = 10, 300
	clients := g.dialUsers("k", users)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the producer: a message to every user every 2 ms
		defer wg.Done()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for i := range each {
			<-tick.C
			pl := g.rc.Pipeline()
			for u := range users {
				pl.LPush(t.Context(), fmt.Sprintf("user_k%d_messages", u), fmt.Sprint(i))
			}
			if _, err := pl.Exec(t.Context()); err != nil {
				t.Errorf("push: %v", err)
				return
			}
		}
	}()
	kills := 0
	wg.Add(1)
	go func() { // kill the hint connection every 150 ms while the producer runs
		defer wg.Done()
		for range 4 {
			time.Sleep(150 * time.Millisecond)
			if id := hintConnID(t, g, "kill"); id != 0 {
				if err := g.rc.Do(t.Context(), "CLIENT", "KILL", "ID", id).Err(); err == nil {
					kills++
				}
			}
		}
	}()
	for _, c := range clients { // every message, perhaps twice (a requeued batch)
		seen := map[string]bool{}
		for len(seen) < each {
			seen[c.MustRead()] = true
		}
	}
	wg.Wait()
	if kills < 3 {
		t.Fatalf("the hint connection was killed %d times, want several", kills)
	}
	if id := hintConnID(t, g, "kill"); id == 0 {
		t.Fatal("no hint connection after the kills")
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		keys := g.rc.Keys(t.Context(), "{user_k*_messages}:processing:*").Val()
		var held int64
		for _, k := range keys {
			held += g.rc.LLen(t.Context(), k).Val()
		}
		if held != 0 {
			return fmt.Errorf("%d messages still in processing lists", held)
		}
		return nil
	})
	if !strings.Contains(g.logs.String(), "hint connection to Redis lost") {
		t.Errorf("the lost hint connection was not logged")
	}
}

// hintConnID is the CLIENT ID of the gateway's hint connection, 0 if it
// has none right now.
func hintConnID(t *testing.T, g *gateway, instance string) int64 {
	t.Helper()
	for _, l := range strings.Split(g.rc.ClientList(t.Context()).Val(), "\n") {
		if !strings.Contains(l, " name=redpush-hints-"+instance+" ") {
			continue
		}
		id, _ := strings.CutPrefix(strings.Fields(l)[0], "id=")
		n, err := strconv.ParseInt(id, 10, 64)
		if err != nil {
			t.Fatalf("CLIENT LIST: %q", l)
		}
		return n
	}
	return 0
}

// Hints sent while no hint connection listens are lost: messages pushed
// while the gateway cannot reach Redis arrive once it can again, without
// another push (the reconnected hint connection sweeps the online users'
// queues).
func TestMessagesPushedWhileHintsWereDownArrive(t *testing.T) {
	rds := testutil.StartRedis(t)
	proxy := testutil.StartProxy(t, rds.Addr())
	g := startGatewayAt(t, "redis://"+proxy.Addr(), rds.Client(), server.Config{Format: server.FormatRaw})
	g.rds = rds
	c := g.dialReady("gap")
	g.push("gap", "before")
	if got := c.MustRead(); got != "before" {
		t.Fatalf("got %q", got)
	}
	// Its consumer acknowledged it and holds nothing: it waits for a hint,
	// with no timer.
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := g.rc.LLen(t.Context(), "{user_gap_messages}:processing:test").Val(); n != 0 {
			return fmt.Errorf("%d in the processing list", n)
		}
		return nil
	})
	proxy.Down()
	g.push("gap", "during 1", "during 2") // straight to Redis: the hint has nobody to reach
	time.Sleep(300 * time.Millisecond)    // a few failed reconnects (the outage lasts this long)
	proxy.Heal()
	// Well before the periodic sweep (every 5 s): the reconnect's sweep
	// found them.
	for _, want := range []string{"during 1", "during 2"} {
		got, _, err := c.Read(3 * time.Second)
		if err != nil || got != want {
			t.Fatalf("got %q (%v), want %q within 3 s of the reconnect", got, err, want)
		}
	}
}

// A key pattern that starts with the user id has no prefix to track:
// Redis then hints every key written (BCAST with an empty prefix), the
// gateway keeps those of its queues, and delivery works as with any
// pattern.
func TestHintsWithAKeyPatternWithoutPrefix(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, KeyPattern: "%s_inbox"})
	c := g.dialReady("p1")
	g.awaitConsumers(1, 5*time.Second)
	g.rc.Set(t.Context(), "unrelated", "x", 0) // hinted too, and ignored
	for _, m := range []string{"one", "two"} {
		g.rc.LPush(t.Context(), "p1_inbox", m)
		if got := c.MustRead(); got != m {
			t.Fatalf("got %q, want %q", got, m)
		}
	}
	if hintConnID(t, g, "test") == 0 {
		t.Fatal("no hint connection: the gateway fell back to blocking")
	}
}
