package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

// startGateway runs a redpush in-process on a loopback port, on the Redis
// that redisURL names.
func startGatewayAt(t *testing.T, redisURL string) string {
	t.Helper()
	clients, err := redisq.Dial(context.Background(), redisURL, 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = clients.Close() })
	srv, err := server.New(server.Config{Instance: "bench-test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, clients)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return "ws://" + ln.Addr().String() + "/"
}

// runBench parses args as the command line would and runs once.
func runBench(t *testing.T, args ...string) (*config, *result) {
	t.Helper()
	cfg, err := parseFlags(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	judge(cfg.allow, r)
	return cfg, r
}

// expect compares the named JSON figures of a result.
func expect(t *testing.T, r *result, want map[string]float64) {
	t.Helper()
	b, _ := json.Marshal(r)
	var got map[string]any
	_ = json.Unmarshal(b, &got)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if t.Failed() {
		t.Logf("verdict: %s", r.Verdict)
	}
}

// The bench's producers take the same -redis URL forms as redpush: here a
// cluster, with users' queues on all three masters; what is left in Redis
// is read on every master.
func TestRunOnACluster(t *testing.T) {
	c := testutil.StartCluster(t)
	url := startGatewayAt(t, c.URL())
	_, r := runBench(t, "-url", url, "-redis", c.URL(), "-users", "30", "-messages", "20")
	expect(t, r, map[string]float64{"connected": 30, "sent": 600, "delivered": 600, "lost": 0, "still_in_redis": 0})
	if !r.passed() {
		t.Fatalf("verdict %s", r.Verdict)
	}
	// A leftover on each master is found: stop reading, push, read again.
	left := c.UsersOnEachMaster("", func(u string) string { return "user_" + u + "_messages" })
	cfg, _ := parseFlags([]string{"-redis", c.URL(), "-users", "1000", "-first-user", "0"}, io.Discard)
	for _, u := range left {
		c.Client().LPush(context.Background(), "{user_"+u+"_messages}:processing:x", string(makePayload(nil, u, 0, 1, 0, 0)))
	}
	o, err := occupancyOf(context.Background(), cfg, redisClient(t, c.URL()))
	if err != nil || o.processing != int64(len(left)) {
		t.Fatalf("found %d in processing lists on %d masters, want %d (%v)", o.processing, len(left), len(left), err)
	}
}

func redisClient(t *testing.T, url string) redis.UniversalClient {
	ep, err := redisq.ParseEndpoint(url)
	if err != nil {
		t.Fatal(err)
	}
	c := ep.NewClient(4)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRunMatchesEveryMessage(t *testing.T) {
	rs := testutil.StartRedis(t)
	url := startGatewayAt(t, rs.URL())
	_, r := runBench(t, "-url", url, "-redis", rs.URL(), "-users", "20", "-conns-per-user", "2",
		"-messages", "50", "-producers", "3", "-payload", "100")
	expect(t, r, map[string]float64{"connected": 40, "sent": 1000, "delivered": 2000, "lost": 0, "duplicated": 0,
		"out_of_order": 0, "misdelivered": 0, "unparsed_frames": 0, "partial": 0, "still_in_redis": 0, "unsent": 0})
	if r.Latency.P50 <= 0 || r.Latency.Max < r.Latency.P99 || r.Histogram == "" || !r.passed() {
		t.Fatalf("figures: %+v", r)
	}
	if r.LatencyUncorrected != nil {
		t.Fatal("an unpaced run reported an uncorrected latency: there is no schedule to correct for")
	}
}

func TestBacklogDrain(t *testing.T) {
	rs := testutil.StartRedis(t)
	url := startGatewayAt(t, rs.URL())
	_, r := runBench(t, "-url", url, "-redis", rs.URL(), "-users", "10", "-backlog", "300")
	expect(t, r, map[string]float64{"sent": 3000, "delivered": 3000, "out_of_order": 0, "lost": 0})
	if r.DeliverSeconds <= 0 {
		t.Fatalf("result %+v", r)
	}
}

// -spawn splits the users over child processes and merges what they saw,
// the uncorrected latency of a paced run included.
func TestSpawnMergesChildren(t *testing.T) {
	rs := testutil.StartRedis(t)
	url := startGatewayAt(t, rs.URL())
	bin := buildBench(t)
	out := filepath.Join(t.TempDir(), "r.json")
	report := filepath.Join(t.TempDir(), "r.html")
	cmd := exec.Command(bin, "-url", url, "-redis", rs.URL(), "-users", "21", "-rate", "300", "-duration", "2s", "-spawn", "3",
		"-hold", "1500ms", "-json", out, "-report", report)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bench: %v\n%s", err, b)
	}
	r, err := readResult(out)
	if err != nil {
		t.Fatal(err)
	}
	// 3 children × 100 msg/s × 2 s, one message due at every 1/rate.
	expect(t, r, map[string]float64{"connected": 21, "sent": 600, "delivered": 600, "lost": 0, "duplicated": 0, "schema": 2})
	if r.Latency.P99 <= 0 || r.LatencyUncorrected == nil || r.LatencyUncorrected.P99 <= 0 || r.Verdict != "pass" {
		t.Errorf("merged figures missing: %+v", r)
	}
	if r.Redis == nil || len(r.Redis.PIDs) != 1 || r.Redis.PIDs[0] != rs.PID() || r.RedisClients.Samples == 0 {
		t.Errorf("the parent did not sample Redis: %+v %+v", r.Redis, r.RedisClients)
	}
	if st, err := os.Stat(report); err != nil || st.Size() < 1000 {
		t.Errorf("report not written: %v", err)
	}
	// The idle window: the last two thirds of -hold, timed by the parent
	// between the children's phases.
	if r.IdleSeconds < 0.5 || r.IdleSeconds > 3 {
		t.Errorf("idle window %.2f s, want about 1 s (2/3 of -hold 1.5s)", r.IdleSeconds)
	}
}

func buildBench(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "redpush-bench")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// The bench must never eat real messages: it refuses queues that already
// hold some, unless -first-user moves away or -wipe says they may go.
func TestRefusesQueuesThatHoldMessages(t *testing.T) {
	rs := testutil.StartRedis(t)
	rc := rs.Client()
	ctx := context.Background()
	rc.LPush(ctx, "user_3_messages", "a real message")
	url := startGatewayAt(t, rs.URL())
	bin := buildBench(t)
	cmd := exec.Command(bin, "-url", url, "-redis", rs.URL(), "-users", "5", "-messages", "2")
	out, err := cmd.CombinedOutput()
	if code := exitCode(err); code != 2 || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 ||
		!strings.Contains(string(out), "user_3_messages") {
		t.Fatalf("exit %d, output %q: want exit 2 and one line naming user_3_messages", code, out)
	}
	if n, _ := rc.LLen(ctx, "user_3_messages").Result(); n != 1 {
		t.Fatalf("the real message was consumed (queue holds %d)", n)
	}
	_, r := runBench(t, "-url", url, "-redis", rs.URL(), "-users", "5", "-messages", "2", "-first-user", "10")
	expect(t, r, map[string]float64{"sent": 10, "delivered": 10})
	_, r = runBench(t, "-url", url, "-redis", rs.URL(), "-users", "5", "-messages", "2", "-wipe")
	expect(t, r, map[string]float64{"sent": 10, "delivered": 10, "unparsed_frames": 0})
	if !r.passed() {
		t.Fatalf("verdict %s", r.Verdict)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if e, ok := err.(*exec.ExitError); ok {
		return e.ExitCode()
	}
	return -1
}

func TestHelpListsSubcommandsAndHidesInternalFlags(t *testing.T) {
	var b strings.Builder
	if _, err := parseFlags([]string{"-h"}, &b); err == nil {
		t.Fatal("-h did not stop")
	}
	h := b.String()
	for _, want := range []string{"measures a Swoole-compatible", "suite", "compare", "-allow", "-hgrm", "-wipe", "-redis-pid"} {
		if !strings.Contains(h, want) {
			t.Errorf("-h lacks %q", want)
		}
	}
	if strings.Contains(h, "-child") {
		t.Error("-h shows the internal -child flag")
	}
	if !strings.HasPrefix(h, "redpush-bench measures") {
		t.Errorf("-h does not start with the summary: %q", h[:40])
	}
}

// -ack connects with ?ack=1, acknowledges each message and reports the
// time from push to acknowledgement; nothing is left in Redis, which it
// would be if the acknowledgements did not reach the server.
func TestRunAckMode(t *testing.T) {
	rs := testutil.StartRedis(t)
	url := startGatewayAt(t, rs.URL())
	_, r := runBench(t, "-url", url, "-redis", rs.URL(), "-users", "10", "-conns-per-user", "2",
		"-messages", "50", "-ack")
	expect(t, r, map[string]float64{"connected": 20, "sent": 500, "delivered": 1000, "lost": 0, "duplicated": 0,
		"unparsed_frames": 0, "still_in_redis": 0})
	if a := r.Ack; a == nil || a.PushToAck.P50 <= 0 || a.PushToAck.P50 < r.Latency.P50 || a.Redelivered != 0 || a.Histogram == "" || !r.passed() {
		t.Fatalf("ack figures %+v, latency %+v, verdict %s", r.Ack, r.Latency, r.Verdict)
	}
}
