package server_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// A user with a connection on each of three instances sharing one Redis
// (three devices): every connection receives every message once.
func TestEveryConnectionOnEveryInstanceGetsEveryMessage(t *testing.T) {
	rds := testutil.StartRedis(t)
	var gws []*gateway
	for i := range 3 {
		gws = append(gws, startGateway(t, rds, server.Config{Instance: fmt.Sprint("inst", i), Format: server.FormatRaw}))
	}
	everyConnectionGetsEveryMessage(t, rds.Client(), []*redis.Client{rds.Client()}, "42", gws...)
}

// During a rolling upgrade, instances that consume blocking (earlier
// versions, or -consumer blocking) and hinted ones share one Redis: a user
// connected to both gets every message once on each connection.
func TestBlockingAndHintedInstancesShareARedis(t *testing.T) {
	rds := testutil.StartRedis(t)
	blocking := startGateway(t, rds, server.Config{Instance: "old", Format: server.FormatRaw, Consumer: server.ConsumerBlocking})
	hinted := startGateway(t, rds, server.Config{Instance: "new", Format: server.FormatRaw, Consumer: server.ConsumerHinted})
	everyConnectionGetsEveryMessage(t, rds.Client(), []*redis.Client{rds.Client()}, "mixed", blocking, hinted)
}

// everyConnectionGetsEveryMessage connects user to each gateway, waits until
// every gateway subscribed to the user's relay channel (counted on each of
// nodes: on a cluster a subscription lives on one node), pushes messages
// one LPUSH each, so that batches are popped on different instances, and
// checks that every connection received each message exactly once.
func everyConnectionGetsEveryMessage(t *testing.T, producer redis.UniversalClient, nodes []*redis.Client, user string, gws ...*gateway) {
	t.Helper()
	var conns []*testutil.Client
	for _, g := range gws {
		conns = append(conns, g.dialReady(user))
	}
	channel := "{user_" + user + "_messages}:relay"
	testutil.Eventually(t, 5*time.Second, func() error {
		// Every instance says it serves the user (the ack script
		// publishes only then) and listens on the channel.
		if n, err := producer.SCard(t.Context(), "{user_"+user+"_messages}:instances").Result(); err != nil || n != int64(len(gws)) {
			return fmt.Errorf("%d instances serve the user (%v), want %d", n, err, len(gws))
		}
		plain, sharded, err := relaySubscribers(t, nodes, channel)
		if err != nil {
			return err
		}
		// On a Cluster that has it, sharded pub/sub only (SSUBSCRIBE; a
		// plain PUBLISH would cross every node of the cluster bus).
		if shardedRelays(t, producer) {
			plain, sharded = sharded, plain
		}
		if plain != int64(len(gws)) || sharded != 0 {
			return fmt.Errorf("%d subscribers of the expected kind and %d of the other, want %d and 0", plain, sharded, len(gws))
		}
		return nil
	})
	msgs := testutil.Seq("m", 300)
	for _, m := range msgs {
		if err := producer.LPush(t.Context(), "user_"+user+"_messages", m).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range conns {
		seen := map[string]int{}
		for range msgs {
			seen[c.MustRead()]++
		}
		for _, m := range msgs {
			if seen[m] != 1 {
				var odd []string
				for k, n := range seen {
					if n != 1 || !strings.HasPrefix(k, "m-") {
						odd = append(odd, fmt.Sprintf("%q×%d", k, n))
					}
				}
				t.Fatalf("connection on instance %d saw %q %d times; odd frames: %v", i, m, seen[m], odd)
			}
		}
	}
}

// shardedRelays reports whether gateways on the Redis of producer relay
// with sharded pub/sub: on a Cluster that knows SPUBLISH.
func shardedRelays(t *testing.T, producer redis.UniversalClient) bool {
	if _, cluster := producer.(*redis.ClusterClient); !cluster {
		return false
	}
	info, err := producer.Do(t.Context(), "COMMAND", "INFO", "SPUBLISH").Slice()
	if err != nil {
		t.Fatal(err)
	}
	return len(info) == 1 && info[0] != nil
}

// relaySubscribers counts the subscribers of channel over nodes: plain
// (SUBSCRIBE) and sharded (SSUBSCRIBE).
func relaySubscribers(t *testing.T, nodes []*redis.Client, channel string) (plain, sharded int64, err error) {
	for _, node := range nodes {
		subs, err := node.PubSubNumSub(t.Context(), channel).Result()
		if err != nil {
			return 0, 0, err
		}
		shard, err := node.PubSubShardNumSub(t.Context(), channel).Result()
		if err != nil {
			return 0, 0, err
		}
		plain += subs[channel]
		sharded += shard[channel]
	}
	return plain, sharded, nil
}

// A user online on one instance only: its acknowledged batches are not
// published, for nobody else would read them (before, every ack published
// to the instance's own subscription, which read and dropped it). Once a
// second instance serves the user, they are.
func TestAUserOnOneInstanceIsNotRelayed(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	// No presence events: they are publications too.
	a := startGateway(t, rds, server.Config{Instance: "a", Format: server.FormatRaw, PresenceChannel: server.PresenceOff})
	ca := a.dialReady("solo")
	published := func() int64 {
		info := rc.Info(t.Context(), "commandstats").Val()
		_, rest, ok := strings.Cut(info, "cmdstat_publish:calls=")
		if !ok {
			return 0
		}
		var n int64
		fmt.Sscan(strings.FieldsFunc(rest, func(r rune) bool { return r == ',' })[0], &n)
		return n
	}
	push := func(msgs []string) {
		for _, m := range msgs {
			if err := rc.LPush(t.Context(), "user_solo_messages", m).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	acked := func() {
		testutil.Eventually(t, 5*time.Second, func() error {
			if n := rc.LLen(t.Context(), "{user_solo_messages}:processing:a").Val(); n != 0 {
				return fmt.Errorf("%d messages not acknowledged", n)
			}
			return nil
		})
	}
	first := testutil.Seq("m", 50)
	push(first)
	for _, m := range first {
		if got := ca.MustRead(); got != m {
			t.Fatalf("read %q, want %q", got, m)
		}
	}
	acked()
	if n := published(); n != 0 {
		t.Fatalf("%d publications for a user that only instance a serves", n)
	}
	b := startGateway(t, rds, server.Config{Instance: "b", Format: server.FormatRaw, PresenceChannel: server.PresenceOff})
	cb := b.dialReady("solo")
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := rc.SCard(t.Context(), "{user_solo_messages}:instances").Val(); n != 2 {
			return fmt.Errorf("%d instances serve the user", n)
		}
		return nil
	})
	second := testutil.Seq("n", 50)
	push(second)
	for _, c := range []*testutil.Client{ca, cb} {
		for range second {
			c.MustRead()
		}
	}
	if n := published(); n == 0 {
		t.Fatal("no publication with the user on two instances: the count above proves nothing")
	}
}

// Relayed batches reach a connection in the order they were published:
// here 1,000 batches of one message each, published by a (pretend) other
// instance in one pipeline.
func TestRelayedBatchesKeepTheirOrder(t *testing.T) {
	rds := testutil.StartRedis(t)
	g := startGateway(t, rds, server.Config{Instance: "b", Format: server.FormatRaw})
	c := g.dialReady("ord")
	channel := "{user_ord_messages}:relay"
	rc := rds.Client()
	testutil.Eventually(t, 5*time.Second, func() error {
		subs, err := rc.PubSubNumSub(t.Context(), channel).Result()
		if err != nil || subs[channel] != 1 {
			return fmt.Errorf("%v subscribers (%v)", subs[channel], err)
		}
		return nil
	})
	msgs := testutil.Seq("r", 1000)
	pl := rc.Pipeline()
	for _, m := range msgs {
		pl.Publish(t.Context(), channel, fmt.Sprintf("a\n%d:%s", len(m), m))
	}
	if _, err := pl.Exec(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i, want := range msgs {
		if got := c.MustRead(); got != want {
			t.Fatalf("relayed message %d is %q, want %q: relays were reordered", i, got, want)
		}
	}
}
