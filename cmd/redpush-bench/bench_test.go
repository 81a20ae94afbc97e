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
	"strconv"
	"testing"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

// startGateway runs a redpush in-process on a loopback port, on a fresh
// redis-server.
func startGateway(t *testing.T) (url, redisURL string) {
	t.Helper()
	return startGatewayAt(t, testutil.StartRedis(t).URL())
}

// startGatewayAt runs a redpush in-process on a loopback port, on the Redis
// that redisURL names.
func startGatewayAt(t *testing.T, redisURL string) (url, _ string) {
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
	return "ws://" + ln.Addr().String() + "/", redisURL
}

// The bench's producers take the same -redis URL forms as redpush: here a
// cluster, with users' queues on all three masters.
func TestRunOnACluster(t *testing.T) {
	url, redisURL := startGatewayAt(t, testutil.StartCluster(t).URL())
	cfg, err := parseFlags([]string{"-url", url, "-redis", redisURL, "-users", "30", "-messages", "20"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Connected != 30 || r.Sent != 600 || r.Delivered != 600 || verdict(cfg, r) != "" {
		t.Fatalf("result %+v", r)
	}
}

func TestRunMatchesEveryMessage(t *testing.T) {
	url, redisURL := startGateway(t)
	cfg, err := parseFlags([]string{"-url", url, "-redis", redisURL, "-users", "20", "-conns-per-user", "2",
		"-messages", "50", "-producers", "3", "-payload", "100", "-server-pid", strconv.Itoa(os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	r, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Connected != 40 || r.Sent != 1000 || r.Delivered != 2000 || r.Lost != 0 || r.Duplicated != 0 ||
		r.OutOfOrder != 0 || r.Misdelivered != 0 || r.Garbage != 0 {
		t.Fatalf("result %+v", r)
	}
	if r.Latency.P50 <= 0 || r.Latency.Max < r.Latency.P99 || r.Server.RSSPeak == 0 || r.Histogram == "" {
		t.Fatalf("figures missing: %+v", r)
	}
	if verdict(cfg, r) != "" {
		t.Fatalf("a clean run failed: %s", verdict(cfg, r))
	}
	r.Lost = 1
	if verdict(cfg, r) == "" {
		t.Fatal("a run with a lost message passed")
	}
}

func TestBacklogDrain(t *testing.T) {
	url, redisURL := startGateway(t)
	cfg, _ := parseFlags([]string{"-url", url, "-redis", redisURL, "-users", "10", "-backlog", "300"})
	r, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 3000 || r.Delivered != 3000 || r.OutOfOrder != 0 || r.Lost != 0 || r.DeliverSeconds <= 0 {
		t.Fatalf("result %+v", r)
	}
}

// -spawn splits the users over child processes and merges what they saw.
func TestSpawnMergesChildren(t *testing.T) {
	url, redisURL := startGateway(t)
	bin := filepath.Join(t.TempDir(), "redpush-bench")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out := filepath.Join(t.TempDir(), "r.json")
	report := filepath.Join(t.TempDir(), "r.html")
	cmd := exec.Command(bin, "-url", url, "-redis", redisURL, "-users", "21", "-messages", "30", "-spawn", "3",
		"-json", out, "-report", report)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bench: %v\n%s", err, b)
	}
	var r map[string]any
	b, _ := os.ReadFile(out)
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]float64{"connected": 21, "sent": 630, "delivered": 630, "lost": 0, "duplicated": 0, "out_of_order": 0} {
		if r[k] != want {
			t.Errorf("%s = %v, want %v", k, r[k], want)
		}
	}
	lat, _ := r["latency_ms"].(map[string]any)
	if lat["p99"].(float64) <= 0 {
		t.Errorf("merged latency missing: %v", lat)
	}
	if st, err := os.Stat(report); err != nil || st.Size() < 1000 {
		t.Errorf("report not written: %v", err)
	}
}
