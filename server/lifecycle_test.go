package server_test

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

func TestRedisRestartKeepsConnectionsAndResumesDelivery(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	const users = 20
	clients := g.dialUsers("r", users)
	g.awaitConsumers(users, 5*time.Second)
	g.rds.Stop()
	awaitStatus(t, "http://"+g.addr+"/readyz", 503)
	// Connections stay open and answer while Redis is away.
	clients[0].Send("still there?")
	if got := clients[0].MustRead(); got != "hello" {
		t.Fatalf("got %q", got)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if !g.srv.Snapshot().RedisDown {
			return fmt.Errorf("consumers have not noticed the outage yet")
		}
		return nil
	})
	g.rds.Restart()
	awaitStatus(t, "http://"+g.addr+"/readyz", 200)
	for i := range clients {
		g.push(fmt.Sprint("r", i), fmt.Sprint("after-", i))
	}
	for i, c := range clients {
		if got := c.MustRead(); got != fmt.Sprint("after-", i) {
			t.Fatalf("user r%d got %q", i, got)
		}
	}
	// Once per outage, not once per consumer or retry.
	if down, up := strings.Count(g.logs.String(), "redis unreachable"), strings.Count(g.logs.String(), "redis reachable again"); down != 1 || up != 1 {
		t.Fatalf("outage logged %d times, recovery %d times; want 1 and 1", down, up)
	}
}

func awaitStatus(t *testing.T, url string, want int) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			return fmt.Errorf("%s: %d, want %d", url, resp.StatusCode, want)
		}
		return nil
	})
}

func TestShutdownClosesWith1001AndReturnsInFlightMessages(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, ShutdownTimeout: 5 * time.Second})
	idle := []*testutil.Client{g.dialReady("s1"), g.dialReady("s2")}
	// A stalled write holds a whole batch in flight at shutdown.
	msgs := testutil.BigMessages(100)
	g.push("stalled", msgs...)
	testutil.DialBuffer(t, g.addr, "stalled", 4096) // never reads
	g.awaitQueueEmpty("stalled")
	start := time.Now()
	if err := g.shutdown(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("shutdown took %v, want within the 5s timeout", took)
	}
	for _, c := range idle {
		if got := c.ReadClose(5 * time.Second); got != ws.StatusGoingAway {
			t.Fatalf("close code %d, want 1001", got)
		}
	}
	n, err := g.rc.LLen(t.Context(), "user_stalled_messages").Result()
	if err != nil || n != int64(len(msgs)) {
		t.Fatalf("queue holds %d (%v) after shutdown, want all %d back", n, err, len(msgs))
	}
	keys, _ := g.rc.Keys(t.Context(), "*processing*").Result()
	if len(keys) != 0 {
		t.Fatalf("processing lists left: %v", keys)
	}
	// After shutdown new connections are refused.
	if _, err := testutil.TryDial(g.addr, "/?user_id=late"); err == nil {
		t.Fatal("dial after shutdown succeeded")
	}
}

// What a crashed instance had popped comes back first, in order, when the
// same instance starts again.
func TestRecoveryOfAPreviousRunsInFlightMessages(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	// As left by BLMOVE RIGHT→LEFT of m1, m2, m3: newest at the left.
	rc.RPush(t.Context(), "{user_r_messages}:processing:test", "m3", "m2", "m1")
	rc.RPush(t.Context(), "{user_q_messages}:processing:other-instance", "not ours")
	rc.LPush(t.Context(), "user_r_messages", "m4", "m5")
	g := startGateway(t, rds, server.Config{Format: server.FormatRaw, Instance: "test"})
	c := g.dialReady("r")
	for _, want := range []string{"m1", "m2", "m3", "m4", "m5"} {
		if got := c.MustRead(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	if n, _ := rc.LLen(t.Context(), "{user_q_messages}:processing:other-instance").Result(); n != 1 {
		t.Fatal("recovery touched another instance's processing list")
	}
	if !strings.Contains(g.logs.String(), "lists=1 messages=3") {
		t.Fatalf("recovery not logged:\n%s", g.logs.String())
	}
}

func TestHTTPSide(t *testing.T) {
	for _, demo := range []bool{false, true} {
		t.Run(fmt.Sprint("demo=", demo), func(t *testing.T) {
			g := startGateway(t, nil, server.Config{DemoPush: demo, Format: server.FormatRaw})
			base := "http://" + g.addr
			for _, tc := range []struct {
				path   string
				status int
				body   string
			}{
				{"/", 200, "<title>redpush demo</title>"},
				{"/healthz", 200, "ok"},
				{"/readyz", 200, "ready"},
				{"/nope", 404, ""},
				{"/index.html", 404, ""},
			} {
				status, body := get(t, base+tc.path)
				if status != tc.status || !strings.Contains(body, tc.body) {
					t.Errorf("GET %s: %d %q, want %d containing %q", tc.path, status, body, tc.status, tc.body)
				}
			}
			_, page := get(t, base+"/")
			if strings.Contains(page, `id="demo-push"`) != demo {
				t.Errorf("demo push box shown = %v, want %v", !demo, demo)
			}
			c := g.dialReady("d")
			resp, err := http.PostForm(base+"/demo/push", url.Values{"user": {"d"}, "data": {"from the page"}})
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if !demo {
				if resp.StatusCode != 404 && resp.StatusCode != 405 {
					t.Fatalf("demo push without embedded redis: %d", resp.StatusCode)
				}
				return
			}
			if resp.StatusCode != 204 {
				t.Fatalf("demo push: %d", resp.StatusCode)
			}
			if got := c.MustRead(); got != "from the page" {
				t.Fatalf("got %q", got)
			}
			resp, _ = http.PostForm(base+"/demo/push", url.Values{"user": {"a b"}, "data": {"x"}})
			if resp.StatusCode != 400 {
				t.Fatalf("demo push to a bad user id: %d", resp.StatusCode)
			}
			// A page of another site cannot make a browser push: the
			// browser names it in Origin and Sec-Fetch-Site.
			for _, h := range []http.Header{{"Origin": {"http://evil.example"}}, {"Sec-Fetch-Site": {"cross-site"}}} {
				req, _ := http.NewRequest("POST", base+"/demo/push", strings.NewReader("user=d&data=evil"))
				req.Header = h
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 403 {
					t.Fatalf("cross-site demo push %v: %d, want 403", h, resp.StatusCode)
				}
			}
			// DNS rebinding: another site's name pointed at 127.0.0.1 is
			// same-origin with itself, but its requests name it in Host.
			// localhost and IP addresses pass.
			for host, want := range map[string]int{"evil.example:80": 403, "localhost:1": 204, "[::1]:1": 204, "app.localhost": 204} {
				req, _ := http.NewRequest("POST", base+"/demo/push", strings.NewReader("user=d&data=host"))
				req.Host = host
				req.Header.Set("Origin", "http://"+host)
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Fatalf("demo push with Host %s: %d, want %d", host, resp.StatusCode, want)
				}
				if want == 204 {
					c.MustRead()
				}
			}
		})
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// /readyz turns 503 as soon as a shutdown begins, while connections still
// drain, so a load balancer sends no new clients meanwhile.
func TestReadyzIs503AsSoonAsShutdownBegins(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, ShutdownTimeout: 5 * time.Second})
	// A client that does not read holds the shutdown for about a second
	// (the close frames' write deadline): the drain is long enough to ask.
	g.push("stalled", testutil.BigMessages(100)...)
	testutil.DialBuffer(t, g.addr, "stalled", 4096)
	g.awaitQueueEmpty("stalled")
	if status, _ := get(t, "http://"+g.addr+"/readyz"); status != 200 {
		t.Fatalf("readyz %d before the shutdown", status)
	}
	g.stop()
	for {
		select {
		case err := <-g.done:
			g.done <- err
			t.Fatal("the shutdown ended without /readyz ever answering 503")
		default:
		}
		resp, err := http.Get("http://" + g.addr + "/readyz")
		if err != nil {
			continue // not answered: try again until the shutdown is over
		}
		resp.Body.Close()
		if resp.StatusCode == 503 {
			break
		}
	}
	// Still draining: a new client gets a 503 with the reason, not a
	// refused connection.
	if status, body := rawUpgrade(t, g.addr, "/?user_id=late"); status != 503 || !strings.Contains(body, "shutting down") {
		t.Fatalf("a client during the drain got %d %q, want 503 server is shutting down", status, body)
	}
}
