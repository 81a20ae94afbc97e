package redisq_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/redisq"
)

// An instance's presence entry: set, refreshed (its score ahead, the keys'
// expiry extended only when asked), set again when it went missing, with
// the events that says; another instance's entry left as it is.
func TestPresenceEntries(t *testing.T) {
	rds, mk := startQueues(t)
	ctx := context.Background()
	rc := rds.Client()
	events := subscribe(t, rc, "ev")
	event := func() string {
		t.Helper()
		select {
		case m := <-events:
			return m.Payload
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
			return ""
		}
	}
	a := mk(redisq.Config{Instance: "a", PresenceChannel: "ev"})
	b := mk(redisq.Config{Instance: "b", PresenceChannel: "ev"})
	const ttl = 30 * time.Second
	key, conns := a.PresenceKey("u"), "{user_u_messages}:connections"
	score := func(inst string) float64 {
		t.Helper()
		s, err := rc.ZScore(ctx, key, inst).Result()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	must := func(failed []redisq.PresenceUpdate, err error) {
		t.Helper()
		if err != nil || len(failed) > 0 {
			t.Fatalf("failed %v: %v", failed, err)
		}
	}
	refresh := func(q *redisq.Queue, conns int, extend bool) []redisq.PresenceUpdate {
		t.Helper()
		missing, failed, err := q.RefreshPresence(ctx, []redisq.PresenceUpdate{{User: "u", Conns: conns}}, ttl, extend)
		must(failed, err)
		return missing
	}

	must(a.SetPresence(ctx, []redisq.PresenceUpdate{{User: "u", Conns: 2}}, ttl))
	if e := event(); e != `{"user":"u","event":"online"}` {
		t.Fatalf("event %s", e)
	}
	now := float64(time.Now().UnixMilli())
	if s := score("a"); s < now+25e3 || s > now+35e3 {
		t.Fatalf("score %v, want about now + 30 s (%v)", s, now+30e3)
	}
	if n := rc.HGet(ctx, conns, "a").Val(); n != "2" {
		t.Fatalf("connections %q", n)
	}
	keep := rc.PTTL(ctx, key).Val()
	if keep < 10*time.Minute {
		t.Fatalf("the key expires in %v, want ttl + 10 min", keep)
	}
	must(b.SetPresence(ctx, []redisq.PresenceUpdate{{User: "u", Conns: 1}}, ttl)) // no event: u was online

	// A refresh without extend moves the score, not the expiry.
	before := score("a")
	rc.PExpire(ctx, key, time.Hour)
	time.Sleep(5 * time.Millisecond) // a score in a later millisecond
	if missing := refresh(a, 2, false); len(missing) != 0 {
		t.Fatalf("missing %v", missing)
	}
	if s := score("a"); s <= before {
		t.Fatalf("score %v after the refresh, was %v", s, before)
	}
	if d := rc.PTTL(ctx, key).Val(); d > time.Hour || d < 59*time.Minute {
		t.Fatalf("expiry %v, want the hour set before", d)
	}
	// With extend, both keys get ttl + keep again.
	rc.PExpire(ctx, key, time.Minute)
	rc.PExpire(ctx, conns, time.Minute)
	refresh(a, 2, true)
	for _, k := range []string{key, conns} {
		if d := rc.PTTL(ctx, k).Val(); d < 10*time.Minute {
			t.Fatalf("%s expires in %v after an extending refresh", k, d)
		}
	}

	// a's entry went missing (taken for dead): a refresh does not add it
	// (ZADD XX) but says so, for the caller to set it with its count then.
	rc.ZRem(ctx, key, "a")
	if missing := refresh(a, 2, false); len(missing) != 1 {
		t.Fatalf("missing %v, want u", missing)
	}
	if n := rc.ZCard(ctx, key).Val(); n != 1 {
		t.Fatalf("%d entries after refreshing a missing one, want b's alone", n)
	}
	// Redis lost the script (a restart): the pipeline loads it and goes on.
	rc.ScriptFlush(ctx)
	must(a.SetPresence(ctx, []redisq.PresenceUpdate{{User: "u", Conns: 2}}, ttl)) // b kept u online: no event
	if _, err := rc.ZScore(ctx, key, "a").Result(); err != nil {
		t.Fatalf("a's entry not set again: %v", err)
	}
	// b's entry expires (b died): the next write that finds it removes it.
	rc.ZAdd(ctx, key, redis.Z{Score: float64(time.Now().Add(-time.Second).UnixMilli()), Member: "b"})
	must(a.SetPresence(ctx, []redisq.PresenceUpdate{{User: "u", Conns: 0}}, ttl))
	if e := event(); e != `{"user":"u","event":"offline"}` {
		t.Fatalf("event %s", e)
	}
	if n := rc.Exists(ctx, key, conns).Val(); n != 0 {
		t.Fatalf("%d presence keys left", n)
	}
	got, err := a.ReadPresence(ctx, []string{"u"})
	if err != nil || got[0].Online || got[0].Connections != 0 {
		t.Fatalf("read %+v %v", got, err)
	}
}

// A restart with the same id removes the last run's entries, with their
// offline events; a dead instance's entries are removed by another, unless
// they vouch for longer than a third of a lifetime more (the instance
// restarted meanwhile and wrote them anew).
func TestPresenceOfRestartsAndDeadInstances(t *testing.T) {
	rds, mk := startQueues(t)
	ctx := context.Background()
	rc := rds.Client()
	events := subscribe(t, rc, "ev")
	const ttl = 30 * time.Second
	a := mk(redisq.Config{Instance: "a", PresenceChannel: "ev", PresenceTTL: ttl})
	for _, u := range []string{"r1", "r2"} {
		if err := a.Register(ctx, u); err != nil {
			t.Fatal(err)
		}
		if _, err := a.SetPresence(ctx, []redisq.PresenceUpdate{{User: u, Conns: 1}}, ttl); err != nil {
			t.Fatal(err)
		}
	}
	a2 := mk(redisq.Config{Instance: "a", PresenceChannel: "ev", PresenceTTL: ttl}) // the same id, started again
	if _, _, err := a2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for range 4 {
		select {
		case m := <-events:
			got[m.Payload]++
		case <-time.After(5 * time.Second):
			t.Fatalf("events so far %v", got)
		}
	}
	for _, u := range []string{"r1", "r2"} {
		if got[`{"user":"`+u+`","event":"online"}`] != 1 || got[`{"user":"`+u+`","event":"offline"}`] != 1 {
			t.Fatalf("events %v", got)
		}
		if n := rc.Exists(ctx, a.PresenceKey(u)).Val(); n != 0 {
			t.Fatalf("%s's entry survived the restart", u)
		}
	}

	// a is found dead by b (its heartbeat is gone): its entry that vouches
	// for a few seconds more goes; one written a full lifetime ahead stays.
	b := mk(redisq.Config{Instance: "b", PresenceChannel: "ev", PresenceTTL: ttl})
	if err := a2.Register(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	if err := a2.Register(ctx, "new"); err != nil {
		t.Fatal(err)
	}
	if _, err := a2.SetPresence(ctx, []redisq.PresenceUpdate{{User: "new", Conns: 1}}, ttl); err != nil {
		t.Fatal(err)
	}
	if _, err := a2.SetPresence(ctx, []redisq.PresenceUpdate{{User: "old", Conns: 1}}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	rc.SAdd(ctx, "redpush:instances", "a") // listed, with no heartbeat: dead
	if _, _, err := b.ReclaimDead(ctx); err != nil {
		t.Fatal(err)
	}
	if n := rc.Exists(ctx, a.PresenceKey("old")).Val(); n != 0 {
		t.Error("the dead instance's entry stayed")
	}
	if _, err := rc.ZScore(ctx, a.PresenceKey("new"), "a").Result(); err != nil {
		t.Errorf("an entry a full lifetime ahead was removed: %v", err)
	}
}

// subscribe subscribes to channel, once the subscription is in place.
func subscribe(t *testing.T, rc *redis.Client, channel string) <-chan *redis.Message {
	t.Helper()
	ps := rc.Subscribe(context.Background(), channel)
	if _, err := ps.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ps.Close() })
	return ps.Channel()
}
