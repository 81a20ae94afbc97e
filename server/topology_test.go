package server_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// The core delivery behaviour on a real 3-master Redis Cluster, for users
// whose queues live on each of the three masters, and across two instances.
func TestOnRedisCluster(t *testing.T) {
	cl := testutil.StartCluster(t)
	rc := cl.Client()
	users := cl.UsersOnEachMaster("c", func(u string) string { return "user_" + u + "_messages" })
	g := startGatewayAt(t, cl.URL(), rc, server.Config{Instance: "cl-a", Format: server.FormatRaw})
	coreDelivery(t, g, users)

	t.Run("relay across instances", func(t *testing.T) {
		h := startGatewayAt(t, cl.URL(), rc, server.Config{Instance: "cl-b", Format: server.FormatRaw})
		nodes := clusterNodes(cl)
		// A fresh user: relays cross the cluster bus with a lag of up to
		// ~40 ms here, so a new subscriber of a user who was just busy can
		// also get batches popped a moment before it subscribed.
		everyConnectionGetsEveryMessage(t, rc, nodes, "fresh", g, h)
	})

	t.Run("sharded relays come back slot by slot", func(t *testing.T) {
		// Two users whose queues are on one master in two slots: a
		// subscription that resubscribes both in one SSUBSCRIBE (go-redis's
		// PubSub, v9.23) is refused with CROSSSLOT after a reconnect.
		u1, u2, master := usersInTwoSlotsOfOneMaster(t, cl)
		a := startGatewayAt(t, cl.URL(), rc, server.Config{Instance: "sh-a", Format: server.FormatRaw})
		b := startGatewayAt(t, cl.URL(), rc, server.Config{Instance: "sh-b", Format: server.FormatRaw})
		nodes := clusterNodes(cl)
		everyConnectionGetsEveryMessage(t, rc, nodes, u1, a, b)
		everyConnectionGetsEveryMessage(t, rc, nodes, u2, a, b)
		killed := killClients(t, master.Client(), "name=redpush-relay-sh-b ")
		if killed != 1 {
			t.Fatalf("killed %d relay connections of sh-b on %s, want 1 (one per master)", killed, master.Addr())
		}
		everyConnectionGetsEveryMessage(t, rc, nodes, u1, a, b)
		everyConnectionGetsEveryMessage(t, rc, nodes, u2, a, b)

		// A slot moves to another master: Redis drops the shard channels
		// of a slot its node gives up, and the subscriptions follow it;
		// the connection that holds the other slot's channel stays (a
		// refused SSUBSCRIBE, MOVED while the client's slot map lags, is
		// about its one channel).
		held := clientIDs(t, master.Client(), "name=redpush-relay-sh-b ")
		to := cl.MoveSlotOf(t, "user_"+u1+"_messages")
		t.Logf("moved %s's slot from %s to %s", u1, master.Addr(), to)
		everyConnectionGetsEveryMessage(t, rc, nodes, u1, a, b)
		everyConnectionGetsEveryMessage(t, rc, nodes, u2, a, b)
		if now := clientIDs(t, master.Client(), "name=redpush-relay-sh-b "); !slices.Equal(held, now) {
			t.Errorf("the relay connection on %s was %v before the move and %v after: moving %s's slot reconnected %s's", master.Addr(), held, now, u1, u2)
		}
	})

	t.Run("blocking consumers relay sharded too", func(t *testing.T) {
		a := startGatewayAt(t, cl.URL(), rc, server.Config{Instance: "bl-a", Format: server.FormatRaw, Consumer: server.ConsumerBlocking})
		b := startGatewayAt(t, cl.URL(), rc, server.Config{Instance: "bl-b", Format: server.FormatRaw, Consumer: server.ConsumerBlocking})
		everyConnectionGetsEveryMessage(t, rc, clusterNodes(cl), "blu", a, b)
	})

	t.Run("slot moves while delivering", func(t *testing.T) {
		// A gateway of its own, whose Redis clients carry a name, so that
		// CLIENT LIST tells its one consumer from the others.
		k := startGatewayAt(t, cl.URL()+"&client_name=mv-gw", rc, server.Config{Instance: "cl-c", Format: server.FormatRaw})
		c := k.dialReady("mv")
		const total = 300
		moved := make(chan struct{})
		go func() { // the producer, through the cluster client, which follows the slot
			defer close(moved)
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			for i := range total {
				<-tick.C
				for rc.LPush(t.Context(), "user_mv_messages", fmt.Sprint("mv-", i)).Err() != nil {
					<-tick.C
				}
			}
		}()
		seen := map[string]bool{}
		for len(seen) < total/3 {
			seen[c.MustRead()] = true
		}
		from := cl.MasterOf("user_mv_messages")
		to := cl.MoveSlotOf(t, "user_mv_messages")
		t.Logf("moved the slot from %s to %s after %d messages", from, to, len(seen))
		<-moved
		for len(seen) < total {
			seen[c.MustRead()] = true
		}
		for i := range total {
			if m := fmt.Sprint("mv-", i); !seen[m] {
				t.Fatalf("%s never arrived", m)
			}
		}
		// The consumer popped on the new master's hint connection: one
		// per master, each with tracking on, none blocked; and a moved
		// slot was not reported as an outage.
		for _, n := range cl.Nodes {
			var hints, blocked int
			for _, line := range strings.Split(n.Client().ClientList(t.Context()).Val(), "\n") {
				if strings.Contains(line, "name=redpush-hints-cl-c ") && strings.Contains(line, " flags=t") {
					hints++
				}
				if strings.Contains(line, " flags=b ") {
					blocked++
				}
			}
			if hints != 1 || blocked != 0 {
				t.Errorf("%s: %d hint connections of the gateway and %d blocked clients, want 1 and 0", n.Addr(), hints, blocked)
			}
		}
		k.push("mv", "one more")
		if got := c.MustRead(); got != "one more" {
			t.Fatalf("after the move got %q", got)
		}
		if strings.Contains(k.logs.String(), "unreachable") {
			t.Errorf("a moved slot was logged as an outage:\n%s", k.logs.String())
		}
	})
}

// The core delivery behaviour through a Sentinel, then a master failover
// while a producer pushes: delivery resumes and nothing Redis acknowledged
// as replicated (WAIT 1) is lost.
func TestOnRedisSentinel(t *testing.T) {
	sn := testutil.StartSentinel(t)
	rc := sn.Client()
	g := startGatewayAt(t, sn.URL(), rc, server.Config{Instance: "sn", Format: server.FormatRaw})
	coreDelivery(t, g, []string{"s1", "s2"})

	t.Run("failover", func(t *testing.T) {
		c := g.dialReady("f")
		failedOver := make(chan struct{})
		acked := make(chan string, 100000)
		retries := 0
		go func() { // the producer: every 2 ms until 50 messages after the failover
			defer close(acked)
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			after := -1
			for i := 0; after < 50 && i < cap(acked); i++ {
				<-tick.C
				m := fmt.Sprint("f-", i)
				for !pushReplicated(t.Context(), rc, "user_f_messages", m) {
					retries++
					<-tick.C
				}
				acked <- m
				select {
				case <-failedOver:
					after++
				default:
				}
			}
		}()
		seen := map[string]bool{}
		for len(seen) < 100 { // delivery runs before the failover
			seen[c.MustRead()] = true
		}
		began := time.Now()
		sn.Failover()
		close(failedOver)
		t.Logf("failover took %v", time.Since(began))
		var want []string
		for m := range acked {
			want = append(want, m)
		}
		produced := time.Since(began)
		for len(seen) < len(want) {
			seen[c.MustRead()] = true
		}
		for _, m := range want {
			if !seen[m] {
				t.Fatalf("%q was acknowledged by Redis and its replica but never delivered", m)
			}
		}
		t.Logf("%d messages, %d pushes retried; the producer was done %v after the failover began, the client had all %v after",
			len(want), retries, produced, time.Since(began))
	})
}

// pushReplicated LPUSHes m and WAITs for one replica to acknowledge it, on
// one connection (WAIT counts the writes of its own connection). It reports
// false when either failed, as during a failover: the producer retries,
// which may push m twice, never zero times.
func pushReplicated(ctx context.Context, rc redis.Cmdable, key, m string) bool {
	var wait *redis.Cmd
	_, err := rc.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.LPush(ctx, key, m)
		wait = p.Do(ctx, "WAIT", 1, 200) // one replica, 200 ms
		return nil
	})
	n, _ := wait.Int64()
	return err == nil && n >= 1
}

// coreDelivery runs the core behaviour against g for users: backlog in
// order on connect, the greeting and echo, FIFO pushes, two tabs, and the
// consumer stopping when the user leaves, with later messages kept.
func coreDelivery(t *testing.T, g *gateway, users []string) {
	t.Run("core delivery", func(t *testing.T) {
		backlog := testutil.Seq("old", 20)
		for _, u := range users {
			g.push(u, backlog...)
		}
		conns := map[string]*testutil.Client{}
		for _, u := range users {
			conns[u] = g.dialReady(u)
			expect(t, conns[u], backlog)
			conns[u].Send("hi")
			expect(t, conns[u], []string{"hello"})
		}
		msgs := testutil.Seq("new", 100)
		for _, m := range msgs { // one LPUSH each: many small batches
			for _, u := range users {
				g.push(u, u+m)
			}
		}
		for _, u := range users {
			for _, m := range msgs {
				expect(t, conns[u], []string{u + m})
			}
		}
		u := users[0]
		tab2 := g.dialReady(u)
		// The greeting goes out before the connection is registered: a
		// push must wait for that, or it may reach the first tab alone.
		testutil.Eventually(t, 5*time.Second, func() error {
			if n := g.srv.Snapshot().Conns; n != len(users)+1 {
				return fmt.Errorf("%d connections registered, want %d", n, len(users)+1)
			}
			return nil
		})
		g.push(u, "both")
		expect(t, conns[u], []string{"both"})
		expect(t, tab2, []string{"both"})

		for _, c := range conns {
			c.SendClose()
		}
		tab2.Reset()
		g.awaitConsumers(0, 5*time.Second)
		g.push(u, "later")
		if n, err := g.rc.LLen(t.Context(), "user_"+u+"_messages").Result(); err != nil || n != 1 {
			t.Fatalf("queue length = %d (%v), want the message to wait in Redis", n, err)
		}
		expect(t, g.dialReady(u), []string{"later"})
	})
}

func expect(t *testing.T, c *testutil.Client, want []string) {
	t.Helper()
	for _, w := range want {
		if got := c.MustRead(); got != w {
			t.Fatalf("got %q, want %q", got, w)
		}
	}
}

// A Cluster without sharded pub/sub (Redis < 7: here SPUBLISH is renamed
// away): relays fall back to PUBLISH and SUBSCRIBE, and still flow.
func TestOnAClusterWithoutShardedPubSub(t *testing.T) {
	cl := testutil.StartCluster(t, "--rename-command", "SPUBLISH", "spublish-hidden-by-the-test")
	rc := cl.Client()
	if shardedRelays(t, rc) {
		t.Fatal("the cluster still knows SPUBLISH")
	}
	a := startGatewayAt(t, cl.URL(), rc, server.Config{Instance: "ns-a", Format: server.FormatRaw})
	b := startGatewayAt(t, cl.URL(), rc, server.Config{Instance: "ns-b", Format: server.FormatRaw})
	everyConnectionGetsEveryMessage(t, rc, clusterNodes(cl), "plain", a, b)
}

// A Cluster whose ACL forbids @dangerous (INFO, CLIENT KILL: hinted
// consumption falls back to blocking): sharded relays need none of it.
func TestOnAClusterWithoutDangerousCommands(t *testing.T) {
	cl := testutil.StartCluster(t)
	rc := cl.Client()
	for _, n := range cl.Nodes {
		if err := n.Client().Do(t.Context(), "ACL", "SETUSER", "lim", "on", ">pw", "~*", "&*", "+@all", "-@dangerous").Err(); err != nil {
			t.Fatal(err)
		}
	}
	url := "redis://lim:pw@" + cl.Nodes[0].Addr() + "?addr=" + cl.Nodes[1].Addr() + "&addr=" + cl.Nodes[2].Addr()
	a := startGatewayAt(t, url, rc, server.Config{Instance: "acl-a", Format: server.FormatRaw})
	b := startGatewayAt(t, url, rc, server.Config{Instance: "acl-b", Format: server.FormatRaw})
	everyConnectionGetsEveryMessage(t, rc, clusterNodes(cl), "aclu", a, b)
}

// A master that is gone for good (no replica here): its relay connection
// is tried again with a growing backoff, not in a tight loop.
func TestADeadMasterIsNotRedialledInALoop(t *testing.T) {
	cl := testutil.StartCluster(t)
	rc := cl.Client()
	users := cl.UsersOnEachMaster("dm", func(u string) string { return "user_" + u + "_messages" })
	g := startGatewayAt(t, cl.URL(), rc, server.Config{Instance: "dm", Format: server.FormatRaw})
	for _, u := range users {
		g.dialReady(u)
	}
	dead := cl.MasterOf("user_" + users[0] + "_messages")
	channel := "{user_" + users[0] + "_messages}:relay"
	testutil.Eventually(t, 5*time.Second, func() error {
		if _, n, err := relaySubscribers(t, clusterNodes(cl), channel); err != nil || n != 1 {
			return fmt.Errorf("%d sharded subscribers (%v), want 1", n, err)
		}
		return nil
	})
	for _, n := range cl.Nodes {
		if n.Addr() == dead {
			n.Stop()
		}
	}
	// Over 4 s the dead master's cooldown (50 ms, 100, 200, … 2 s) allows
	// about 7 attempts; at a constant 50 ms, dozens. Meanwhile users keep
	// coming, on the live masters (their subscriptions are confirmed:
	// that must not shorten the dead one's cooldown, as a backoff shared
	// by all masters did) and on the dead one (a new channel for its
	// slots must not dial it at once).
	ended := regexp.MustCompile(`relay subscription to a cluster master ended.*addr=` + regexp.QuoteMeta(dead))
	window := time.Now().Add(4 * time.Second)
	for i := 0; time.Now().Before(window); i++ {
		u := fmt.Sprint("dm-new", i)
		g.dialReady(u)
		time.Sleep(50 * time.Millisecond) // pacing the arrivals, not synchronising
	}
	switch n := len(ended.FindAllString(g.logs.String(), -1)); {
	case n > 12:
		t.Errorf("%d attempts in 4 s to reach a dead master: its cooldown does not grow", n)
	case n < 2:
		t.Errorf("%d attempts in 4 s to reach a dead master: it is not tried again (or the log line changed)", n)
	default:
		t.Logf("%d attempts in 4 s to reach a dead master", n)
	}
}

// usersInTwoSlotsOfOneMaster returns two users whose queues live on the
// same master in different slots, and that master.
func usersInTwoSlotsOfOneMaster(t *testing.T, cl *testutil.Cluster) (string, string, *testutil.Redis) {
	t.Helper()
	key := func(u string) string { return "user_" + u + "_messages" }
	first := map[string]string{} // master → first user found there
	for i := range 1000 {
		u := fmt.Sprint("sh", i)
		m := cl.MasterOf(key(u))
		prev, ok := first[m]
		if !ok {
			first[m] = u
			continue
		}
		rc := cl.Nodes[0].Client()
		if rc.ClusterKeySlot(t.Context(), key(prev)).Val() == rc.ClusterKeySlot(t.Context(), key(u)).Val() {
			continue
		}
		for _, n := range cl.Nodes {
			if n.Addr() == m {
				return prev, u, n
			}
		}
	}
	t.Fatal("no two users in two slots of one master")
	return "", "", nil
}

func clusterNodes(cl *testutil.Cluster) []*redis.Client {
	var nodes []*redis.Client
	for _, n := range cl.Nodes {
		nodes = append(nodes, n.Client())
	}
	return nodes
}

// killClients kills the clients of node whose CLIENT LIST line contains
// match, and says how many.
func killClients(t *testing.T, node *redis.Client, match string) int {
	t.Helper()
	ids := clientIDs(t, node, match)
	for _, id := range ids {
		if err := node.Do(t.Context(), "CLIENT", "KILL", "ID", id).Err(); err != nil {
			t.Fatal(err)
		}
	}
	return len(ids)
}

// clientIDs lists the ids of the clients of node whose CLIENT LIST line
// contains match.
func clientIDs(t *testing.T, node *redis.Client, match string) []string {
	t.Helper()
	var ids []string
	for _, line := range strings.Split(node.ClientList(t.Context()).Val(), "\n") {
		if strings.Contains(line, match) {
			id, _, _ := strings.Cut(strings.TrimPrefix(line, "id="), " ")
			ids = append(ids, id)
		}
	}
	return ids
}
