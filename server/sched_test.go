package server_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// Hinted, -workers bounds the consumer tasks that run at once, not the
// users online: two workers serve thirty users, each of whom gets its
// message, and no more than two deliveries are ever under way at once.
// Seen failing before tasks were scheduled: the third user got 503.
func TestHintedWorkersBoundTasksNotUsers(t *testing.T) {
	g := startGateway(t, nil, server.Config{Workers: 2, Format: server.FormatRaw})
	const users = 30
	clients := g.dialUsers("few", users)
	g.awaitConsumers(users, 10*time.Second)
	var mu sync.Mutex
	running, most := 0, 0
	t.Cleanup(server.SetHook(func(_ context.Context, user, stage string) {
		if !strings.HasPrefix(user, "few") || stage != "deliver" {
			return
		}
		// Before a delivery, its consumer works (holds a slot): each
		// sits here a while, so that more would overlap if more worked.
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		running--
		mu.Unlock()
	}))
	for u := range users {
		g.push(fmt.Sprint("few", u), fmt.Sprint("for ", u))
	}
	for u, c := range clients {
		if got := c.MustRead(); got != fmt.Sprint("for ", u) {
			t.Fatalf("user %d got %q", u, got)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if most != 2 {
		t.Fatalf("at most %d consumers worked at once, want 2 (-workers)", most)
	}
}

// Users past -workers take turns: with one worker, a user whose queue
// holds 10,000 messages yields it to a user who gets one, who is served
// long before the first user's queue runs dry. Seen failing without the
// yield: the one message waited until the 10,000 were popped.
func TestBusyUsersTakeTurns(t *testing.T) {
	g := startGateway(t, nil, server.Config{Workers: 1, Batch: 1, Format: server.FormatRaw})
	const backlog = 10_000
	many := make([]string, backlog)
	for i := range many {
		many[i] = fmt.Sprint("m", i)
	}
	g.push("busy", many...)
	busy := g.dialReady("busy")
	quiet := g.dialReady("quiet")
	g.push("quiet", "my turn")
	if got := quiet.MustRead(); got != "my turn" {
		t.Fatalf("quiet got %q", got)
	}
	if left := g.llen("user_busy_messages"); left == 0 {
		t.Fatal("the one message came only after the busy user's queue ran dry")
	} else {
		t.Logf("quiet served with %d of the busy user's %d messages still queued", left, backlog)
	}
	for i := range backlog { // and the busy user gets every one, in order
		if got := busy.MustRead(); got != fmt.Sprint("m", i) {
			t.Fatalf("busy message %d = %q", i, got)
		}
	}
}

// Blocking, each online user's consumer holds a task for its session:
// -workers bounds online users too, and the next new user gets 503.
func TestBlockingWorkersBoundUsers(t *testing.T) {
	g := startGateway(t, nil, server.Config{Workers: 1, Consumer: server.ConsumerBlocking, Format: server.FormatRaw})
	if v := metric(t, g, "redpush_users_capacity"); v != 1 {
		t.Fatalf("users capacity %v, want 1 (-workers, blocking)", v)
	}
	a := g.dialReady("a")
	if status, body := rawUpgrade(t, g.addr, "/?user_id=b"); status != 503 || !strings.Contains(body, "capacity") {
		t.Fatalf("second user: %d %q, want 503", status, body)
	}
	g.push("a", "served")
	if got := a.MustRead(); got != "served" {
		t.Fatalf("a got %q", got)
	}
}

// Where Redis refuses hinted consumption (here an ACL without CLIENT
// KILL), consumers block, and the bounds that were not given follow that
// mode: a task and two open files per online user. One given stays.
func TestRefusedHintsBoundUsersAsBlocking(t *testing.T) {
	rds := testutil.StartRedis(t)
	url := rds.UserURL("app", "-client|kill")
	for _, tc := range []struct {
		cfg            server.Config
		workers, users int
	}{
		{server.Config{}, server.DefaultWorkers(server.ConsumerBlocking), server.DefaultMaxUsers(server.ConsumerBlocking)},
		{server.Config{Workers: 3}, 3, 3},
		{server.Config{MaxUsers: 5}, server.DefaultWorkers(server.ConsumerBlocking), 5},
	} {
		tc.cfg.Format = server.FormatRaw
		g := startGatewayAt(t, url, rds.Client(), tc.cfg)
		if !strings.Contains(g.logs.String(), "Redis refused client tracking") {
			t.Fatalf("no fallback logged:\n%s", g.logs.String())
		}
		if v := metric(t, g, "redpush_pool_capacity"); v != float64(tc.workers) {
			t.Errorf("%+v: pool capacity %v, want %d", tc.cfg, v, tc.workers)
		}
		if v := metric(t, g, "redpush_users_capacity"); v != float64(tc.users) {
			t.Errorf("%+v: users capacity %v, want %d", tc.cfg, v, tc.users)
		}
		if !strings.Contains(g.logs.String(), fmt.Sprintf("max_users=%d", tc.users)) {
			t.Errorf("%+v: the start line does not say max_users=%d:\n%s", tc.cfg, tc.users, g.logs.String())
		}
		c := g.dialReady("u")
		g.push("u", "blocking")
		if got := c.MustRead(); got != "blocking" {
			t.Fatalf("got %q", got)
		}
		c.Conn.Close()
		must(t, g.shutdown())
	}
}

// The start line says how many users the process admits and what bounds
// them: the open-file limit by default.
func TestStartLineSaysHowManyUsersItAdmits(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	want := fmt.Sprintf("max_users=%d", server.DefaultMaxUsers(server.ConsumerHinted))
	// Logged once the accept loop runs: a moment after /healthz answers.
	testutil.Eventually(t, 5*time.Second, func() error {
		if logs := g.logs.String(); !strings.Contains(logs, "redpush listening") {
			return fmt.Errorf("no start line yet")
		}
		return nil
	})
	if logs := g.logs.String(); !strings.Contains(logs, want) || !strings.Contains(logs, "open-file limit") {
		t.Fatalf("start line lacks %s and the open-file limit:\n%s", want, logs)
	}
}

// A shutdown while users take turns on one worker, some consumers in line
// holding batches they yielded with: every consumer ends, and every
// message was received or is back in its queue, none left in flight.
func TestTurnTakersEndWithTheShutdown(t *testing.T) {
	g := startGateway(t, nil, server.Config{Workers: 1, Batch: 1, Format: server.FormatRaw})
	const users, backlog = 5, 2_000
	got := make([]map[string]bool, users)
	var wg sync.WaitGroup
	for u := range users {
		user := fmt.Sprint("turn", u)
		msgs := make([]string, backlog)
		for i := range msgs {
			msgs[i] = fmt.Sprint(i)
		}
		g.push(user, msgs...)
		c := g.dialReady(user)
		got[u] = map[string]bool{}
		wg.Add(1)
		go func() { // reads until the shutdown closes it
			defer wg.Done()
			for {
				m, _, err := c.Read(10 * time.Second)
				if err != nil {
					return
				}
				got[u][m] = true
			}
		}()
	}
	testutil.Eventually(t, 10*time.Second, func() error { // all under way
		for u := range users {
			if n := g.llen(fmt.Sprintf("user_turn%d_messages", u)); n == backlog {
				return fmt.Errorf("turn%d not served yet", u)
			}
		}
		if v := metric(t, g, "redpush_consumers_waiting"); v == 0 {
			return errors.New("nobody waits for the slot")
		}
		return nil
	})
	if err := g.shutdown(); err != nil {
		t.Logf("Serve: %v", err)
	}
	wg.Wait()
	if s := g.srv.Snapshot(); s.Users != 0 || s.Consumers != 0 {
		t.Errorf("%d sessions and %d consumers left after Serve returned", s.Users, s.Consumers)
	}
	for u := range users {
		user := fmt.Sprint("turn", u)
		if n := g.llen("{user_" + user + "_messages}:processing:test"); n != 0 {
			t.Errorf("%s: %d messages left in flight", user, n)
		}
		queued := g.rc.LRange(t.Context(), "user_"+user+"_messages", 0, -1).Val()
		for _, m := range queued {
			got[u][m] = true
		}
		if len(got[u]) != backlog {
			t.Errorf("%s: %d of %d messages received or queued", user, len(got[u]), backlog)
		}
	}
}

// A consumer that waits for a client gives up its slot: with one worker,
// a client that stopped reading (its consumer blocked in a write, then
// waiting for an acknowledgement that does not come until -write-timeout,
// 30 s here) holds up no other user, who gets its message at once. Seen
// failing (found by review) before waits gave up their slot: 30 s.
func TestAStalledClientHoldsUpNoSlot(t *testing.T) {
	g := startGateway(t, nil, server.Config{Workers: 1, Format: server.FormatRaw, WriteTimeout: 30 * time.Second})
	msgs := testutil.BigMessages(100)
	g.push("slow", msgs...)
	slow := testutil.DialBuffer(t, g.addr, "slow", 4096)
	if got := slow.MustRead(); got != "hello;\n" {
		t.Fatalf("greeting %q", got)
	}
	if got := slow.MustRead(); got != msgs[0] { // and nothing more
		t.Fatalf("slow got %.10q…", got)
	}
	fast := g.dialReady("fast")
	g.push("fast", "hi")
	if got := fast.MustRead(); got != "hi" { // within 10 s, not 30
		t.Fatalf("fast got %q", got)
	}
}

// A Redis failure that touches only some users (a Cluster master down,
// its slots not failed over yet) holds no slot while their consumers back
// off: with one worker, a user whose calls fail holds up no user whose
// calls work. Seen failing (found by review): nothing in 10 s.
func TestFailingUsersHoldUpNoSlot(t *testing.T) {
	var failed atomic.Int64
	h := fnHook{pipe: func(ctx context.Context, cmds []redis.Cmder, next redis.ProcessPipelineHook) error {
		for _, c := range cmds {
			if hasArg(c, "user_down_messages") {
				failed.Add(1)
				err := errors.New("CLUSTERDOWN The cluster is down (test)")
				for _, c := range cmds {
					c.SetErr(err)
				}
				return err
			}
		}
		return next(ctx, cmds)
	}}
	g := gatewayWithHook(t, h, server.Config{Consumer: server.ConsumerHinted, Workers: 1, Format: server.FormatRaw})
	g.dialReady("down") // its consumer's start fails, and backs off, again and again
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := failed.Load(); n < 2 {
			return fmt.Errorf("%d failed calls for user down", n)
		}
		return nil
	})
	up := g.dialReady("up")
	g.push("up", "hi")
	if got := up.MustRead(); got != "hi" {
		t.Fatalf("up got %q", got)
	}
}

// A consumer that panics while another waits for the only slot passes
// the slot on: the one in line gets its message, and no task is left.
func TestAPanicPassesTheSlotOn(t *testing.T) {
	g := startGateway(t, nil, server.Config{Workers: 1, Batch: 1, Format: server.FormatRaw})
	inLine := make(chan struct{})
	t.Cleanup(server.SetHook(func(_ context.Context, user, stage string) {
		if user == "boom" && stage == "deliver" {
			<-inLine
			panic("test")
		}
	}))
	g.dialReady("boom")
	okc := g.dialReady("ok")
	g.push("boom", "x")
	testutil.Eventually(t, 10*time.Second, func() error { // boom's consumer holds the slot
		if n := g.srv.Snapshot().ConsumerTasks; n != 1 {
			return fmt.Errorf("%d tasks", n)
		}
		return nil
	})
	g.push("ok", "y")
	testutil.Eventually(t, 10*time.Second, func() error {
		if v := metric(t, g, "redpush_consumers_waiting"); v != 1 {
			return fmt.Errorf("%v consumers waiting, want ok's", v)
		}
		return nil
	})
	close(inLine)
	if got := okc.MustRead(); got != "y" {
		t.Fatalf("ok got %q", got)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if s := g.srv.Snapshot(); s.ConsumerTasks != 0 {
			return fmt.Errorf("%d tasks left", s.ConsumerTasks)
		}
		return nil
	})
}
