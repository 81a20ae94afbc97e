package server_test

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// metric returns the value of one series in GET /metrics.
func metric(t *testing.T, g *gateway, series string) float64 {
	t.Helper()
	_, body := get(t, "http://"+g.addr+"/metrics")
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in /metrics", series)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func TestMetricsFollowAConnectPushDisconnect(t *testing.T) {
	g := startGateway(t, nil, server.Config{Workers: 7, MaxUsers: 9, Format: server.FormatRaw})
	if v := metric(t, g, "redpush_pool_capacity"); v != 7 {
		t.Fatalf("pool capacity %v", v)
	}
	if v := metric(t, g, "redpush_users_capacity"); v != 9 {
		t.Fatalf("users capacity %v", v)
	}
	c := g.dialReady("m")
	g.awaitConsumers(1, 5*time.Second)
	// The greeting goes out before the connection is registered (it must
	// precede any push): the gauges follow a moment after it.
	testutil.Eventually(t, 5*time.Second, func() error {
		for series, want := range map[string]float64{"redpush_connections": 1, "redpush_users_online": 1, "redpush_consumers_running": 1, "redpush_redis_up": 1} {
			if v := metric(t, g, series); v != want {
				return fmt.Errorf("%s = %v, want %v", series, v, want)
			}
		}
		return nil
	})
	g.push("m", "1", "2", "3")
	for range 3 {
		c.MustRead()
	}
	rawUpgrade(t, g.addr, "/?user_id=a%20b")
	c.SendClose()
	g.awaitConsumers(0, 5*time.Second)
	testutil.Eventually(t, 5*time.Second, func() error {
		if v := metric(t, g, "redpush_messages_delivered_total"); v != 3 {
			return fmt.Errorf("delivered %v, want 3", v)
		}
		return nil
	})
	for series, want := range map[string]float64{
		"redpush_connections": 0, "redpush_users_online": 0, "redpush_consumers_running": 0,
		`redpush_handshakes_refused_total{status="400"}`: 1, `redpush_handshakes_refused_total{status="503"}`: 0,
	} {
		if v := metric(t, g, series); v != want {
			t.Errorf("%s = %v, want %v", series, v, want)
		}
	}
	if v := metric(t, g, "redpush_pop_to_write_seconds_count"); v < 1 {
		t.Errorf("pop-to-write histogram has %v observations", v)
	}
}

// redpush_backlog_messages counts what waits in the queues of online users:
// here a consumer held before its delivery while 5 more messages arrive.
func TestBacklogMetric(t *testing.T) {
	hold := make(chan struct{})
	var once sync.Once
	defer server.SetHook(func(_ context.Context, user, stage string) {
		if user == "bl" && stage == "deliver" {
			once.Do(func() { <-hold })
		}
	})()
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, Batch: 1})
	c := g.dialReady("bl")
	g.push("bl", "first")
	testutil.Eventually(t, 5*time.Second, func() error { // the consumer holds "first"
		if n, _ := g.rc.LLen(context.Background(), "user_bl_messages").Result(); n != 0 {
			return fmt.Errorf("queue holds %d", n)
		}
		return nil
	})
	g.push("bl", "2", "3", "4", "5", "6")
	if v := metric(t, g, "redpush_backlog_messages"); v != 5 {
		t.Fatalf("redpush_backlog_messages = %v, want 5", v)
	}
	close(hold)
	for _, want := range []string{"first", "2", "3", "4", "5", "6"} {
		if got := c.MustRead(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// The README's recipe for a producer that caps a queue works as written,
// through redis-cli's standard input.
func TestCappedQueueRecipe(t *testing.T) {
	rds := testutil.StartRedis(t)
	script := "MULTI\nLPUSH user_42_messages \"order shipped\"\nLTRIM user_42_messages 0 999\nEXPIRE user_42_messages 604800\nEXEC\n"
	rds.Client().LPush(context.Background(), "user_42_messages", testutil.Any(testutil.Seq("old", 1500))...)
	cmd := exec.Command("redis-cli", "-p", fmt.Sprint(rds.Port))
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("redis-cli: %v\n%s", err, out)
	}
	rc := rds.Client()
	if n := rc.LLen(context.Background(), "user_42_messages").Val(); n != 1000 {
		t.Fatalf("queue holds %d, want the cap of 1000", n)
	}
	if newest := rc.LIndex(context.Background(), "user_42_messages", 0).Val(); newest != "order shipped" {
		t.Fatalf("newest is %q, want the message just pushed", newest)
	}
	if ttl := rc.TTL(context.Background(), "user_42_messages").Val(); ttl < 6*24*time.Hour {
		t.Fatalf("TTL %v, want about a week", ttl)
	}
}

// Every refused handshake is counted under its status, and only there.
func TestRefusalsAreCountedByStatus(t *testing.T) {
	const key = "a-secret-of-at-least-16-bytes"
	auth, err := server.NewHMACAuth([]byte(key))
	must(t, err)
	g := startGateway(t, nil, server.Config{Auth: auth, MaxUsers: 1, AllowedOrigins: []string{"https://app.example"}})
	token := func(user string) string {
		tok, err := server.Sign([]byte(key), user, time.Minute)
		must(t, err)
		return tok
	}
	hc, err := testutil.TryDial(g.addr, "/?token="+token("holder")) // the only user it admits
	must(t, err)
	testutil.NewClient(t, hc).MustRead()
	// Each status is refused a different number of times, so a swap of
	// two counters shows.
	refusals := []struct {
		path, origin string
		status       int
	}{
		{"/?token=" + token("a") + "&x=%zz", "", 400},
		{"/?token=" + token("a") + "&x=%zz", "", 400},
		{"/?user_id=a", "", 401},
		{"/?token=garbage", "", 401},
		{"/?token=garbage", "", 401},
		{"/?token=" + token("a"), "https://evil.example", 403},
		{"/?token=" + token("holder"), "https://evil.example", 403},
		{"/?token=" + token("b"), "https://evil.example", 403},
		{"/?token=" + token("c"), "https://evil.example", 403},
		{"/?token=" + token("newcomer"), "", 503},
	}
	for _, r := range refusals {
		var status int
		if r.origin != "" {
			status, _ = rawUpgrade(t, g.addr, r.path, "Origin: "+r.origin)
		} else {
			status, _ = rawUpgrade(t, g.addr, r.path)
		}
		if status != r.status {
			t.Fatalf("%s (origin %q): %d, want %d", r.path, r.origin, status, r.status)
		}
	}
	for status, want := range map[string]float64{"400": 2, "401": 3, "403": 4, "503": 1} {
		if v := metric(t, g, `redpush_handshakes_refused_total{status="`+status+`"}`); v != want {
			t.Errorf("refused %s = %v, want %v", status, v, want)
		}
	}
}
