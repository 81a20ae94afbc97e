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
	ps := rc.Subscribe(ctx, "ev")
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	event := func() string {
		t.Helper()
		select {
		case m := <-ps.Channel():
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
	must(a.RefreshPresence(ctx, []redisq.PresenceUpdate{{User: "u", Conns: 2}}, ttl, false))
	if s := score("a"); s <= before {
		t.Fatalf("score %v after the refresh, was %v", s, before)
	}
	if d := rc.PTTL(ctx, key).Val(); d > time.Hour || d < 59*time.Minute {
		t.Fatalf("expiry %v, want the hour set before", d)
	}
	// With extend, both keys get ttl + keep again.
	rc.PExpire(ctx, key, time.Minute)
	rc.PExpire(ctx, conns, time.Minute)
	must(a.RefreshPresence(ctx, []redisq.PresenceUpdate{{User: "u", Conns: 2}}, ttl, true))
	for _, k := range []string{key, conns} {
		if d := rc.PTTL(ctx, k).Val(); d < 10*time.Minute {
			t.Fatalf("%s expires in %v after an extending refresh", k, d)
		}
	}

	// a's entry went missing (taken for dead): a refresh sets it again;
	// b's entry kept the user online, so no event.
	rc.ZRem(ctx, key, "a")
	must(a.RefreshPresence(ctx, []redisq.PresenceUpdate{{User: "u", Conns: 2}}, ttl, false))
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

