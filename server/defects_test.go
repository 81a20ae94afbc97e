package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

// A consumer that panics must not leave its user stuck with a session that
// nobody serves: its connections are closed with 1011, what it popped goes
// back to the queue, and the client's next connection gets a fresh
// consumer and the message.
func TestPanickingConsumerLeavesItsUserServable(t *testing.T) {
	var armed atomic.Bool
	armed.Store(true)
	defer server.SetHook(func(_ context.Context, user, stage string) {
		if user == "boom" && stage == "deliver" && armed.CompareAndSwap(true, false) {
			panic("injected")
		}
	})()
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	c := g.dialReady("boom")
	g.push("boom", "m1")
	if code := c.ReadClose(10 * time.Second); code != ws.StatusInternalServerError {
		t.Fatalf("close code %d, want 1011", code)
	}
	c2 := g.dialReady("boom")
	if got := c2.MustRead(); got != "m1" {
		t.Fatalf("after reconnecting got %q, want the message the crashed consumer held", got)
	}
	g.push("boom", "m2")
	if got := c2.MustRead(); got != "m2" {
		t.Fatalf("then %q, want m2", got)
	}
	if v := metric(t, g, "redpush_consumer_panics_total"); v != 1 {
		t.Fatalf("redpush_consumer_panics_total = %v, want 1", v)
	}
}

// Shutdown returns within its timeout however many clients stopped
// reading: a write that a consumer starts after the shutdown began is
// bounded by the shutdown's deadline, not by -write-timeout.
func TestShutdownWithStalledClientsKeepsItsTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, ShutdownTimeout: timeout, WriteTimeout: 10 * time.Second, MaxConnsPerUser: 20})
	const users, tabs = 10, 20 // 200 clients that do not read
	for u := range users {
		for range tabs {
			c := testutil.DialBuffer(t, g.addr, fmt.Sprint("stalled", u), 4096)
			if got := c.MustRead(); got != "hello;\n" {
				t.Fatalf("greeting %q", got)
			}
		}
	}
	for u := range users {
		g.push(fmt.Sprint("stalled", u), testutil.BigMessages(100)...)
	}
	// Every consumer is stuck in a write to one of its user's tabs.
	testutil.Eventually(t, 20*time.Second, func() error {
		if n := metric(t, g, "redpush_consumers_running"); n != users {
			return fmt.Errorf("%v consumers", n)
		}
		for u := range users {
			if n, _ := g.rc.LLen(context.Background(), fmt.Sprint("user_stalled", u, "_messages")).Result(); n == 100 {
				return fmt.Errorf("user %d's queue untouched", u)
			}
		}
		return nil
	})
	start := time.Now()
	if err := g.shutdown(); err != nil {
		t.Logf("shutdown: %v", err)
	}
	if took := time.Since(start); took > timeout+1500*time.Millisecond {
		t.Fatalf("shutdown took %v with 200 stalled clients; want about the %v timeout", took, timeout)
	}
}

// sendPartial writes a masked binary frame header declaring n bytes, then
// the first len(p) of them.
func sendPartial(t *testing.T, c *testutil.Client, n int, p []byte) {
	t.Helper()
	h := ws.Header{Fin: true, OpCode: ws.OpBinary, Length: int64(n), Masked: true, Mask: ws.NewMask()}
	if err := ws.WriteHeader(c.Conn, h); err != nil {
		t.Fatal(err)
	}
	sendMore(t, c, h.Mask, 0, p)
}

// sendMore writes payload bytes at offset off of a frame masked with mask.
func sendMore(t *testing.T, c *testutil.Client, mask [4]byte, off int, p []byte) {
	t.Helper()
	q := append([]byte(nil), p...)
	ws.Cipher(q, mask, off)
	if _, err := c.Conn.Write(q); err != nil {
		t.Fatal(err)
	}
}

// A frame header alone reserves nothing: the message buffer grows with the
// bytes that arrive. 100 clients that each declared 60,000 bytes and sent
// 10 hold 1,000 bytes between them.
func TestFrameHeaderReservesNothing(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	for i := range 100 {
		c := g.dialReady(fmt.Sprint("hdr", i))
		sendPartial(t, c, 60000, make([]byte, 10))
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if v := metric(t, g, "redpush_partial_message_bytes"); v != 1000 {
			return fmt.Errorf("partial messages hold %v bytes, want 1000", v)
		}
		return nil
	})
}

// All partial messages together stay under -max-pending-bytes: the client
// whose bytes would pass it is closed with 1008, the others go on.
func TestPartialMessagesAreBounded(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, MaxPendingBytes: 64 << 10})
	a := g.dialReady("a")
	ha := ws.Header{Fin: true, OpCode: ws.OpBinary, Length: 60000, Masked: true, Mask: ws.NewMask()}
	if err := ws.WriteHeader(a.Conn, ha); err != nil {
		t.Fatal(err)
	}
	sendMore(t, a, ha.Mask, 0, make([]byte, 50000))
	testutil.Eventually(t, 10*time.Second, func() error {
		if v := metric(t, g, "redpush_partial_message_bytes"); v != 50000 {
			return fmt.Errorf("%v bytes held", v)
		}
		return nil
	})
	b := g.dialReady("b")
	sendPartial(t, b, 60000, make([]byte, 20000))
	if code := b.ReadClose(10 * time.Second); code != ws.StatusPolicyViolation {
		t.Fatalf("b closed with %d, want 1008", code)
	}
	sendMore(t, a, ha.Mask, 50000, make([]byte, 10000))
	if got := a.MustRead(); got != "hello" {
		t.Fatalf("a's whole message got %q, want the reply", got)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if v := metric(t, g, "redpush_partial_message_bytes"); v != 0 {
			return fmt.Errorf("%v bytes still held", v)
		}
		return nil
	})
}

// A batch written just before a shutdown is acknowledged, not requeued:
// the shutdown cancels the consumers' context, and an ack cut short by it
// would send the batch twice.
func TestShutdownAcksWhatWasWritten(t *testing.T) {
	var armed atomic.Bool
	armed.Store(true)
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	defer server.SetHook(func(ctx context.Context, user, stage string) {
		if user == "sd" && stage == "delivered" && armed.CompareAndSwap(true, false) {
			g.stop() // the shutdown begins right after the write
			<-ctx.Done()
		}
	})()
	c := g.dialReady("sd")
	g.push("sd", "only")
	if got := c.MustRead(); got != "only" {
		t.Fatalf("got %q", got)
	}
	if err := g.shutdown(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	ctx := context.Background()
	if n, _ := g.rc.LLen(ctx, "user_sd_messages").Result(); n != 0 {
		t.Fatalf("the written message went back to the queue (%d there): it would come twice", n)
	}
	if keys, _ := g.rc.Keys(ctx, "{user_sd_messages}:processing:*").Result(); len(keys) != 0 {
		t.Fatalf("left in flight: %v", keys)
	}
}

// When every pooled Redis connection is busy, go-redis gives up waiting
// for one (ErrPoolTimeout) without sending the command: nothing was acked,
// so nothing may be requeued (it would come twice), and Redis is not down.
// (Blocking consumers: hinted ones pop on their hint connection.)
func TestPoolTimeoutIsNeitherAnOutageNorARequeue(t *testing.T) {
	rds := testutil.StartRedis(t)
	g := startGatewayAt(t, rds.URL()+"?pool_size=1&pool_timeout=1ms", rds.Client(), server.Config{Format: server.FormatRaw, Batch: 1, Consumer: server.ConsumerBlocking})
	g.rds = rds
	const users, each = 30, 100
	clients := g.dialUsers("pt", users)
	for u := range users {
		g.push(fmt.Sprint("pt", u), append(testutil.Seq("m", each), "end")...)
	}
	for u, c := range clients {
		var got []string
		for m := c.MustRead(); m != "end"; m = c.MustRead() {
			got = append(got, m)
		}
		if want := testutil.Seq("m", each); !slices.Equal(got, want) {
			t.Fatalf("user %d got %d messages (%v…), want each of %d once, in order", u, len(got), got[:min(5, len(got))], each)
		}
	}
	if strings.Contains(g.logs.String(), "redis unreachable") {
		t.Fatal("a busy pool was logged as Redis being unreachable")
	}
	if !strings.Contains(g.logs.String(), "redis pool busy") {
		t.Fatal("the pool never ran dry: the test proves nothing")
	}
}

// Two live processes never share an instance id: the second one's Serve
// fails at start, naming the id, and the first one serves on.
func TestInstanceIDIsHeldByOneProcess(t *testing.T) {
	g := startGateway(t, nil, server.Config{Instance: "same", Format: server.FormatRaw})
	clients, err := redisq.Dial(context.Background(), g.rds.URL(), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer clients.Close()
	second, err := server.New(server.Config{Instance: "same", Logger: slog.New(slog.DiscardHandler)}, clients)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = second.Serve(context.Background(), ln)
	if !errors.Is(err, server.ErrStart) || !errors.Is(err, redisq.ErrInstanceTaken) || !strings.Contains(err.Error(), `"same"`) {
		t.Fatalf("second Serve = %v; want a start error naming the id", err)
	}
	c := g.dialReady("u")
	g.push("u", "still served")
	if got := c.MustRead(); got != "still served" {
		t.Fatalf("got %q", got)
	}
}

// A process whose id another process took (it could not renew its claim
// in time) stops serving, and Serve says why.
func TestLosingTheInstanceIDStopsServing(t *testing.T) {
	g := startGateway(t, nil, server.Config{Instance: "lost", Format: server.FormatRaw})
	c := g.dialReady("u")
	if err := g.rc.Set(context.Background(), "redpush:claim:lost", "someone else", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-g.done:
		g.done <- err
		if !errors.Is(err, redisq.ErrInstanceLost) {
			t.Fatalf("Serve = %v, want ErrInstanceLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still serving 10 s after its id was taken")
	}
	if code := c.ReadClose(5 * time.Second); code != ws.StatusGoingAway {
		t.Fatalf("client closed with %d, want 1001", code)
	}
}

// A tab that stops reading holds back neither its user's other tabs nor
// the queue: the reading tab gets every message while the stalled one is
// still open (its writer stuck in a write, its outbox growing).
func TestStalledTabHoldsBackNoOtherTab(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, WriteTimeout: 10 * time.Second, MaxQueuedBytes: 64 << 20})
	stalled := testutil.DialBuffer(t, g.addr, "tabs", 4096)
	if got := stalled.MustRead(); got != "hello;\n" {
		t.Fatalf("greeting %q", got)
	}
	reading := g.dialReady("tabs")
	msgs := testutil.BigMessages(60) // 3.6 MB: more than the stalled socket holds
	g.push("tabs", msgs...)
	for i, want := range msgs {
		if got := reading.MustRead(); got != want {
			t.Fatalf("message %d: got %.10q…, want %.10q…", i, got, want)
		}
	}
	if s := g.srv.Snapshot(); s.Conns != 2 {
		t.Fatalf("%d connections open when the reading tab had everything: it waited for the stalled tab to be closed", s.Conns)
	}
}

// A message that every connection it reaches fails on does not cycle
// forever: after redisq.IsolateAfter failures it goes alone, and after
// redisq.DeadAfter it moves to the dead-letter list beside the queue, while
// the messages behind it are delivered.
func TestMessageThatAlwaysFailsIsDeadLettered(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	ctx := context.Background()
	poison := strings.Repeat("p", 8<<20) // more than the socket buffers hold: its write is in flight
	g.push("poison", poison, "after-1", "after-2")
	proc := "{user_poison_messages}:processing:test"
	for i := range redisq.DeadAfter {
		c := testutil.DialBuffer(t, g.addr, "poison", 4096)
		if got := c.MustRead(); got != "hello;\n" {
			t.Fatalf("greeting %q", got)
		}
		// The first bytes of the batch arrive: its write is under way.
		if _, err := io.ReadFull(c.Conn, make([]byte, 64)); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		c.Reset() // the page dies: the write fails
		testutil.Eventually(t, 10*time.Second, func() error {
			if n, _ := g.rc.LLen(ctx, proc).Result(); n != 0 {
				return fmt.Errorf("attempt %d: still in flight", i)
			}
			return nil
		})
	}
	if dead, _ := g.rc.LRange(ctx, "{user_poison_messages}:dead", 0, -1).Result(); len(dead) != 1 || dead[0] != poison {
		t.Fatalf("dead-letter list holds %d messages, want the poison one alone", len(dead))
	}
	c := g.dialReady("poison")
	for _, want := range []string{"after-1", "after-2"} {
		if got := c.MustRead(); got != want {
			t.Fatalf("got %.20q, want %q", got, want)
		}
	}
	if v := metric(t, g, "redpush_dead_lettered_total"); v != 1 {
		t.Fatalf("redpush_dead_lettered_total = %v", v)
	}
}

// Clients that stop in the middle of a frame hold no reader: with far more
// of them than the reactor has reader tasks, another client's ping and
// message are answered at once, and each stalled one is ended an idle
// timeout after its frame began.
func TestStalledFramesHoldUpNoOne(t *testing.T) {
	const idle = 2 * time.Second
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, IdleTimeout: idle})
	stalled := make([]*testutil.Client, 4*runtime.GOMAXPROCS(0)+16) // more than the reactor's reader tasks
	for i := range stalled {
		stalled[i] = g.dialReady(fmt.Sprint("stall", i))
		sendPartial(t, stalled[i], 1000, make([]byte, 10))
	}
	began := time.Now()
	c := g.dialReady("talker")
	if err := ws.WriteFrame(c.Conn, ws.MaskFrame(ws.NewPingFrame([]byte("there?")))); err != nil {
		t.Fatal(err)
	}
	_ = c.Conn.SetReadDeadline(time.Now().Add(idle / 2))
	if f, err := ws.ReadFrame(c.Conn); err != nil || f.Header.OpCode != ws.OpPong {
		t.Fatalf("got %+v (%v), want the pong within %v", f.Header, err, idle/2)
	}
	c.Send("hi")
	if got, _, err := c.Read(idle / 2); err != nil || got != "hello" {
		t.Fatalf("reply %q (%v), want hello within %v", got, err, idle/2)
	}
	for i, s := range stalled {
		_ = s.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, s.Conn); err != nil {
			t.Fatalf("stalled client %d: %v, want the server to end it", i, err)
		}
	}
	if took := time.Since(began); took < idle-time.Second/2 {
		t.Fatalf("stalled clients ended after %v, before the idle timeout %v", took, idle)
	}
}
