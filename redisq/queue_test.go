package redisq_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
)

func newQueue(t *testing.T, batch int) (*redisq.Queue, *testutil.Redis) {
	t.Helper()
	rds := testutil.StartRedis(t)
	c, err := redisq.Dial(context.Background(), rds.URL(), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	q, err := redisq.New(c.Blocking, c.Command, redisq.Config{Instance: "i1", Batch: batch, Round: time.Second, WakeRound: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return q, rds
}

func TestKeys(t *testing.T) {
	q, _ := newQueue(t, 0)
	if got := q.Key("42"); got != "user_42_messages" {
		t.Errorf("Key = %q", got)
	}
	if got := q.ProcessingKey("42"); got != "{user_42_messages}:processing:i1" {
		t.Errorf("ProcessingKey = %q", got)
	}
}

func TestPopAckRequeueKeepOrder(t *testing.T) {
	q, rds := newQueue(t, 3)
	rc := rds.Client()
	ctx := context.Background()
	rc.LPush(ctx, q.Key("u"), "m1", "m2", "m3", "m4", "m5")

	got, err := q.AckPop(ctx, "u")
	if err != nil || !slices.Equal(got, []string{"m1", "m2", "m3"}) {
		t.Fatalf("Pop = %v, %v; want the oldest three, oldest first", got, err)
	}
	if n, _ := rc.LLen(ctx, q.ProcessingKey("u")).Result(); n != 3 {
		t.Fatalf("processing holds %d, want 3", n)
	}
	// A failed write: everything goes back to where it is read next.
	if n, err := q.Requeue(ctx, "u"); err != nil || n != 3 {
		t.Fatalf("Requeue = %d, %v", n, err)
	}
	got, _ = q.AckPop(ctx, "u")
	if !slices.Equal(got, []string{"m1", "m2", "m3"}) {
		t.Fatalf("after requeue Pop = %v, want the same three in order", got)
	}
	got, _ = q.AckPop(ctx, "u") // acks m1-m3
	if !slices.Equal(got, []string{"m4", "m5"}) {
		t.Fatalf("Pop = %v, want m4 m5", got)
	}
	if err := q.Ack(ctx, "u"); err != nil {
		t.Fatal(err)
	}
	if n, _ := rc.Exists(ctx, q.ProcessingKey("u"), q.Key("u")).Result(); n != 0 {
		t.Fatalf("%d keys left after all acks", n)
	}
}

func TestBlockerPopBlocksOneRoundThenWakesOnPush(t *testing.T) {
	q, rds := newQueue(t, 10) // 1 s rounds
	ctx := context.Background()
	b := q.Blocker()
	defer b.Close()
	start := time.Now()
	got, err := b.Pop(ctx, "idle")
	if err != nil || len(got) != 0 {
		t.Fatalf("Pop on empty = %v, %v", got, err)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Fatalf("empty Pop returned after %v, want one round", took)
	}
	done := make(chan []string)
	go func() {
		for {
			if m, _ := b.Pop(ctx, "idle"); len(m) > 0 {
				done <- m
				return
			}
		}
	}()
	rds.Client().LPush(ctx, q.Key("idle"), "wake", "second")
	if m := <-done; !slices.Equal(m, []string{"wake"}) {
		t.Fatalf("got %v, want the oldest", m)
	}
	// The burst behind it comes with the ack, in a batch.
	if m, err := q.AckPop(ctx, "idle"); err != nil || !slices.Equal(m, []string{"second"}) {
		t.Fatalf("AckPop = %v, %v", m, err)
	}
	if p, _ := rds.Client().LRange(ctx, q.ProcessingKey("idle"), 0, -1).Result(); !slices.Equal(p, []string{"second"}) {
		t.Fatalf("processing = %v, want only the unacked message", p)
	}
}

func TestRecoverReturnsOnlyThisInstancesLists(t *testing.T) {
	q, rds := newQueue(t, 10)
	rc := rds.Client()
	ctx := context.Background()
	rc.LPush(ctx, "user_a_messages", "a1", "a2", "a3")
	rc.LPush(ctx, "user_b_messages", "b1", "b2")
	q.AckPop(ctx, "a") // "crash" with both popped and unacked
	q.AckPop(ctx, "b")
	rc.RPush(ctx, "{user_c_messages}:processing:i2", "other instance")

	lists, msgs, err := q.Recover(ctx)
	if err != nil || lists != 2 || msgs != 5 {
		t.Fatalf("Recover = %d lists, %d msgs, %v; want 2, 5", lists, msgs, err)
	}
	for key, want := range map[string][]string{
		"user_a_messages":                 {"a3", "a2", "a1"}, // LRANGE order: oldest at the right
		"user_b_messages":                 {"b2", "b1"},
		"{user_c_messages}:processing:i2": {"other instance"},
	} {
		got, _ := rc.LRange(ctx, key, 0, -1).Result()
		if !slices.Equal(got, want) {
			t.Errorf("%s = %v, want %v", key, got, want)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		cfg  redisq.Config
		want error
	}{
		{redisq.Config{Instance: "i", KeyPattern: "no-placeholder"}, redisq.ErrBadPattern},
		{redisq.Config{Instance: "i", KeyPattern: "%s-%s"}, redisq.ErrBadPattern},
		{redisq.Config{Instance: "i", KeyPattern: "{%s}"}, redisq.ErrBadPattern},
		{redisq.Config{Instance: ""}, redisq.ErrBadInstance},
		{redisq.Config{Instance: "a*b"}, redisq.ErrBadInstance},
		{redisq.Config{Instance: "host-9502"}, nil},
	} {
		if _, err := redisq.New(nil, nil, tc.cfg); !errors.Is(err, tc.want) {
			t.Errorf("New(%+v) = %v, want %v", tc.cfg, err, tc.want)
		}
	}
}

func TestDialErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := redisq.Dial(ctx, "http://x", 1); !errors.Is(err, redisq.ErrBadURL) {
		t.Errorf("bad scheme: %v", err)
	}
	port := testutil.FreePort(t)
	_, err := redisq.Dial(ctx, "redis://127.0.0.1:"+strconv.Itoa(port), 1)
	if !errors.Is(err, redisq.ErrUnreachable) || strings.Contains(err.Error(), "\n") {
		t.Errorf("unreachable: %v", err)
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		"42": true, "a.b:c-d_e": true, strings.Repeat("x", 128): true,
		"": false, strings.Repeat("x", 129): false, "a b": false, "{x}": false,
		"a*": false, "é": false, "a\n": false,
	} {
		if got := redisq.ValidID(id); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestAckPopAcksAndTakesTheNextBatch(t *testing.T) {
	q, rds := newQueue(t, 2)
	rc := rds.Client()
	ctx := context.Background()
	rc.LPush(ctx, q.Key("u"), "m1", "m2", "m3")
	q.AckPop(ctx, "u")
	got, err := q.AckPop(ctx, "u")
	if err != nil || !slices.Equal(got, []string{"m3"}) {
		t.Fatalf("AckPop = %v, %v; want m3", got, err)
	}
	if p, _ := rc.LRange(ctx, q.ProcessingKey("u"), 0, -1).Result(); !slices.Equal(p, []string{"m3"}) {
		t.Fatalf("processing = %v, want only the new batch", p)
	}
	if got, err := q.AckPop(ctx, "u"); err != nil || len(got) != 0 {
		t.Fatalf("AckPop on an empty queue = %v, %v", got, err)
	}
	if n, _ := rc.Exists(ctx, q.ProcessingKey("u")).Result(); n != 0 {
		t.Fatal("processing list left after the last ack")
	}
}

func TestBlockerWakeEndsABlockedPopAtOnce(t *testing.T) {
	rds := testutil.StartRedis(t)
	c, err := redisq.Dial(context.Background(), rds.URL(), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q, _ := redisq.New(c.Blocking, c.Command, redisq.Config{Instance: "i1", WakeRound: 30 * time.Second})
	b := q.Blocker()
	defer b.Close()
	ctx := context.Background()
	if woke, err := b.Wake(ctx); woke || err != nil {
		t.Fatalf("Wake before any Pop = %v, %v; want false", woke, err)
	}
	type popResult struct {
		msgs []string
		err  error
		took time.Duration
	}
	done := make(chan popResult)
	go func() {
		start := time.Now()
		m, err := b.Pop(ctx, "w")
		done <- popResult{m, err, time.Since(start)}
	}()
	testutil.Eventually(t, 5*time.Second, func() error {
		if woke, err := b.Wake(ctx); !woke {
			return fmt.Errorf("not blocked yet (%v)", err)
		}
		return nil
	})
	r := <-done
	if r.err != nil || len(r.msgs) != 0 || r.took > 5*time.Second {
		t.Fatalf("woken Pop = %v, %v after %v; want empty, at once, not after the 30s round", r.msgs, r.err, r.took)
	}
	// After Redis restarts the Blocker dials a new connection.
	rds.Restart()
	rds.Client().LPush(ctx, q.Key("w"), "after restart")
	testutil.Eventually(t, 10*time.Second, func() error {
		m, err := b.Pop(ctx, "w") // fails while the old connections are found dead
		if err == nil && !slices.Equal(m, []string{"after restart"}) {
			t.Fatalf("Pop after restart = %v", m)
		}
		return err
	})
}

func TestReclaimDeadReturnsOnlyDeadInstancesLists(t *testing.T) {
	rds, mk := startQueues(t)
	ctx := context.Background()
	live, dead, me := mk(redisq.Config{Instance: "live"}), mk(redisq.Config{Instance: "dead"}), mk(redisq.Config{Instance: "me"})
	rc := rds.Client()
	rc.LPush(ctx, "user_l_messages", "l1")
	rc.LPush(ctx, "user_d_messages", "d1", "d2")
	for _, q := range []*redisq.Queue{live, dead} { // both "crash" with a batch in flight
		if err := q.Register(ctx, q.Instance()[:1]); err != nil {
			t.Fatal(err)
		}
		if _, err := q.AckPop(ctx, q.Instance()[:1]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := live.Heartbeat(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := dead.Heartbeat(ctx, 20*time.Millisecond); err != nil { // it lived, then died
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n, _ := rc.Exists(ctx, "redpush:instance:dead").Result(); n != 0 {
			return errors.New("the dead instance's heartbeat has not expired yet")
		}
		return nil
	})
	lists, msgs, err := me.ReclaimDead(ctx)
	if err != nil || lists != 1 || msgs != 2 {
		t.Fatalf("ReclaimDead = %d, %d, %v; want the dead instance's one list of 2", lists, msgs, err)
	}
	if got, _ := rc.LRange(ctx, "user_d_messages", 0, -1).Result(); !slices.Equal(got, []string{"d2", "d1"}) {
		t.Fatalf("dead instance's queue = %v, want d1 next", got)
	}
	if n, _ := rc.LLen(ctx, live.ProcessingKey("l")).Result(); n != 1 {
		t.Fatal("a live instance's in-flight message was taken")
	}
	if m, _ := rc.SMembers(ctx, "redpush:instances").Result(); slices.Contains(m, "dead") || !slices.Contains(m, "live") {
		t.Fatalf("registered instances %v: want the dead one gone, the live one kept", m)
	}
}

// ReclaimDead reads the registry: no SCAN, and the same few commands
// whether the keyspace holds ten keys or ten thousand. A processing list
// the registry does not know (left by a version without it) is found by
// the slow safety net, ReclaimDeadScan.
func TestReclaimDeadDoesNotGrowWithTheKeyspace(t *testing.T) {
	q, rds := newQueue(t, 10)
	ctx := context.Background()
	rc := rds.Client()
	if _, err := q.Heartbeat(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	// A dead instance's legacy list: in the keyspace, not in the registry.
	rc.RPush(ctx, "{user_old_messages}:processing:gone", "o1")
	mon := rds.StartMonitor()
	count := func() int {
		from := mon.Mark(fmt.Sprint("from-", time.Now().UnixNano()))
		if _, _, err := q.ReclaimDead(ctx); err != nil {
			t.Fatal(err)
		}
		to := mon.Mark(fmt.Sprint("to-", time.Now().UnixNano()))
		lines := mon.Lines()[from+1 : to]
		for _, l := range lines {
			if strings.Contains(strings.ToUpper(l), `"SCAN"`) {
				t.Fatalf("ReclaimDead scanned the keyspace: %s", l)
			}
		}
		return len(lines)
	}
	few := count()
	p := rc.Pipeline()
	for i := range 10000 {
		p.Set(ctx, fmt.Sprint("unrelated:", i), "x", 0)
	}
	if _, err := p.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if many := count(); many != few {
		t.Fatalf("ReclaimDead ran %d commands with 10,000 more keys, %d without", many, few)
	}
	if n, _ := rc.LLen(ctx, "user_old_messages").Result(); n != 0 {
		t.Fatal("ReclaimDead found a list the registry does not know: it scanned")
	}
	if lists, msgs, err := q.ReclaimDeadScan(ctx); err != nil || lists != 1 || msgs != 1 {
		t.Fatalf("ReclaimDeadScan = %d, %d, %v; want the legacy list of 1", lists, msgs, err)
	}
}

func TestAckRelaysTheDeliveredBatch(t *testing.T) {
	q, rds := newQueue(t, 10)
	ctx := context.Background()
	rc := rds.Client()
	sub := rc.Subscribe(ctx, q.RelayChannel("r"))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	msgs := []string{"first", "\xff\x00binary:with\ncolons", ""}
	rc.LPush(ctx, q.Key("r"), testutil.Any(msgs)...)
	if err := q.Register(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	// Another instance serves the user too: the batch is published for it.
	rc.SAdd(ctx, "{user_r_messages}:instances", "i2")
	q.AckPop(ctx, "r")
	if err := q.Ack(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := sub.ReceiveMessage(rctx)
	if err != nil {
		t.Fatal(err)
	}
	origin, got, err := redisq.ParseRelay(m.Payload)
	if err != nil || origin != "i1" || !slices.Equal(got, msgs) {
		t.Fatalf("relay = %q %q %v, want i1 and the batch in order", origin, got, err)
	}
	for _, bad := range []string{"", "i1", "i1\n3:ab", "i1\nx:abc"} {
		if _, _, err := redisq.ParseRelay(bad); err == nil {
			t.Errorf("ParseRelay(%q) accepted", bad)
		}
	}
}

// go-redis runs a command again when the connection broke before the reply
// came; AckPop run twice must not ack the batch its first run popped.
func TestReplayedAckPopReturnsTheSameBatch(t *testing.T) {
	q, rds := newQueue(t, 2)
	rc := rds.Client()
	ctx := context.Background()
	rc.LPush(ctx, q.Key("u"), "m1", "m2", "m3", "m4")
	first, err := q.AckPopToken(ctx, "u", ackAll, 2, 7)
	if err != nil || !slices.Equal(first, []string{"m1", "m2"}) {
		t.Fatalf("AckPop = %v, %v", first, err)
	}
	again, err := q.AckPopToken(ctx, "u", ackAll, 2, 7) // the reply was lost; go-redis retries
	if err != nil || !slices.Equal(again, first) {
		t.Fatalf("replayed AckPop = %v, %v; want the same batch %v", again, err, first)
	}
	if q := rc.LRange(ctx, q.Key("u"), 0, -1).Val(); !slices.Equal(q, []string{"m4", "m3"}) {
		t.Fatalf("queue = %v after the replay, want it untouched", q)
	}
	next, err := q.AckPopToken(ctx, "u", ackAll, 2, 8)
	if err != nil || !slices.Equal(next, []string{"m3", "m4"}) {
		t.Fatalf("next AckPop = %v, %v", next, err)
	}
}

// A refused CLIENT ID (NOPERM while an ACL or a password is being rotated)
// is no reason to give up waking consumers for the life of the process:
// once the command is allowed again, Wake works. Only a server that has no
// CLIENT ID at all (the embedded Redis) makes consumers fall back to short
// rounds for good.
func TestBlockerWakeSurvivesARefusedClientID(t *testing.T) {
	rds := testutil.StartRedis(t)
	ctx := context.Background()
	admin := rds.Client()
	c, err := redisq.Dial(ctx, rds.UserURL("rot", "-client"), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const round = 200 * time.Millisecond
	defer redisq.SetRefuseAgainAfter(time.Second)()
	q, _ := redisq.New(c.Blocking, c.Command, redisq.Config{Instance: "i1", Round: round, WakeRound: 30 * time.Second})
	b := q.Blocker()
	defer b.Close()
	// Refused, Pop blocks in short rounds on the shared connections: it
	// neither fails (the consumer would count an outage, requeue and retry
	// at once, forever) nor asks CLIENT ID again before a second passed.
	admin.LPush(ctx, q.Key("w"), "m")
	if msgs, err := b.Pop(ctx, "w"); err != nil || len(msgs) != 1 {
		t.Fatalf("Pop with CLIENT refused = %v, %v; want the message by the short-round fallback", msgs, err)
	}
	if err := q.Ack(ctx, "w"); err != nil {
		t.Fatal(err)
	}
	start, pops := time.Now(), 0
	for time.Since(start) < 600*time.Millisecond {
		if _, err := b.Pop(ctx, "w"); err != nil {
			t.Fatalf("idle Pop with CLIENT refused: %v", err)
		}
		pops++
	}
	if want := int(600*time.Millisecond/round) + 1; pops > want {
		t.Fatalf("%d idle Pops in 600 ms, want at most %d: rounds are not blocking", pops, want)
	}
	if err := admin.Do(ctx, "ACL", "SETUSER", "rot", "+client").Err(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := b.Pop(ctx, "w"); done <- err }()
	testutil.Eventually(t, 10*time.Second, func() error {
		if woke, err := b.Wake(ctx); !woke {
			return fmt.Errorf("Wake does not end the Pop (%v): the fallback latched", err)
		}
		return nil
	})
	if err := <-done; err != nil {
		t.Fatalf("woken Pop: %v", err)
	}
}

// A claim that nobody renews (its process was killed) is taken over once
// it expires; one that is renewed is a live process's, and Claim fails.
func TestClaimTakesOverOnlyADeadClaim(t *testing.T) {
	q, rds := newQueue(t, 1)
	ctx := context.Background()
	rc := rds.Client()
	rc.Set(ctx, "redpush:claim:i1", "killed", 1500*time.Millisecond)
	c, err := q.Claim(ctx)
	if err != nil {
		t.Fatalf("Claim over an expiring claim: %v", err)
	}
	if err := c.Renew(ctx); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	// A second claimant while the first renews: refused.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(redisq.ClaimEvery)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				_ = c.Renew(ctx)
			}
		}
	}()
	if _, err := q.Claim(ctx); !errors.Is(err, redisq.ErrInstanceTaken) {
		t.Fatalf("second Claim = %v, want ErrInstanceTaken", err)
	}
	close(stop)
	<-done
	rc.Set(ctx, "redpush:claim:i1", "usurper", time.Minute)
	if err := c.Renew(ctx); !errors.Is(err, redisq.ErrInstanceLost) {
		t.Fatalf("Renew after another took the id = %v, want ErrInstanceLost", err)
	}
	if err := c.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := rc.Get(ctx, "redpush:claim:i1").Result(); v != "usurper" {
		t.Fatalf("Release removed another process's claim (%q left)", v)
	}
}

// A consumer holds several batches whose delivery is not confirmed yet and
// acknowledges them oldest first: AckPopToken's acked drops exactly that
// many of the oldest messages, relays them in order, and leaves the newer
// ones in the processing list, where Requeue returns them in order.
func TestPartialAckDropsTheOldestAndKeepsTheRest(t *testing.T) {
	q, rds := newQueue(t, 2)
	ctx := context.Background()
	rc := rds.Client()
	sub := rc.Subscribe(ctx, q.RelayChannel("p"))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	rc.LPush(ctx, q.Key("p"), "m1", "m2", "m3", "m4", "m5", "m6")
	rc.SAdd(ctx, "{user_p_messages}:instances", "other") // another instance serves the user: acks are relayed
	for _, want := range [][]string{{"m1", "m2"}, {"m3", "m4"}} {
		got, err := q.AckPopToken(ctx, "p", redisq.Acks{Held: redisq.Unchecked}, 2, q.NewToken())
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("pop without ack = %v, %v; want %v", got, err, want)
		}
	}
	// m1..m3 confirmed: acked with the next pop, which brings m5 m6.
	got, err := q.AckPopToken(ctx, "p", redisq.Acks{Oldest: 3, Held: 4}, 2, q.NewToken())
	if err != nil || !slices.Equal(got, []string{"m5", "m6"}) {
		t.Fatalf("AckPopToken(3) = %v, %v", got, err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := sub.ReceiveMessage(rctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, relayed, _ := redisq.ParseRelay(m.Payload); !slices.Equal(relayed, []string{"m1", "m2", "m3"}) {
		t.Fatalf("relayed %q, want the three acknowledged, oldest first", relayed)
	}
	if held := rc.LRange(ctx, q.ProcessingKey("p"), 0, -1).Val(); !slices.Equal(held, []string{"m6", "m5", "m4"}) {
		t.Fatalf("processing list = %v, want m4 m5 m6 (newest left)", held)
	}
	if n, err := q.Requeue(ctx, "p"); err != nil || n != 3 {
		t.Fatalf("Requeue = %d, %v", n, err)
	}
	got, _ = q.AckPopToken(ctx, "p", redisq.Acks{Held: 0}, 3, q.NewToken())
	if !slices.Equal(got, []string{"m4", "m5", "m6"}) {
		t.Fatalf("after Requeue = %v, want m4 m5 m6 in order", got)
	}
}

// An acknowledgement that pops nothing, replayed by go-redis after its
// reply was lost, must not acknowledge the next messages as well.
func TestReplayedAckAcknowledgesNothingMore(t *testing.T) {
	q, rds := newQueue(t, 4)
	ctx := context.Background()
	rc := rds.Client()
	rc.LPush(ctx, q.Key("u"), "m1", "m2", "m3", "m4")
	if got, _ := q.AckPopToken(ctx, "u", redisq.Acks{Held: 0}, 4, q.NewToken()); len(got) != 4 {
		t.Fatalf("pop = %v", got)
	}
	const token = 99
	for range 2 { // the call, and its replay
		if got, err := q.AckPopToken(ctx, "u", redisq.Acks{Oldest: 1, Held: 4}, 0, token); err != nil || len(got) != 0 {
			t.Fatalf("ack of one = %v, %v", got, err)
		}
	}
	if held := rc.LRange(ctx, q.ProcessingKey("u"), 0, -1).Val(); !slices.Equal(held, []string{"m4", "m3", "m2"}) {
		t.Fatalf("processing list = %v after an ack of one and its replay, want m2 m3 m4", held)
	}
}

var ackAll = redisq.Acks{Oldest: redisq.AckAll, Held: redisq.Unchecked}

// Acknowledging by count trusts that the processing list holds what the
// consumer holds. When it does not (here another instance returned it to
// the queue, taking this one for dead), acknowledging "the oldest two"
// would drop messages nobody delivered: the call changes nothing and says
// so.
func TestAnAckOfAListThatDivergedChangesNothing(t *testing.T) {
	q, rds := newQueue(t, 2)
	ctx := context.Background()
	rc := rds.Client()
	rc.LPush(ctx, q.Key("d"), "m1", "m2", "m3", "m4")
	if got, _ := q.AckPopToken(ctx, "d", redisq.Acks{Held: 0}, 2, q.NewToken()); len(got) != 2 {
		t.Fatalf("pop = %v", got)
	}
	// Taken back behind the consumer's back, then one more popped in.
	if n, _ := q.Requeue(ctx, "d"); n != 2 {
		t.Fatalf("requeue moved %d", n)
	}
	rc.LMove(ctx, q.Key("d"), q.ProcessingKey("d"), "RIGHT", "LEFT")
	_, err := q.AckPopToken(ctx, "d", redisq.Acks{Oldest: 2, Held: 2}, 2, q.NewToken())
	if !errors.Is(err, redisq.ErrDiverged) {
		t.Fatalf("ack of 2 with 1 held = %v, want ErrDiverged", err)
	}
	if held := rc.LRange(ctx, q.ProcessingKey("d"), 0, -1).Val(); !slices.Equal(held, []string{"m1"}) {
		t.Fatalf("processing list = %v, want it untouched", held)
	}
	if queued := rc.LLen(ctx, q.Key("d")).Val(); queued != 3 {
		t.Fatalf("queue holds %d, want 3: nothing popped", queued)
	}
}
