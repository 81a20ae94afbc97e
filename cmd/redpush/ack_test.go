package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
)

// An ack connection's unacknowledged messages outlive its instance: a
// is killed with kill -9 while they are in flight, b finds it dead and
// returns them to the queue, and the user's next ack connection, on b,
// gets them again with the same ids, marked redelivered.
func TestAckIdsSurviveAKill(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	common := []string{"-redis", rds.URL(), "-instance-ttl", "1500ms"}
	a := startProc(t, nil, append(common, "-instance", "a")...)
	b := startProc(t, nil, append(common, "-instance", "b")...)
	type frame struct {
		ID          string `json:"id"`
		Data        string `json:"data"`
		Redelivered bool   `json:"redelivered"`
	}
	read := func(c *testutil.Client) frame {
		t.Helper()
		var f frame
		if s := c.MustRead(); json.Unmarshal([]byte(s), &f) != nil || f.ID == "" {
			t.Fatalf("want an ack frame, got %q", s)
		}
		return f
	}
	onA := testutil.DialPath(t, a.addr, "/?user_id=k&ack=1")
	onA.MustRead() // greeting
	rc.LPush(t.Context(), "user_k_messages", "m1", "m2", "m3")
	var first []frame
	for range 3 {
		first = append(first, read(onA))
	}
	awaitLen(t, rc, "{user_k_messages}:processing:a", 3) // delivered, not acknowledged
	_ = a.cmd.Process.Kill()
	a.wait(5 * time.Second)
	awaitLen(t, rc, "{user_k_messages}:processing:a", 0) // b found a dead and took its list back

	onB := testutil.DialPath(t, b.addr, "/?user_id=k&ack=1")
	onB.MustRead()
	var last frame
	for _, want := range first {
		got := read(onB)
		if got.ID != want.ID || got.Data != want.Data || !got.Redelivered {
			t.Fatalf("after the kill got %+v, want id %s data %q redelivered", got, want.ID, want.Data)
		}
		last = got
	}
	onB.Send(`{"ack":"` + last.ID + `"}`)
	awaitLen(t, rc, "{user_k_messages}:processing:b", 0)
	awaitLen(t, rc, "user_k_messages", 0)
}

// The instance holding a user's ack connection is killed: the instance
// that deferred to it for the user's plain connection pops again once the
// dead one's presence entry stops vouching (-instance-ttl).
func TestPlainTabsResumeWhenTheAckHolderIsKilled(t *testing.T) {
	rds := testutil.StartRedis(t)
	common := []string{"-redis", rds.URL(), "-instance-ttl", "1500ms", "-format", "raw"}
	a := startProc(t, nil, append(common, "-instance", "a")...)
	b := startProc(t, nil, append(common, "-instance", "b", "-log-level", "debug")...)
	plain := testutil.Dial(t, b.addr, "k2")
	plain.MustRead()
	testutil.DialPath(t, a.addr, "/?user_id=k2&ack=1").MustRead()
	testutil.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(b.stderr.String(), "popping left to it") {
			return fmt.Errorf("b does not defer to a")
		}
		return nil
	})
	_ = a.cmd.Process.Kill()
	a.wait(5 * time.Second)
	killed := time.Now()
	rds.Client().LPush(t.Context(), "user_k2_messages", "after")
	if got := plain.MustRead(); got != "after" {
		t.Fatalf("got %q", got)
	}
	t.Logf("the plain connection got the message %v after the kill (-instance-ttl 1.5s)", time.Since(killed))
}
