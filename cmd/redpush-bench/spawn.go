package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/redpush/redpush/redisq"
)

// -spawn: one process may open 20,000 files here, so a run of more than
// ~19,000 connections is split over child processes, each with its own
// range of users. The children move through the phases of a run together:
// each reports a phase on stdout and, except after the last, waits for GO
// on stdin; the parent samples the server between phases, so that its CPU
// and memory figures cover the same interval as the children's messages.
const (
	phaseLoaded    = "LOADED"    // -backlog queued; about to connect
	phaseConnected = "CONNECTED" // connected: about to hold
	phaseReady     = "READY"     // connected and held: about to send
	phaseDone      = "DONE"      // every message arrived, or the grace ran out
	goLine         = "GO"
)

var childIn = bufio.NewReader(os.Stdin)

// childPhase is the child's side of the barrier.
func childPhase(cfg *config, phase string) {
	if !cfg.child {
		return
	}
	fmt.Println(phase)
	if phase == phaseDone {
		return
	}
	line, _ := childIn.ReadString('\n')
	if line != goLine+"\n" {
		logf("redpush-bench: child: no GO from the parent (%q)", line)
		os.Exit(2)
	}
}

type childProc struct {
	cmd   *exec.Cmd
	out   string // its -json file
	stdin io.WriteCloser
	lines chan string // what it says on stdout
}

// await waits until every child reported phase.
func await(kids []*childProc, phase string) error {
	for _, k := range kids {
		line, ok := <-k.lines
		if !ok {
			return fmt.Errorf("child %d exited before %s", k.cmd.Process.Pid, phase)
		}
		if line != phase {
			return fmt.Errorf("child said %q, want %s", line, phase)
		}
	}
	return nil
}

func release(kids []*childProc) {
	for _, k := range kids {
		fmt.Fprintln(k.stdin, goLine)
	}
}

func runSpawned(ctx context.Context, cfg *config) (*result, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "redpush-bench")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ep, err := redisq.ParseEndpoint(cfg.redis)
	if err != nil {
		return nil, fmt.Errorf("-redis: %v", err)
	}
	rc := ep.NewClient(2)
	defer rc.Close()
	if err := checkUnused(ctx, cfg, rc, cfg.wipe); err != nil {
		return nil, err
	}
	var kids []*childProc
	defer func() {
		for _, k := range kids {
			_ = k.cmd.Process.Kill()
			_ = k.cmd.Wait()
		}
	}()
	per := (cfg.users + cfg.spawn - 1) / cfg.spawn
	nKids := (cfg.users + per - 1) / per
	for i, first := 0, cfg.firstUser; first < cfg.firstUser+cfg.users; i, first = i+1, first+per {
		n := min(per, cfg.firstUser+cfg.users-first)
		k, err := startChild(ctx, self, cfg, filepath.Join(dir, fmt.Sprint(i, ".json")), first, n, share(cfg.rate, nKids, i), share(cfg.connectRate, nKids, i))
		if err != nil {
			return nil, err
		}
		kids = append(kids, k)
	}
	if err := await(kids, phaseLoaded); err != nil {
		return nil, err
	}
	mon := newMonitor(ctx, cfg, nil, nil, nil, rc) // a drain's CPU counts from the first connect
	mon.start(ctx)
	defer mon.stop()
	release(kids)
	if err := await(kids, phaseConnected); err != nil {
		return nil, err
	}
	release(kids)
	if cfg.hold > 0 { // the children hold now: the idle window, as run's
		sleepCtx(ctx, cfg.hold/3)
		mon.markIdleFrom()
	}
	if err := await(kids, phaseReady); err != nil {
		return nil, err
	}
	mon.markIdle()
	if cfg.backlog == 0 {
		mon.markFrom()
	}
	release(kids)
	if err := await(kids, phaseDone); err != nil {
		return nil, err
	}
	mon.markTo()
	var parts []*result
	for _, k := range kids {
		if err := k.cmd.Wait(); err != nil {
			return nil, fmt.Errorf("child: %v", err)
		}
		r, err := readResult(k.out)
		if err != nil {
			return nil, err
		}
		parts = append(parts, r)
	}
	kids = nil
	return merge(cfg, parts, mon), nil
}

func readResult(path string) (*result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &r, nil
}

// share is child i's part of a total rate over kids children: the
// remainder goes to the first ones, so the parts add up to the total.
func share(total, kids, i int) int {
	n := total / kids
	if i < total%kids {
		n++
	}
	return n
}

func startChild(ctx context.Context, self string, cfg *config, out string, first, users, rate, connectRate int) (*childProc, error) {
	// Rates are totals: each child takes its share.
	args := append(childArgs(os.Args[1:]), "-child", "-json", out,
		"-first-user", strconv.Itoa(first), "-users", strconv.Itoa(users),
		"-rate", strconv.Itoa(rate), "-connect-rate", strconv.Itoa(connectRate))
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	k := &childProc{cmd: cmd, out: out, stdin: stdin, lines: make(chan string, 4)}
	go func() {
		defer close(k.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			k.lines <- sc.Text()
		}
	}()
	return k, nil
}

// childArgs drops the flags the parent sets for each child, and those only
// the parent acts on (the parent checks or wipes the queues of all users).
func childArgs(args []string) []string {
	drop := map[string]bool{"spawn": true, "json": true, "report": true, "hgrm": true, "server-pid": true,
		"redis-pid": true, "users": true, "first-user": true, "rate": true, "connect-rate": true, "wipe": true}
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, _, hasValue := strings.Cut(a, "=")
		if drop[trimDashes(name)] {
			if !hasValue && !isBoolFlag(trimDashes(name)) {
				i++ // the value is the next argument
			}
			continue
		}
		out = append(out, a)
	}
	return out
}

func isBoolFlag(name string) bool { return name == "wipe" }

func trimDashes(s string) string {
	for len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	return s
}

// merge adds the children's counts, merges their latency histograms, and
// takes the server and Redis figures from the parent's own sampling.
func merge(cfg *config, parts []*result, mon *monitor) *result {
	r := &result{Schema: schema, URL: cfg.url, Users: cfg.users, ConnsPerUser: cfg.connsPerUser,
		Payload: cfg.payload, Rate: cfg.rate, Backlog: cfg.backlog}
	h, raw, ack := newHist(), newHist(), newHist()
	var redelivered int64
	bySecond := map[int]*timePoint{}
	for _, p := range parts {
		addCounts(r, p)
		if p.Ack != nil {
			redelivered += p.Ack.Redelivered
			if ph, err := decodeHist(p.Ack.Histogram); err == nil {
				ack.Merge(ph)
			}
		}
		if ph, err := decodeHist(p.Histogram); err == nil {
			h.Merge(ph)
		}
		if ph, err := decodeHist(p.HistogramUncorrected); err == nil {
			raw.Merge(ph)
		}
		// Per second, the worst child's percentiles: conservative.
		for _, tp := range p.Timeline {
			k := int(tp.At)
			if m, ok := bySecond[k]; ok {
				m.P50, m.P99, m.Max = max(m.P50, tp.P50), max(m.P99, tp.P99), max(m.Max, tp.Max)
				m.N += tp.N
			} else {
				c := tp
				bySecond[k] = &c
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(bySecond)) {
		r.Timeline = append(r.Timeline, *bySecond[k])
	}
	if r.DeliverSeconds > 0 {
		r.DeliveredPerSec = float64(r.Delivered) / r.DeliverSeconds
	}
	if cfg.rate == 0 {
		raw = nil
	}
	r.setLatency(h, raw)
	if cfg.ack {
		r.setAck(redelivered, ack)
	}
	r.setCPU(mon)
	return r
}

func addCounts(r, p *result) {
	r.Connected += p.Connected
	r.ConnectFailed += p.ConnectFailed
	r.ConnectSeconds = max(r.ConnectSeconds, p.ConnectSeconds)
	r.Sent += p.Sent
	r.Unsent += p.Unsent
	r.ProducerErrors += p.ProducerErrors
	r.ProducerMaxLag = max(r.ProducerMaxLag, p.ProducerMaxLag)
	r.Delivered += p.Delivered
	r.Lost += p.Lost
	r.Partial += p.Partial
	r.StillInRedis += p.StillInRedis
	r.StillInQueue += p.StillInQueue
	r.StillProcessing += p.StillProcessing
	r.Duplicated += p.Duplicated
	r.OutOfOrder += p.OutOfOrder
	r.Misdelivered += p.Misdelivered
	r.Garbage += p.Garbage
	r.Idle = r.Idle || p.Idle
	r.LatencyOutOfRange += p.LatencyOutOfRange
	r.SendSeconds = max(r.SendSeconds, p.SendSeconds)
	r.DeliverSeconds = max(r.DeliverSeconds, p.DeliverSeconds)
}
