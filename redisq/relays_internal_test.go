package redisq

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// replyErr is an error reply of Redis, as go-redis hands it over.
type replyErr string

func (e replyErr) Error() string { return string(e) }
func (replyErr) RedisError()     {}

var _ redis.Error = replyErr("")

var maxClients = replyErr("ERR max number of clients reached")

// SubscribeRelays decides once, at start, whether relays are sharded. A
// master that cannot be reached for a moment is asked again; only Redis's
// own answer, or a master unreachable for the whole window, decides for
// plain pub/sub. (Session 7's review: any error, a master restarting
// included, pinned the process to plain pub/sub for life.)
func TestAskUntilAnswered(t *testing.T) {
	unreachable := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	refusal := replyErr("NOPERM this user has no permissions to run the 'command|info' command")
	loading := replyErr("LOADING Redis is loading the dataset in memory")
	// Each case: what the successive attempts return; the last is the
	// answer, after exactly that many attempts.
	for _, tc := range []struct {
		name     string
		attempts []error
	}{
		{"unreachable for a moment, then yes", []error{unreachable, unreachable, nil}},
		{"Redis's refusal decides at once", []error{refusal}},
		{"a master without the command decides at once", []error{errUnknownCommand}},
		{"a master loading its data is asked again", []error{loading, nil}},
		{"a master full of clients is asked again", []error{maxClients, nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := askUntilAnswered(t.Context(), func(context.Context) error {
				calls++
				return tc.attempts[min(calls, len(tc.attempts))-1]
			}, 5*time.Second)
			want := tc.attempts[len(tc.attempts)-1]
			if !errors.Is(err, want) || calls != len(tc.attempts) {
				t.Fatalf("err %v after %d calls, want %v after %d", err, calls, want, len(tc.attempts))
			}
		})
	}
	t.Run("one attempt is bounded by the window too", func(t *testing.T) {
		start := time.Now()
		err := askUntilAnswered(t.Context(), func(ctx context.Context) error {
			<-ctx.Done() // a dial that would retry for longer
			return ctx.Err()
		}, 200*time.Millisecond)
		if !errors.Is(err, errNotAnswered) || time.Since(start) > 2*time.Second {
			t.Fatalf("err %v after %v", err, time.Since(start))
		}
	})
	t.Run("unreachable for the whole window", func(t *testing.T) {
		err := askUntilAnswered(t.Context(), func(context.Context) error { return unreachable }, 300*time.Millisecond)
		if !errors.Is(err, errNotAnswered) {
			t.Fatalf("err %v, want errNotAnswered", err)
		}
	})
}

// A slot migration's answers are no outage (a requeue script whose queue
// key had moved already was logged as "redis unreachable": a fresh-clone
// make test failed so, TestOnRedisCluster "slot moves while delivering").
func TestSlotMoving(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{replyErr("ERR Script attempted to access a non local key in a cluster node script: 0a48, on @user_script:3."), true},
		{replyErr("MOVED 9826 127.0.0.1:39789"), true},
		{replyErr("ASK 9826 127.0.0.1:39789"), true},
		{replyErr("TRYAGAIN Multiple keys request during rehashing of slot"), true},
		{ErrSlotMoved, true},
		{replyErr("NOPERM no"), false},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, false},
		{nil, false},
	} {
		if got := SlotMoving(tc.err); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.want)
		}
	}
}
