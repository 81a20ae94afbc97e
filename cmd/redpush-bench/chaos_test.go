package main

import (
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The 60-second chaos run of make test: 3 redpush instances on one Redis,
// 300 users (a tenth on two instances), 200 msg/s, and the schedule
// compressed so that every fault happens at least once. Nothing may be
// lost or misdelivered, and every list must be empty at the end; the
// users in acknowledged delivery (a fifth) must process every message
// exactly once, after dropping redeliveries by id.
func TestChaosLosesNothing(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "redpush")
	if out, err := exec.Command("go", "build", "-o", bin, "../redpush").CombinedOutput(); err != nil {
		t.Fatalf("build redpush: %v\n%s", err, out)
	}
	c, err := parseChaos([]string{"-server", bin, "-users", "300", "-rate", "200", "-duration", "60s", "-grace", "40s",
		"-slow", "20", "-stoppers", "5", "-stop-for", "15s", "-redis-every", "20s", "-kill-every", "15s",
		"-term-every", "30s", "-drop-every", "5s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r, err := runChaos(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	r.printTable(&b)
	t.Log("\n" + b.String())
	for _, kind := range []string{"redis_restart", "instance_kill", "instance_term", "connection_drops"} {
		if r.Faults[kind] == 0 {
			t.Errorf("no %s happened", kind)
		}
	}
	if r.Verdict != "pass" || r.Lost != 0 || r.Misdelivered != 0 || r.StillInFlight != 0 || r.StillQueued != 0 {
		t.Fatalf("verdict %s (first lost: %v)", r.Verdict, r.LostIDs)
	}
	if r.AckUsers == 0 || r.AckDuplicated != 0 {
		t.Fatalf("acknowledged delivery: %d users, %d processed twice", r.AckUsers, r.AckDuplicated)
	}
	if r.Sent < 5000 || r.Reconnects < 100 || len(r.Resources) < 50 {
		t.Fatalf("the run did too little to prove anything: sent %d, reconnects %d, %d resource samples", r.Sent, r.Reconnects, len(r.Resources))
	}
}

func TestChaosVerdict(t *testing.T) {
	for _, tc := range []struct {
		r    chaosResult
		want string
	}{
		{chaosResult{}, "pass"},
		{chaosResult{Lost: 2}, "fail: 2 lost"},
		{chaosResult{Misdelivered: 1, StillInFlight: 3}, "fail: 1 misdelivered, 3 still in a processing list"},
		{chaosResult{Duplicated: 5, Reordered: 2, Partial: 9}, "pass"},                      // reported, allowed around crashes
		{chaosResult{AckDuplicated: 1}, "fail: 1 processed twice in acknowledged delivery"}, // an id'd message processed twice
		{chaosResult{AckRedelivered: 40}, "pass"},                                           // redeliveries dropped by id, as a client does
		{chaosResult{Growth: []string{"instance 0 RSS grew 10 → 20"}}, "fail: instance 0 RSS grew 10 → 20"},
	} {
		tc.r.judge(&chaosCfg{stoppers: 50, duration: time.Minute})
		if tc.r.Verdict != tc.want {
			t.Errorf("%+v: verdict %q, want %q", tc.r, tc.r.Verdict, tc.want)
		}
	}
	// A long run whose stoppers were never closed did not test push-back.
	for _, tc := range []struct {
		r    chaosResult
		want string
	}{
		{chaosResult{}, "fail: no stopped reader was closed by the server"},
		{chaosResult{StoppersClosed: 3}, "pass"},
	} {
		tc.r.judge(&chaosCfg{stoppers: 50, duration: 10 * time.Minute})
		if tc.r.Verdict != tc.want {
			t.Errorf("%+v: verdict %q, want %q", tc.r, tc.r.Verdict, tc.want)
		}
	}
}

// Resources are judged in runs of five minutes or more: growth past 10%
// after the first minute fails, unless the connections grew too.
func TestResourceGrowth(t *testing.T) {
	series := func(rss func(t float64) float64, conns func(t float64) int) []resourcePoint {
		var pts []resourcePoint
		for s := 0; s < 600; s++ {
			at := float64(s)
			pts = append(pts, resourcePoint{At: at, Connected: conns(at), Instances: []instanceStat{{RSS: rss(at), Goroutines: 100, OpenFiles: 50}}})
		}
		return pts
	}
	flat := func(float64) int { return 1000 }
	if g := resourceGrowth(series(func(float64) float64 { return 100 }, flat), 10*time.Minute, nil); g != nil {
		t.Errorf("flat resources: %v", g)
	}
	leak := series(func(at float64) float64 { return 100 + at/4 }, flat)
	if g := resourceGrowth(leak, 10*time.Minute, nil); len(g) != 1 || !strings.Contains(g[0], "RSS") {
		t.Errorf("a leak: %v", g)
	}
	if g := resourceGrowth(series(func(at float64) float64 { return 100 + at/4 }, func(at float64) int { return 1000 + int(at) }), 10*time.Minute, nil); g != nil {
		t.Errorf("growth with the connections: %v", g)
	}
	if g := resourceGrowth(leak, time.Minute, nil); g != nil {
		t.Errorf("a one-minute run is not judged on growth: %v", g)
	}
	if g := resourceGrowth(leak, 10*time.Minute, map[int]bool{0: true}); g != nil {
		t.Errorf("a restarted instance is not judged on growth: %v", g)
	}
}

// A lost message's report line says when it was pushed and which of its
// user's connections the run dropped around then: the facts that tell a
// server's loss from one the run staged with a reset.
func TestALossIsReportedWithTheDropsAroundIt(t *testing.T) {
	pr := &producers{cfg: &config{users: 2, rate: 4}} // 2 msg/s per user
	if got := pr.pushedAbout(1, 20); got != 10*time.Second {
		t.Fatalf("seq 20 at 2 msg/s pushed about %v, want 10s", got)
	}
	s := &seat{user: "2", kind: seatNormal, drops: []drop{{at: 3 * time.Second}, {at: 11 * time.Second, reset: true}, {at: 40 * time.Second}}}
	r := &chaosRun{byUser: map[string][]*seat{"2": {s}}}
	got := r.lostByUser(map[string][3]int64{"2": {1, 20, 20}}, pr)
	want := "user 2: 1 lost between 20 and 20, pushed about 10–10 s; normal reader on instance 0, 0 connections, reset at 11.0 s"
	if len(got) != 1 || got[0] != want {
		t.Fatalf("report = %q\nwant     %q", got, want)
	}
}
