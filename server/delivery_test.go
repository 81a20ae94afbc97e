package server_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// The original's consumer never ends; redpush's stops within about a second
// of the last close, cleanly or by TCP reset, and what is pushed afterwards
// waits in Redis for the next connect.
func TestConsumerStopsAfterLastConnectionCloses(t *testing.T) {
	for _, tc := range []struct {
		name     string
		consumer string
		close    func(c *testutil.Client)
	}{
		{"close frame", server.ConsumerBlocking, func(c *testutil.Client) { c.SendClose() }},
		{"tcp reset", server.ConsumerBlocking, func(c *testutil.Client) { c.Reset() }},
		{"close frame", server.ConsumerHinted, func(c *testutil.Client) { c.SendClose() }},
		{"tcp reset", server.ConsumerHinted, func(c *testutil.Client) { c.Reset() }},
	} {
		t.Run(tc.consumer+" "+tc.name, func(t *testing.T) {
			g := startGateway(t, nil, server.Config{Format: server.FormatRaw, Consumer: tc.consumer})
			mon := g.rds.StartMonitor()
			c := g.dialReady("42")
			g.awaitConsumers(1, 5*time.Second)
			blocking := tc.consumer == server.ConsumerBlocking
			// A blocking consumer blocks on its own connection, in a round
			// as long as the instance claim allows (2 s at most); a hinted
			// one pops once at start (its queue may have filled while it
			// was away), then waits for a hint.
			want := `"lmove" "user_42_messages" "{user_42_messages}:processing:test" "right" "left"`
			if blocking {
				want = `"blmove" "user_42_messages" "{user_42_messages}:processing:test" "right" "left"`
			}
			testutil.Eventually(t, 5*time.Second, func() error {
				for _, l := range mon.Lines() {
					if strings.Contains(strings.ToLower(l), want) {
						return nil
					}
				}
				return fmt.Errorf("the consumer has not popped yet")
			})
			unblocks := commandCalls(t, g, "client|unblock")
			closed := time.Now()
			tc.close(c)
			g.awaitConsumers(0, 5*time.Second)
			// Woken by CLIENT UNBLOCK (which MONITOR does not show, and
			// which the fallback to short rounds never sends), or by the
			// hub (hinted), at once.
			if took := time.Since(closed); took > 2500*time.Millisecond {
				t.Errorf("consumer stopped %v after the close, want at once", took)
			}
			if n := commandCalls(t, g, "client|unblock"); blocking && n <= unblocks {
				t.Errorf("no CLIENT UNBLOCK after the close: the consumer was not woken")
			}
			if blocking {
				for _, l := range mon.Lines() {
					if !strings.Contains(l, " lua]") && strings.Contains(strings.ToLower(l), `"lmove"`) {
						t.Errorf("a blocking consumer popped with LMOVE (hinted?): %s", l)
						break
					}
				}
			} else if n := commandCalls(t, g, "blmove"); n != 0 {
				t.Errorf("a hinted consumer sent %d BLMOVE", n)
			}
			g.push("42", "later")
			n, err := g.rc.LLen(t.Context(), "user_42_messages").Result()
			if err != nil || n != 1 {
				t.Fatalf("queue length = %d (%v), want the message to wait in Redis", n, err)
			}
			c2 := g.dialReady("42")
			if got := c2.MustRead(); got != "later" {
				t.Fatalf("got %q after reconnect", got)
			}
		})
	}
}

// The original reuses fds, so a dead user's consumer pushes into the next
// user's socket. Here a's consumer holds a message in flight while a dies
// and b connects; it then never writes that message to b, and the message
// is not lost: it is the first thing a's next connection gets.
func TestNoMessageReachesAnotherUser(t *testing.T) {
	var hold atomic.Pointer[chan struct{}] // set: a's next delivery waits on it
	reached := make(chan struct{}, 1)
	defer server.SetHook(func(_ context.Context, user, stage string) {
		if user != "a" || stage != "deliver" {
			return
		}
		if h := hold.Swap(nil); h != nil {
			reached <- struct{}{}
			<-*h
		}
	})()
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	const rounds = 30
	for i := range rounds {
		a := g.dialReady("a")
		if i > 0 { // the message held while a died comes first, then the new one
			if got, want := a.MustRead(), fmt.Sprintf("a-late-%d", i-1); got != want {
				t.Fatalf("round %d: a got %q first, want %q held in flight when it died", i, got, want)
			}
		}
		mine := fmt.Sprintf("a-%d", i)
		g.push("a", mine)
		if got := a.MustRead(); got != mine {
			t.Fatalf("a got %q, want %q", got, mine)
		}
		release := make(chan struct{})
		hold.Store(&release)
		g.push("a", fmt.Sprintf("a-late-%d", i))
		select { // a's consumer holds a-late-i, popped, not yet written
		case <-reached:
		case <-time.After(10 * time.Second):
			t.Fatal("a's consumer never took the late message")
		}
		a.Reset()
		testutil.Eventually(t, 5*time.Second, func() error {
			if n := g.srv.Snapshot().Conns; n != 0 {
				return fmt.Errorf("%d connections, want a's gone", n)
			}
			return nil
		})
		b := g.dialReady("b")
		close(release) // a's consumer goes on while b is connected
		g.push("b", fmt.Sprintf("b-%d", i))
		if got := b.MustRead(); got != fmt.Sprintf("b-%d", i) {
			t.Fatalf("b got %q, want its own message b-%d", got, i)
		}
		g.awaitQueueLen("a", 1) // a-late-i went back to a's queue
		b.SendClose()
	}
	a := g.dialReady("a")
	if got, want := a.MustRead(), fmt.Sprintf("a-late-%d", rounds-1); got != want {
		t.Fatalf("a got %q, want %q", got, want)
	}
}

func TestTwoTabsOfOneUserEachGetEveryMessage(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	tab1 := g.dialReady("42")
	tab2 := g.dialReady("42")
	testutil.Eventually(t, 5*time.Second, func() error {
		if s := g.srv.Snapshot(); s.Conns != 2 || s.Consumers != 1 {
			return fmt.Errorf("snapshot %+v, want 2 connections and 1 consumer", s)
		}
		return nil
	})
	msgs := testutil.Seq("m", 200)
	g.push("42", msgs...)
	for _, tab := range []*testutil.Client{tab1, tab2} {
		for _, m := range msgs {
			if got := tab.MustRead(); got != m {
				t.Fatalf("got %q, want %q", got, m)
			}
		}
	}
}

// A connection that dies while the server writes to it loses nothing: the
// failed write puts the whole batch back, and it arrives on the next
// connection, in order. (Bytes the client's kernel accepted but the client
// never read are beyond any server without client acks: see the README.)
func TestNoLossWhenConnectionDiesMidDelivery(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	msgs := testutil.BigMessages(100) // ~6 MB in one batch: the write cannot finish
	g.push("42", msgs...)
	c := testutil.DialBuffer(t, g.addr, "42", 4096)
	if got := c.MustRead(); got != "hello;\n" {
		t.Fatalf("greeting %q", got)
	}
	g.awaitQueueEmpty("42") // popped: the write is under way
	c.Reset()
	g.awaitConsumers(0, 5*time.Second)
	if s := g.srv.Snapshot(); s.Requeued != int64(len(msgs)) || s.Delivered != 0 {
		t.Fatalf("snapshot %+v, want all %d requeued", s, len(msgs))
	}
	readAll(t, g.dialReady("42"), msgs, map[string]bool{})
}

// readAll reads from c until every message in want was seen (in seen or on
// c) and checks that what c delivers is in order.
func readAll(t *testing.T, c *testutil.Client, want []string, seen map[string]bool) {
	t.Helper()
	last := -1
	index := map[string]int{}
	for i, m := range want {
		index[m] = i
	}
	for missing := countMissing(want, seen); missing > 0; {
		m := c.MustRead()
		i, ok := index[m]
		if !ok {
			t.Fatalf("unexpected message %q", m)
		}
		if i < last {
			t.Fatalf("out of order: %q after %q", m, want[last])
		}
		last = i
		if !seen[m] {
			seen[m] = true
			missing--
		}
	}
}

func countMissing(want []string, seen map[string]bool) int {
	n := 0
	for _, m := range want {
		if !seen[m] {
			n++
		}
	}
	return n
}

// A client that stops reading stalls nobody else; after the write timeout it
// is disconnected and its messages wait for its next connection.
func TestSlowReaderIsDisconnectedAndLosesNothing(t *testing.T) {
	// The write timeout is long enough for fast's 20 round trips to end
	// well before it on a loaded machine, and short enough to wait for.
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, WriteTimeout: 3 * time.Second})
	msgs := testutil.BigMessages(100)
	g.push("slow", msgs...)
	slow := testutil.DialBuffer(t, g.addr, "slow", 4096)
	if got := slow.MustRead(); got != "hello;\n" {
		t.Fatalf("greeting %q", got)
	}
	// The first message of the batch arrives: slow's consumer is in its
	// write of the 6 MB batch, which then stalls (slow reads no more).
	seen := map[string]bool{}
	if got := slow.MustRead(); got != msgs[0] {
		t.Fatalf("slow got %.10q…, want the first message", got)
	}
	seen[msgs[0]] = true
	fast := g.dialReady("fast")
	// While slow's consumer is stuck in a write, fast is served.
	for i := range 20 {
		g.push("fast", fmt.Sprint(i))
		if got := fast.MustRead(); got != fmt.Sprint(i) {
			t.Fatalf("fast got %q", got)
		}
	}
	// ... and slow was stuck all along: still connected, its whole batch
	// still in flight, nothing requeued yet.
	if s := g.srv.Snapshot(); s.Conns != 2 || s.Requeued != 0 {
		t.Fatalf("snapshot %+v after fast was served: want slow still connected and stuck", s)
	}
	if n := g.rc.LLen(t.Context(), "{user_slow_messages}:processing:test").Val(); n != int64(len(msgs)) {
		t.Fatalf("slow's processing list holds %d after fast was served, want its whole batch of %d", n, len(msgs))
	}
	// The stalled connection is closed by the server, the batch requeued.
	testutil.Eventually(t, 10*time.Second, func() error {
		if s := g.srv.Snapshot(); s.Conns != 1 || s.Requeued != int64(len(msgs)) {
			return fmt.Errorf("snapshot %+v, want the slow connection closed and %d requeued", s, len(msgs))
		}
		return nil
	})
	if line := logLine(g, "user=slow reason="); !strings.Contains(line, `reason="write failed: `) {
		t.Errorf("the slow reader's close is logged as %q", line)
	}
	if v := metric(t, g, "redpush_write_failures_total"); v != 1 {
		t.Errorf("redpush_write_failures_total = %v, want 1 (slow's write)", v)
	}
	drain(slow, seen) // complete frames the kernel buffered before the close
	readAll(t, g.dialReady("slow"), msgs, seen)
}

// drain reads what is left on a closed connection.
func drain(c *testutil.Client, seen map[string]bool) {
	for {
		m, _, err := c.Read(2 * time.Second)
		if err != nil {
			return
		}
		seen[m] = true
	}
}

// Many users at once: each gets exactly its own messages, in order.
func TestManyUsersConcurrently(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	const users, each = 40, 100
	var wg sync.WaitGroup
	errs := make(chan error, users)
	for u := range users {
		user := fmt.Sprint("u", u)
		c := g.dialReady(user)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				m, _, err := c.Read(10 * time.Second)
				if want := fmt.Sprintf("%s/%d", user, i); err != nil || m != want {
					errs <- fmt.Errorf("%s got %q (%v), want %q", user, m, err, want)
					return
				}
			}
		}()
	}
	for i := range each {
		for u := range users {
			g.push(fmt.Sprint("u", u), fmt.Sprintf("u%d/%d", u, i))
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// commandCalls is how many times Redis ran cmd (INFO commandstats; cmd as
// Redis names it there, e.g. "client|unblock").
func commandCalls(t *testing.T, g *gateway, cmd string) int {
	t.Helper()
	info, err := g.rc.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			n, _ := strconv.Atoi(strings.Split(v, ",")[0])
			return n
		}
	}
	return 0
}
