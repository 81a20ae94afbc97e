package server_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

// Faults between the consumer and Redis that only show when they meet at
// the wrong moment; each test makes the moment happen.

// hasArg reports whether cmd carries arg (a script's key or argument).
func hasArg(cmd redis.Cmder, arg string) bool {
	return slices.ContainsFunc(cmd.Args(), func(a any) bool { s, ok := a.(string); return ok && s == arg })
}

// gatewayWithHook starts a gateway whose command client carries h. Its
// consumers block (unless cfg says otherwise): the faults these tests
// inject are go-redis's, and hinted consumers pop on their hint
// connection, which is not go-redis's (server/hints_test.go and
// redisq/pipe_test.go break that one).
func gatewayWithHook(t *testing.T, h redis.Hook, cfg server.Config) *gateway {
	t.Helper()
	if cfg.Consumer == "" {
		cfg.Consumer = server.ConsumerBlocking
	}
	rds := testutil.StartRedis(t)
	clients, err := redisq.Dial(context.Background(), rds.URL(), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = clients.Close() })
	clients.Command.AddHook(h)
	g := startGatewayOn(t, clients, rds.Client(), cfg)
	g.rds = rds
	return g
}

// go-redis returns the error of its last attempt: an ack script whose
// first attempt ran, popped the next batch and lost its reply, then whose
// retries found the pool busy, reports redis.ErrPoolTimeout. Sent again
// with a new token it would acknowledge the batch the first attempt popped,
// which nobody was sent; with the same token it returns that batch.
func TestPoolTimeoutAfterTheAckRanLosesNothing(t *testing.T) {
	var armed, fired atomic.Bool
	h := fnHook{fn: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		err := next(ctx, cmd)
		if !hasArg(cmd, "{user_pt_messages}:relay") {
			return err
		}
		return timeOutAfterPop(cmd, err, &armed, &fired)
	}}
	g := gatewayWithHook(t, h, server.Config{Format: server.FormatRaw, Batch: 1})
	c := g.dialReady("pt")
	armed.Store(true)
	g.push("pt", "a", "b", "c", "end")
	var got []string
	for m := c.MustRead(); m != "end"; m = c.MustRead() {
		got = append(got, m)
	}
	if !fired.Load() {
		t.Fatal("no ack script ran with a batch: the test proves nothing")
	}
	if !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("received %v, want a b c: a batch was acknowledged unsent", got)
	}
}

// An ACL that refuses CLIENT ID (not an unknown command) leaves consumers
// in short BLMOVE rounds: an idle user costs about one command a second,
// is not an outage, and is still served.
func TestRefusedClientIDIsNoOutageAndNoSpin(t *testing.T) {
	rds := testutil.StartRedis(t)
	admin := rds.Client()
	ctx := context.Background()
	clients, err := redisq.Dial(ctx, rds.UserURL("rot", "-client"), 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = clients.Close() })
	g := startGatewayOn(t, clients, admin, server.Config{Format: server.FormatRaw})
	c := g.dialReady("idle")
	g.push("idle", "first") // served once the consumer has started
	if got := c.MustRead(); got != "first" {
		t.Fatalf("got %q", got)
	}
	if err := admin.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	const window = 3 * time.Second
	time.Sleep(window) // a measurement window, not a synchronisation
	calls := allCommandCalls(t, admin)
	// One 1 s BLMOVE round a second, the heartbeat, the claim's renewal
	// (1/s) and the relay's keep-alive: about 8 in 3 s. A consumer that
	// spins makes hundreds.
	if calls > 30 {
		t.Fatalf("%d commands in %v for one idle user: the consumer spins", calls, window)
	}
	if strings.Contains(g.logs.String(), "redis unreachable") {
		t.Fatal("a refused CLIENT ID was logged as Redis being unreachable")
	}
	g.push("idle", "x")
	if got := c.MustRead(); got != "x" {
		t.Fatalf("got %q", got)
	}
}

// allCommandCalls sums the calls of INFO commandstats, less the INFO itself.
func allCommandCalls(t *testing.T, rc *redis.Client) int {
	t.Helper()
	info, err := rc.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, line := range strings.Split(info, "\r\n") {
		if !strings.HasPrefix(line, "cmdstat_") || strings.HasPrefix(line, "cmdstat_info:") || strings.HasPrefix(line, "cmdstat_config|resetstat:") {
			continue
		}
		_, rest, _ := strings.Cut(line, "calls=")
		n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		total += n
	}
	return total
}

// A process that stalls past the claim's life (a pause, a partition) may
// have been replaced by another with the same id when it resumes; the
// processing lists are then the other's. Here the process stalls after a
// delivery (its consumer in a hook, its renewals held back) until the
// claim expired, another process takes the id and pops into the shared
// processing list; when the process resumes, it must not acknowledge (DEL)
// that list, and it stops serving.
func TestResumingAfterTheClaimLapsedTouchesNoList(t *testing.T) {
	var stalled atomic.Bool
	release := make(chan struct{})
	h := fnHook{fn: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if stalled.Load() && hasArg(cmd, "redpush:claim:dup") {
			<-release // the renewal waits out the stall too
		}
		return next(ctx, cmd)
	}}
	g := gatewayWithHook(t, h, server.Config{Instance: "dup", Format: server.FormatRaw})
	ctx := context.Background()
	var once atomic.Bool
	defer server.SetHook(func(_ context.Context, user, stage string) {
		if user != "sb" || stage != "delivered" || !once.CompareAndSwap(false, true) {
			return
		}
		stalled.Store(true)
		testutil.Eventually(t, 10*time.Second, func() error {
			if n, _ := g.rc.Exists(ctx, "redpush:claim:dup").Result(); n != 0 {
				return errors.New("the claim has not expired yet")
			}
			return nil
		})
		g.rc.Set(ctx, "redpush:claim:dup", "another process", time.Minute)
		g.rc.LPush(ctx, "{user_sb_messages}:processing:dup", "theirs")
		stalled.Store(false)
		close(release)
	})()
	c := g.dialReady("sb")
	g.push("sb", "mine")
	if got := c.MustRead(); got != "mine" {
		t.Fatalf("got %q", got)
	}
	select {
	case err := <-g.done:
		g.done <- err
		if !errors.Is(err, redisq.ErrInstanceLost) {
			t.Fatalf("Serve = %v, want ErrInstanceLost", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("still serving after another process took the id")
	}
	// "mine" was delivered and stays unacknowledged: the other process's
	// ack drops it, a duplicate at worst. "theirs" must be there.
	if p, _ := g.rc.LRange(ctx, "{user_sb_messages}:processing:dup", 0, -1).Result(); !slices.Contains(p, "theirs") {
		t.Fatalf("the other process's processing list holds %q: this one acknowledged it", p)
	}
}

// The failure count is shared by every instance serving a queue, so a
// consumer may find it high (another instance's failing tab); one dropped
// connection must then not send a whole batch of innocent messages to the
// dead-letter list: only a message that failed alone goes there.
func TestADroppedConnectionDeadLettersNoBatch(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	ctx := context.Background()
	c := testutil.DialBuffer(t, g.addr, "dl", 4096)
	if got := c.MustRead(); got != "hello;\n" {
		t.Fatalf("greeting %q", got)
	}
	g.push("dl", "first")
	if got := c.MustRead(); got != "first" {
		t.Fatalf("got %q", got)
	}
	g.rc.Set(ctx, "{user_dl_messages}:failures", redisq.DeadAfter-1, time.Hour)
	big := make([]string, 4) // 8 MiB: more than the sockets hold, the write blocks
	for i := range big {
		big[i] = fmt.Sprint(i) + strings.Repeat("x", 2<<20)
	}
	// The idle consumer's BLMOVE takes "go" alone, then the big ones in
	// one batch.
	g.push("dl", append([]string{"go"}, big...)...)
	if got := c.MustRead(); got != "go" {
		t.Fatalf("got %q", got)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		// "go" may still be held there too, until its confirmation.
		if n, _ := g.rc.LLen(ctx, "{user_dl_messages}:processing:test").Result(); n < 4 {
			return fmt.Errorf("%d in flight, want the batch of 4", n)
		}
		return nil
	})
	// The batch's write has begun once its first bytes arrive; then the
	// tab drops.
	_ = c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Conn.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	c.Reset()
	testutil.Eventually(t, 10*time.Second, func() error {
		if n, _ := g.rc.LLen(ctx, "{user_dl_messages}:processing:test").Result(); n != 0 {
			return fmt.Errorf("%d still in flight", n)
		}
		return nil
	})
	dead, _ := g.rc.LLen(ctx, "{user_dl_messages}:dead").Result()
	queued, _ := g.rc.LLen(ctx, "user_dl_messages").Result()
	if dead != 0 || queued != 4 {
		t.Fatalf("%d dead-lettered, %d back in the queue; want 0 and 4", dead, queued)
	}
}

// Ack after write, with every tab stalled: a batch queued for connections
// that never write it is never acknowledged. When the write timeout closes
// them, it goes back to the queue whole, before what came after it.
func TestABatchNoTabWroteIsNeverAcknowledged(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, WriteTimeout: time.Second})
	ctx := context.Background()
	for range 2 { // two tabs, neither reads
		c := testutil.DialBuffer(t, g.addr, "st", 4096)
		if got := c.MustRead(); got != "hello;\n" {
			t.Fatalf("greeting %q", got)
		}
	}
	g.awaitConsumers(1, 5*time.Second)
	big := make([]string, 4) // each more than the sockets hold (4 MiB here)
	for i := range big {
		big[i] = fmt.Sprint(i) + strings.Repeat("x", 6<<20)
	}
	g.push("st", append(big, "later")...)
	g.awaitConsumers(0, 20*time.Second) // both tabs closed by the write timeout
	q, err := g.rc.LRange(ctx, "user_st_messages", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(q) // oldest first
	if want := append(big, "later"); !slices.Equal(q, want) {
		t.Fatalf("queue holds %d messages, want all %d back in order: a batch no tab wrote was acknowledged", len(q), len(want))
	}
	if n, _ := g.rc.LLen(ctx, "{user_st_messages}:processing:test").Result(); n != 0 {
		t.Fatalf("%d left in flight", n)
	}
	if s := g.srv.Snapshot(); s.Delivered != 0 {
		t.Fatalf("%d counted as delivered", s.Delivered)
	}
}

// A page reload: the user's last connection closes and a new one opens
// while the consumer still acknowledges what the old one got. The new
// connection joins the retiring session, so that never two consumers of
// one user share its processing list (the old one's final ack would drop
// what the new one popped, and the new one's start-up requeue would send
// the old batch again).
func TestReconnectDuringRetirementJoinsTheSession(t *testing.T) {
	retiring, resume := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	defer server.SetHook(func(_ context.Context, user, stage string) {
		if user == "rl" && stage == "retiring" && once.CompareAndSwap(false, true) {
			close(retiring)
			<-resume
		}
	})()
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	c1 := g.dialReady("rl")
	g.push("rl", "m1")
	if got := c1.MustRead(); got != "m1" {
		t.Fatalf("got %q", got)
	}
	c1.SendClose()
	<-retiring // m1 delivered, not yet acknowledged; the consumer is held
	c2 := g.dialReady("rl")
	g.push("rl", "m2")
	// While the first consumer is held, nothing may serve the user: a
	// second consumer would requeue m1 and send it again.
	if got, _, err := c2.Read(time.Second); err == nil {
		t.Fatalf("got %q while the user's consumer was retiring: a second consumer served it", got)
	}
	if n := g.srv.Snapshot().Consumers; n != 1 {
		t.Fatalf("%d consumers for one user", n)
	}
	close(resume)
	if got := c2.MustRead(); got != "m2" {
		t.Fatalf("the new connection got %q first, want m2 (m1 was delivered and acknowledged)", got)
	}
}

// A client that stopped reading still has frames on their way to it when
// the server closes it (here: for its silence); the socket lingers, so
// that when the client reads on and sends something (a message, a pong),
// no reset throws away what it had not read yet.
func TestAClosedClientStillGetsWhatWasOnItsWay(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, IdleTimeout: 2 * time.Second})
	c := testutil.DialBuffer(t, g.addr, "lg", 4096)
	if got := c.MustRead(); got != "hello;\n" {
		t.Fatalf("greeting %q", got)
	}
	const n = 60 // about 1 MiB, written (and acknowledged in Redis) into the socket
	for i := range n {
		g.push("lg", fmt.Sprintf("%04d", i)+strings.Repeat("x", 16<<10))
		g.awaitQueueEmpty("lg")
	}
	testutil.Eventually(t, 10*time.Second, func() error { // closed for its silence
		if n := g.srv.Snapshot().Conns; n != 0 {
			return fmt.Errorf("%d connections", n)
		}
		return nil
	})
	got := map[string]bool{}
	for range 10 {
		m := c.MustRead()
		got[m[:4]] = true
	}
	c.Send("back") // arrives at a socket the server has closed its side of
	for {
		m, op, err := c.Read(5 * time.Second)
		if err != nil {
			break
		}
		if op == ws.OpText && len(m) >= 4 {
			got[m[:4]] = true
		}
	}
	c2 := g.dialReady("lg")
	for {
		m, _, err := c2.Read(2 * time.Second)
		if err != nil {
			break
		}
		got[m[:4]] = true
	}
	var missing []int
	for i := range n {
		if !got[fmt.Sprintf("%04d", i)] {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d messages lost (first %v): the socket was reset", len(missing), n, missing[:min(5, len(missing))])
	}
}
