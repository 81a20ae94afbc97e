package redisq

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/resp3"
	"github.com/redpush/redpush/internal/testutil"
)

// The hint connection (pipe) against a real redis-server.

func testPipe(t *testing.T, srv *redis.Client) *pipe {
	t.Helper()
	p := newPipe(srv, "user_", "redpush-hints-pt", slog.New(slog.DiscardHandler), func([]string) {}, func() {})
	if err := p.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	awaitPipeUp(t, p)
	return p
}

// dialQueue is a Queue over the clients of a -redis URL, closed with t.
func dialQueue(t *testing.T, url string) *Queue {
	t.Helper()
	c, err := Dial(t.Context(), url, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	q, err := New(c.Blocking, c.Command, Config{Instance: "pt"})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func awaitPipeUp(t *testing.T, p *pipe) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.nc == nil {
			return errors.New("the hint connection is not up")
		}
		return nil
	})
}

// pipeLink finds the pipe's connection in CLIENT LIST (by its name) and
// the server's run_id: what fence needs to know about it.
func pipeLink(t *testing.T, rc *redis.Client) *link {
	t.Helper()
	var l link
	for _, line := range strings.Split(rc.ClientList(t.Context()).Val(), "\n") {
		if strings.Contains(line, " name=redpush-hints-pt ") {
			_, err := fmt.Sscanf(strings.Fields(line)[0], "id=%d", &l.id)
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if l.id == 0 {
		t.Fatal("the hint connection is not in CLIENT LIST")
	}
	l.runID = infoField(rc.Info(t.Context(), "server").Val(), "run_id")
	return &l
}

// Replies go to the calls that sent their commands, in order, whatever
// happened to the calls before: one whose context ended before it was
// written never runs (its command is not sent), one abandoned while Redis
// worked on it leaves its reply to nobody.
func TestPipeMatchesRepliesToCalls(t *testing.T) {
	rds := testutil.StartRedis(t)
	p := testPipe(t, rds.Client())
	ctx := t.Context()
	gone, cancel := context.WithCancel(ctx)
	cancel()
	_, _, err := p.do(gone, 1, resp3.AppendCommand(nil, "SET", "never", "1"), true, nil) // queued lazily, dropped at the write
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled call: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond) // written (minWriteTime is 50 ms), then abandoned
	defer cancel()
	spin := "local t = redis.call('TIME'); local e = t[1] * 1e6 + t[2] + 600000; " +
		"repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= e; return 'slow'"
	if _, _, err := p.do(short, 1, resp3.AppendCommand(nil, "EVAL", spin, "0"), false, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("an abandoned call: %v", err)
	}
	for i := range 3 {
		replies, _, err := p.do(ctx, 2, resp3.AppendCommand(resp3.AppendCommand(nil, "ECHO", fmt.Sprint("a", i)), "ECHO", fmt.Sprint("b", i)), false, nil)
		if err != nil || len(replies) != 2 || replies[0] != fmt.Sprint("a", i) || replies[1] != fmt.Sprint("b", i) {
			t.Fatalf("call %d got %v (%v)", i, replies, err)
		}
	}
	if n := rds.Client().Exists(ctx, "never").Val(); n != 0 {
		t.Fatal("the command of a call cancelled before its write ran")
	}
}

// A lazy call that no other call takes along is written by the timer.
func TestPipeWritesALazyCallAlone(t *testing.T) {
	rds := testutil.StartRedis(t)
	p := testPipe(t, rds.Client())
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	replies, _, err := p.do(ctx, 1, resp3.AppendCommand(nil, "PING"), true, nil)
	if err != nil || len(replies) != 1 || replies[0] != "PONG" {
		t.Fatalf("got %v (%v)", replies, err)
	}
}

// Hinted consumption needs CLIENT KILL to fence a broken hint connection:
// a user whose ACL refuses it (a common hardening: -@dangerous, which
// leaves HELLO, CLIENT TRACKING and scripts allowed) gets ErrNoHints at
// start, and the server consumes blocking.
func TestHintsNeedClientKill(t *testing.T) {
	for _, rules := range []string{"-@dangerous", "-client|kill", "-info"} {
		t.Run(rules, func(t *testing.T) {
			rds := testutil.StartRedis(t)
			q := dialQueue(t, rds.UserURL("app", rules))
			h, err := q.StartHints(t.Context(), func(string) {}, func() {})
			if !errors.Is(err, ErrNoHints) {
				if h != nil {
					h.Close()
				}
				t.Fatalf("StartHints with %s: %v, want ErrNoHints", rules, err)
			}
		})
	}
}

// The fence kills the old connection on the server it reached.
func TestFenceKillsTheOldConnection(t *testing.T) {
	rds := testutil.StartRedis(t)
	p := testPipe(t, rds.Client())
	l := pipeLink(t, rds.Client())
	if !p.fence(l) {
		t.Fatal("fence gave up")
	}
	if list := rds.Client().ClientList(t.Context()).Val(); strings.Contains(list, fmt.Sprintf("id=%d ", l.id)) {
		t.Fatalf("connection %d still there after the fence:\n%s", l.id, list)
	}
}

// After a Redis restart client ids start again at 1: the fence must not
// kill whichever client got the old connection's id (that connection
// died with the old server). Seen failing before the run_id check.
func TestFenceAfterARestartKillsNobody(t *testing.T) {
	rds := testutil.StartRedis(t)
	srv := redis.NewClient(&redis.Options{Addr: rds.Addr()})
	defer srv.Close()
	p := testPipe(t, srv)
	l := pipeLink(t, rds.Client())
	p.close() // nothing of its own takes an id after the restart
	rds.Restart()
	var victims []net.Conn
	got := false
	for !got { // other clients take the ids again, up to the old one
		nc, err := net.Dial("tcp", rds.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if _, err := nc.Write(resp3.AppendCommand(nil, "CLIENT", "ID")); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(nc).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		var id int64
		if _, err := fmt.Sscanf(line, ":%d", &id); err != nil || id > l.id {
			t.Fatalf("CLIENT ID %q (%v): no client got the old id %d", line, err, l.id)
		}
		got = id == l.id
		victims = append(victims, nc)
	}
	fencer := redis.NewClient(&redis.Options{Addr: rds.Addr()})
	defer fencer.Close()
	if !newPipe(fencer, "user_", "redpush-hints-pt", slog.New(slog.DiscardHandler), func([]string) {}, func() {}).fence(l) {
		t.Fatal("fence gave up")
	}
	for i, nc := range victims {
		_ = nc.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := nc.Write(resp3.AppendCommand(nil, "PING")); err != nil {
			t.Fatalf("client %d was killed by the fence: %v", i, err)
		}
		if _, err := bufio.NewReader(nc).ReadString('\n'); err != nil {
			t.Fatalf("client %d (the old id's: %v) was killed by the fence: %v", i, i == len(victims)-1, err)
		}
	}
}

// A pipe whose go-redis client was closed (go-redis closes a cluster
// node's client a while after the node left the slot map) gives up, and
// Hints opens a new one for a new client of the same address. Seen
// failing before: the fence retried "client is closed" forever.
func TestAPipeOfAClosedClientIsReplaced(t *testing.T) {
	rds := testutil.StartRedis(t)
	q, err := New(rds.Client(), rds.Client(), Config{Instance: "pt"})
	if err != nil {
		t.Fatal(err)
	}
	h := &Hints{q: q, onHint: func(string) {}, onLost: func() {}, pipes: map[string]*pipe{}}
	defer h.Close()
	old := redis.NewClient(&redis.Options{Addr: rds.Addr()})
	p, err := h.pipeOf(t.Context(), old)
	if err != nil {
		t.Fatal(err)
	}
	awaitPipeUp(t, p)
	_ = old.Close()
	rds.Client().Do(t.Context(), "CLIENT", "KILL", "SKIPME", "yes") // every connection but the test's
	testutil.Eventually(t, 10*time.Second, func() error {
		if !p.isObsolete() {
			return errors.New("the pipe of the closed client has not given up")
		}
		return nil
	})
	fresh := redis.NewClient(&redis.Options{Addr: rds.Addr()})
	defer fresh.Close()
	p2, err := h.pipeOf(t.Context(), fresh)
	if err != nil || p2 == p {
		t.Fatalf("pipeOf after the client was replaced: same pipe %v (%v)", p2 == p, err)
	}
	awaitPipeUp(t, p2)
}

// The sweep reads every queue it can: a cluster master that is down, or
// that does not answer, costs its own users' lengths, not everyone's.
// Seen failing before: one error failed the whole sweep; then a master
// that did not answer (go-redis's cluster pipeline retries it until the
// context ends, and fails every command then) still did.
func TestLengthsWithAMasterDown(t *testing.T) {
	for _, how := range []string{"stopped", "frozen"} {
		t.Run(how, func(t *testing.T) {
			cl := testutil.StartCluster(t)
			q := dialQueue(t, cl.URL())
			users := cl.UsersOnEachMaster("sw", q.Key)
			if err := cl.Client().LPush(t.Context(), q.Key(users[0]), "waiting").Err(); err != nil {
				t.Fatal(err)
			}
			if _, err := q.Lengths(t.Context(), users, time.Second); err != nil {
				t.Fatal(err)
			}
			down := cl.MasterOf(q.Key(users[2]))
			for _, n := range cl.Nodes {
				if n.Addr() != down {
					continue
				}
				if how == "stopped" {
					n.Stop()
				} else {
					defer n.Freeze()()
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			lens, err := q.Lengths(ctx, users, time.Second)
			if err == nil || len(lens) != len(users) || lens[0] != 1 || lens[1] != 0 || lens[2] != -1 {
				t.Fatalf("lengths %v (%v), want user %s's 1, %s's 0 and -1 for %s on the %s master", lens, err, users[0], users[1], users[2], how)
			}
		})
	}
}

// Pops wait for a turn on their own master's hint connection only: 16
// pops stuck on a master that stalls (a slow script, a partition not yet
// noticed) do not hold up a pop on a healthy master. Seen failing with
// one semaphore for the whole process (the second review's
// demonstration).
func TestPopsOfAStalledMasterDoNotHoldUpTheOthers(t *testing.T) {
	stalledPops(t, popsInFlight)
}

func stalledPops(t *testing.T, stuck int) {
	cl := testutil.StartCluster(t)
	q := dialQueue(t, cl.URL())
	h, err := q.StartHints(t.Context(), func(string) {}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	stalled := cl.Nodes[1]
	var onStalled []string
	var healthy string
	for i := 0; (len(onStalled) < stuck || healthy == "") && i < 5000; i++ {
		u := fmt.Sprint("hol", i)
		if cl.MasterOf(q.Key(u)) == stalled.Addr() {
			if len(onStalled) < stuck {
				onStalled = append(onStalled, u)
			}
		} else if healthy == "" {
			healthy = u
		}
	}
	if err := cl.Client().LPush(t.Context(), q.Key(healthy), "waiting").Err(); err != nil {
		t.Fatal(err)
	}
	// Every pipe is up and every user's master known before the stall.
	for _, u := range append([]string{healthy}, onStalled...) {
		if _, err := h.pipeFor(t.Context(), u); err != nil {
			t.Fatal(err)
		}
	}
	thaw := stalled.Freeze()
	var wg sync.WaitGroup
	defer func() { thaw(); wg.Wait() }()
	for _, u := range onStalled {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
			defer cancel()
			_, _, _ = h.PopBatch(ctx, u, Acks{}, 1, q.NewToken())
		}()
	}
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	start := time.Now()
	msgs, _, err := h.PopBatch(ctx, healthy, Acks{}, 10, q.NewToken())
	if err != nil || len(msgs) != 1 {
		t.Fatalf("a pop on a healthy master while another stalls: %v (%v) after %v, want the waiting message at once",
			msgs, err, time.Since(start).Round(time.Millisecond))
	}
}

// A call too close to its deadline is not written and fails alone: the
// write's deadline is the calls', and a past one failed the write, which
// broke the connection for every call on it (an unrelated call with 10 s
// to go got "hint connection down"). Seen failing before (the second
// review's demonstration).
func TestACallNearItsDeadlineFailsAlone(t *testing.T) {
	rds := testutil.StartRedis(t)
	p := testPipe(t, rds.Client())
	long, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	spin := "local t = redis.call('TIME'); local e = t[1] * 1e6 + t[2] + 1000000; " +
		"repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= e; return 'slow'"
	res := make(chan error, 1)
	go func() {
		_, _, err := p.do(long, 1, resp3.AppendCommand(nil, "EVAL", spin, "0"), false, nil)
		res <- err
	}()
	time.Sleep(50 * time.Millisecond) // the slow call is in flight
	for i := range 400 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%40)*time.Microsecond)
		_, _, _ = p.do(ctx, 1, resp3.AppendCommand(nil, "PING"), false, nil)
		cancel()
	}
	if err := <-res; err != nil {
		t.Fatalf("a call with 10 s to go failed because another's deadline passed: %v", err)
	}
}

// After a failover every consumer of a master asks for its hint
// connection at once: one is opened, the others wait for it (a dial each
// could exhaust maxclients). Seen failing before: 64 callers, 65 dials.
func TestConcurrentFirstPopsOpenOnePipe(t *testing.T) {
	rds := testutil.StartRedis(t)
	q, err := New(rds.Client(), rds.Client(), Config{Instance: "rv"})
	if err != nil {
		t.Fatal(err)
	}
	h := &Hints{q: q, onHint: func(string) {}, onLost: func() {}, pipes: map[string]*pipe{}}
	defer h.Close()
	var dials atomic.Int32
	srv := redis.NewClient(&redis.Options{Addr: rds.Addr(), PoolSize: 1,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}})
	defer srv.Close()
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := h.pipeOf(t.Context(), srv); err != nil && !errors.Is(err, errPipeDown) {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	// One pooled connection (CLIENT KILL check, PING) and one hint connection.
	if n := dials.Load(); n > 3 {
		t.Errorf("64 concurrent first pops of one master dialled %d connections (%d failed), want 2", n, failed.Load())
	}
}
