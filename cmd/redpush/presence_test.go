package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
)

// An instance killed with kill -9 takes its users offline: its presence
// entries fall behind Redis's clock within -instance-ttl, and the survivor,
// finding it dead, removes them and publishes "offline"; `redpush
// presence` says so, and says what it says about the survivor's user.
func TestPresenceAcrossAKill(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	ps := rc.Subscribe(t.Context(), "redpush:presence")
	if _, err := ps.Receive(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	events := ps.Channel()
	next := func() string {
		t.Helper()
		select {
		case m := <-events:
			return m.Payload
		case <-time.After(10 * time.Second):
			t.Fatal("no presence event within 10 s")
			return ""
		}
	}
	common := []string{"-redis", rds.URL(), "-format", "raw", "-instance-ttl", "1500ms"}
	a := startProc(t, nil, append(common, "-instance", "a")...)
	b := startProc(t, nil, append(common, "-instance", "b")...)
	testutil.Dial(t, a.addr, "k").MustRead()
	testutil.Dial(t, b.addr, "j").MustRead()
	got := map[string]bool{next(): true, next(): true}
	if !got[`{"user":"k","event":"online"}`] || !got[`{"user":"j","event":"online"}`] {
		t.Fatalf("events %v", got)
	}
	code, out, errOut := runBinary(t, "presence", "-redis", rds.URL(), "k", "j")
	if want := "{\"user\":\"k\",\"online\":true,\"connections\":1}\n{\"user\":\"j\",\"online\":true,\"connections\":1}\n"; code != 0 || out != want {
		t.Fatalf("redpush presence: exit %d, %q (%s), want %q", code, out, errOut, want)
	}

	_ = a.cmd.Process.Kill()
	a.wait(5 * time.Second)
	killed := time.Now()
	testutil.Eventually(t, 5*time.Second, func() error {
		now := strconv.FormatInt(time.Now().UnixMilli(), 10)
		if n := rc.ZCount(t.Context(), "{user_k_messages}:presence", now, "+inf").Val(); n != 0 {
			return fmt.Errorf("k is still online on %d instances", n)
		}
		return nil
	})
	// Within -instance-ttl of its last refresh, which came before the kill:
	// well within twice that after it.
	if took := time.Since(killed); took > 3*time.Second {
		t.Errorf("k offline for business code %v after the kill, want within -instance-ttl (1.5s)", took)
	} else {
		t.Logf("k offline for business code %v after the kill (-instance-ttl 1.5s)", took)
	}
	if e := next(); e != `{"user":"k","event":"offline"}` {
		t.Fatalf("event %s", e)
	}
	t.Logf("the offline event %v after the kill", time.Since(killed))
	code, out, _ = runBinary(t, "presence", "-redis", rds.URL(), "k", "j")
	if want := "{\"user\":\"k\",\"online\":false,\"connections\":0}\n{\"user\":\"j\",\"online\":true,\"connections\":1}\n"; code != 0 || out != want {
		t.Fatalf("after the kill: exit %d, %q, want %q", code, out, want)
	}
}

// The command's answers to mistakes.
func TestPresenceCommandRefusals(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"presence"}, 2, "redpush presence: name at least one user id"},
		{[]string{"presence", "4 2"}, 2, `redpush presence: "4 2" is not a user id`},
		{[]string{"presence", "-redis", "redis://127.0.0.1:1", "42"}, 1, "redpush presence: "},
		{[]string{"presence", "-redis", "nosuch://x", "42"}, 2, "redpush presence: -redis: "},
		{[]string{"presence", "42", "-redis", "redis://127.0.0.1:1"}, 2, "redpush presence: -redis: flags go before the user ids"},
	} {
		code, _, stderr := runBinary(t, tc.args...)
		if code != tc.code || !strings.HasPrefix(stderr, tc.err) {
			t.Errorf("%v: exit %d, %q, want %d %q…", tc.args, code, stderr, tc.code, tc.err)
		}
	}
}
