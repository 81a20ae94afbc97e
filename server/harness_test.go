package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

// gateway is a Server serving on a real loopback port against a real
// redis-server, as a test sees it.
type gateway struct {
	t    *testing.T
	srv  *server.Server
	addr string
	rds  *testutil.Redis       // nil for a gateway on a cluster or a Sentinel
	rc   redis.UniversalClient // the test's producer
	logs *testutil.SyncBuffer
	stop context.CancelFunc
	done chan error
}

// startGateway starts a gateway over rds (a fresh redis-server when nil).
func startGateway(t *testing.T, rds *testutil.Redis, cfg server.Config) *gateway {
	t.Helper()
	if rds == nil {
		rds = testutil.StartRedis(t)
	}
	g := startGatewayAt(t, rds.URL(), rds.Client(), cfg)
	g.rds = rds
	return g
}

// startGatewayAt starts a gateway on the Redis that url names; rc is the
// test's producer client for that Redis.
func startGatewayAt(t *testing.T, url string, rc redis.UniversalClient, cfg server.Config) *gateway {
	t.Helper()
	clients, err := redisq.Dial(context.Background(), url, 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = clients.Close() })
	return startGatewayOn(t, clients, rc, cfg)
}

// startGatewayOn starts a gateway over clients, e.g. with a go-redis hook
// that injects a fault.
func startGatewayOn(t *testing.T, clients *redisq.Clients, rc redis.UniversalClient, cfg server.Config) *gateway {
	t.Helper()
	logs := &testutil.SyncBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.Instance == "" {
		cfg.Instance = "test"
	}
	srv, err := server.New(cfg, clients)
	if err != nil {
		t.Fatal(err)
	}
	lcfg := cfg // the command's listener: over TLS, it counts the bytes below TLS
	if lcfg.Addr == "" {
		lcfg.Addr = "127.0.0.1:0"
	}
	ln, err := server.Listen(lcfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &gateway{t: t, srv: srv, addr: ln.Addr().String(), rc: rc,
		logs: logs, stop: cancel, done: make(chan error, 1)}
	go func() { g.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		g.shutdown()
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})
	// Ready once the accept loop runs, which is after recovery and the
	// first heartbeat: tests that count Redis commands start after those.
	hc, scheme := http.DefaultClient, "http://"
	if cfg.TLS != nil {
		insecure := &tls.Config{InsecureSkipVerify: true} // the test's own self-signed certificate
		hc, scheme = &http.Client{Transport: &http.Transport{TLSClientConfig: insecure}}, "https://"
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		resp, err := hc.Get(scheme + g.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err
	})
	return g
}

// shutdown cancels the server and waits for Serve to return.
func (g *gateway) shutdown() error {
	g.stop()
	select {
	case err := <-g.done:
		g.done <- err // keep it for a second call
		return err
	case <-time.After(20 * time.Second):
		g.t.Fatal("Serve did not return after shutdown")
		return nil
	}
}

func (g *gateway) dial(user string) *testutil.Client { return testutil.Dial(g.t, g.addr, user) }

// dialReady connects as user and consumes the greeting.
func (g *gateway) dialReady(user string) *testutil.Client {
	g.t.Helper()
	c := g.dial(user)
	if got := c.MustRead(); got != "hello;\n" {
		g.t.Fatalf("greeting = %q, want %q", got, "hello;\n")
	}
	return c
}

// dialUsers connects n users, prefix0 to prefix(n-1), one connection each
// (dialReady).
func (g *gateway) dialUsers(prefix string, n int) []*testutil.Client {
	g.t.Helper()
	clients := make([]*testutil.Client, n)
	for u := range clients {
		clients[u] = g.dialReady(fmt.Sprint(prefix, u))
	}
	return clients
}

func (g *gateway) push(user string, msgs ...string) {
	g.t.Helper()
	if err := g.rc.LPush(context.Background(), "user_"+user+"_messages", testutil.Any(msgs)...).Err(); err != nil {
		g.t.Fatal(err)
	}
}

// awaitConsumers waits until the server runs exactly n consumers.
func (g *gateway) awaitConsumers(n int, within time.Duration) {
	g.t.Helper()
	testutil.Eventually(g.t, within, func() error {
		if got := g.srv.Snapshot().Consumers; got != n {
			return fmt.Errorf("consumers = %d, want %d", got, n)
		}
		return nil
	})
}

// awaitQueueEmpty waits until the user's queue was popped empty.
func (g *gateway) awaitQueueEmpty(user string) {
	g.t.Helper()
	testutil.Eventually(g.t, 10*time.Second, func() error {
		n, err := g.rc.LLen(context.Background(), "user_"+user+"_messages").Result()
		if err == nil && n != 0 {
			err = fmt.Errorf("%d messages still queued", n)
		}
		return err
	})
}

func swoole(user, msg string) string {
	return "redis 的 user_" + user + "_messages 队列发送消息:" + msg
}

// awaitQueueLen waits until the user's queue holds n messages.
func (g *gateway) awaitQueueLen(user string, n int64) {
	g.t.Helper()
	testutil.Eventually(g.t, 10*time.Second, func() error {
		got, err := g.rc.LLen(context.Background(), "user_"+user+"_messages").Result()
		if err == nil && got != n {
			err = fmt.Errorf("%d messages queued, want %d", got, n)
		}
		return err
	})
}
