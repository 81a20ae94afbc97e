package server

import (
	"fmt"
	"log/slog"
	"slices"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/redisq"
)

// newBareRelay is a relay whose subscription is never sent: diff alone,
// without Redis (redisq.New dials nothing until a command runs).
func newBareRelay(tb testing.TB) *relay {
	tb.Helper()
	rc := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	tb.Cleanup(func() { _ = rc.Close() })
	q, err := redisq.New(rc, rc, redisq.Config{Instance: "t"})
	if err != nil {
		tb.Fatal(err)
	}
	h := newHub(nil, q, encoder{}, slog.Default())
	return &relay{hub: h, dirty: make(chan struct{}, 1), want: make(map[string]string),
		changed: make(map[string]struct{}), queues: make(map[string]*relayQueue)}
}

// diff turns the watches and unwatches since its last call into what to
// subscribe and what to drop, and a change undone before it ran into
// nothing.
func TestRelayDiffFollowsChanges(t *testing.T) {
	r := newBareRelay(t)
	have := map[string]bool{}
	ch := r.hub.q.RelayChannel
	r.watch("1")
	r.watch("2")
	add, drop := r.diff(have)
	slices.Sort(add)
	if !slices.Equal(add, []string{ch("1"), ch("2")}) || len(drop) != 0 {
		t.Fatalf("first diff: add %v drop %v", add, drop)
	}
	if add, drop := r.diff(have); len(add)+len(drop) != 0 {
		t.Fatalf("nothing changed, yet add %v drop %v", add, drop)
	}
	r.watch("3")
	r.unwatch("3") // came and went before the diff: never subscribed
	r.unwatch("1")
	r.watch("1") // went and came back: stays subscribed
	r.unwatch("2")
	add, drop = r.diff(have)
	if len(add) != 0 || !slices.Equal(drop, []string{ch("2")}) {
		t.Fatalf("second diff: add %v drop %v", add, drop)
	}
	if !have[ch("1")] || have[ch("2")] || have[ch("3")] || len(have) != 1 {
		t.Fatalf("subscribed to %v, want only user 1's channel", have)
	}
}

// One user coming online while many are: diff's work is the change, not
// the users online. Before diff, sync scanned every watched channel on
// every change: with 16,000 users per process, a connect storm spent 42 %
// of the server's CPU there (pprof, 100,000 users over six processes).
func BenchmarkRelayWatchWhileManyOnline(b *testing.B) {
	for _, online := range []int{1000, 100000} {
		b.Run(fmt.Sprint(online), func(b *testing.B) {
			r := newBareRelay(b)
			have := map[string]bool{}
			for i := range online {
				r.watch(fmt.Sprint(i))
			}
			r.diff(have)
			b.ResetTimer()
			for i := range b.N {
				u := fmt.Sprint(online + i)
				r.watch(u)
				r.diff(have)
				r.unwatch(u)
				r.diff(have)
			}
		})
	}
}
