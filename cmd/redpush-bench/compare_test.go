package main

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// compare against two redpush builds (here the same one twice), a short
// run per side: both sides measured, each on its own fresh Redis, medians
// and ratios written.
func TestCompareTwoRedpushBuilds(t *testing.T) {
	bench := buildBench(t)
	redpush := filepath.Join(t.TempDir(), "redpush")
	if out, err := exec.Command("go", "build", "-o", redpush, "../redpush").CombinedOutput(); err != nil {
		t.Fatalf("build redpush: %v\n%s", err, out)
	}
	out := filepath.Join(t.TempDir(), "cmp.json")
	report := filepath.Join(t.TempDir(), "cmp.html")
	srv := redpush + " -addr {addr} -redis {redis} -log-level warn"
	cmd := exec.Command(bench, "compare", "-a", srv, "-b", srv, "-a-name", "old", "-b-name", "new", "-runs", "1",
		"-users", "10", "-rate", "200", "-duration", "1s", "-json", out, "-report", report)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("compare: %v\n%s", err, b)
	}
	for _, want := range []string{"old #1", "new #1", "median old", "median new", "ratio b/a"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the table lacks %q:\n%s", want, b)
		}
	}
	var c struct {
		A, B   []result
		Median map[string]map[string]any
		Ratio  map[string]*float64
	}
	data, _ := os.ReadFile(out)
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	if len(c.A) != 1 || len(c.B) != 1 {
		t.Fatalf("runs: a %d, b %d; want 1 each", len(c.A), len(c.B))
	}
	for _, r := range append(c.A, c.B...) {
		if r.Verdict != "pass" || r.Sent != 200 || r.Server.Processes < 1 || r.Redis == nil || r.Server.CPUSeconds < 0 {
			t.Errorf("run: verdict %q, sent %d, %d processes, redis %+v", r.Verdict, r.Sent, r.Server.Processes, r.Redis)
		}
	}
	if c.A[0].Redis.PIDs[0] == c.B[0].Redis.PIDs[0] {
		t.Error("both sides ran on the same redis-server: each run needs a fresh one")
	}
	for _, k := range []string{"delivered_per_sec", "p50_ms", "p99_ms", "p999_ms", "rss_per_conn_bytes", "cpu_us_per_msg", "redis_cpu_us_per_msg"} {
		if _, ok := c.Ratio[k]; !ok {
			t.Errorf("ratio lacks %s", k)
		}
	}
	if r := c.Ratio["delivered_per_sec"]; r == nil || *r <= 0 {
		t.Errorf("ratio delivered_per_sec %v", r)
	}
	if html, _ := os.ReadFile(report); !strings.Contains(string(html), "old") || !strings.Contains(string(html), "new") {
		t.Error("the report does not name both servers")
	}
}

// A run that cannot be made (the server does not come up) is exit 1; a
// fixed address that is taken is refused before anything starts (exit 2).
func TestCompareRefusals(t *testing.T) {
	bench := buildBench(t)
	out, err := exec.Command(bench, "compare", "-a", "exit 3", "-b", "exit 3", "-runs", "1", "-users", "1", "-messages", "1").CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "did not come up") {
		t.Errorf("a server that exits: exit %d, %s", code, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out, err = exec.Command(bench, "compare", "-a", "true", "-a-addr", ln.Addr().String(), "-b", "true").CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "taken") {
		t.Errorf("a taken -a-addr: exit %d, %s", code, out)
	}
	out, err = exec.Command(bench, "compare", "-a", "x", "-b", "y", "-url", "ws://x/").CombinedOutput()
	if code := exitCode(err); code != 2 {
		t.Errorf("-url, which compare sets itself: exit %d, %s", code, out)
	}
}

// The command BENCHMARKS.md prints for a side-by-side scenario must run as
// printed: a server that cannot take {addr} and {redis} (the PHP original
// listens on 9502 and looks for Redis on 6379) needs its -a-addr and
// -a-redis, or the copied command fails with "did not come up".
func TestThePrintedCompareCommandKeepsEveryFlag(t *testing.T) {
	php := serverSpec{name: "PHP original", cmd: "php swoole.php", addr: "0.0.0.0:9502", redisAddr: "127.0.0.1:6379"}
	rp := serverSpec{name: "redpush", cmd: "./redpush -addr {addr} -redis {redis}"}
	c := &comparison{Commands: map[string]string{"a": php.cmd, "b": rp.cmd},
		Flags:  map[string]string{"a": sideFlags("a", php), "b": sideFlags("b", rp)},
		Median: map[string]*summary{"a": {}, "b": {}}}
	var md strings.Builder
	writeComparison(&md, scenario{name: "b) 1,000 users", args: []string{"-users", "1000"}}, c)
	want := "redpush-bench compare -a 'php swoole.php' -a-addr 0.0.0.0:9502 -a-redis 127.0.0.1:6379 -a-name 'PHP original'" +
		" -b './redpush -addr {addr} -redis {redis}' -b-name 'redpush' -runs 0 -users 1000"
	if !strings.Contains(md.String(), want) {
		t.Fatalf("printed:\n%s\nwant the line\n%s", md.String(), want)
	}
}
