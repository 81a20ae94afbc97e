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

	"github.com/HdrHistogram/hdrhistogram-go"
)

// -spawn: one process may open 20,000 files here, so a run of more than
// ~19,000 connections is split over child processes, each with its own
// range of users. Children connect, report READY, and start sending when
// every child is connected (GO on stdin), so that load begins at once.

const readyLine, goLine = "READY", "GO"

// awaitGo is the child's side of the barrier.
func awaitGo() {
	fmt.Println(readyLine)
	line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	if line != goLine+"\n" {
		logf("redpush-bench: child: no GO from the parent (%q)", line)
		os.Exit(2)
	}
}

type childProc struct {
	cmd   *exec.Cmd
	out   string // its -json file
	stdin io.WriteCloser
	ready chan error
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
	mon := newMonitor(cfg, nil, nil, nil) // samples the server; children print progress
	mon.start(ctx)
	var kids []*childProc
	per := (cfg.users + cfg.spawn - 1) / cfg.spawn
	for i, first := 0, cfg.firstUser; first < cfg.firstUser+cfg.users; i, first = i+1, first+per {
		n := min(per, cfg.firstUser+cfg.users-first)
		k, err := startChild(ctx, self, cfg, filepath.Join(dir, fmt.Sprint(i, ".json")), first, n)
		if err != nil {
			return nil, err
		}
		kids = append(kids, k)
	}
	for _, k := range kids {
		if err := <-k.ready; err != nil {
			return nil, err
		}
	}
	mon.markIdle()
	for _, k := range kids {
		fmt.Fprintln(k.stdin, goLine)
	}
	for _, k := range kids {
		if err := k.cmd.Wait(); err != nil {
			return nil, fmt.Errorf("child: %v", err)
		}
	}
	mon.stop()
	var parts []*result
	for _, k := range kids {
		b, err := os.ReadFile(k.out)
		if err != nil {
			return nil, err
		}
		var r result
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, err
		}
		parts = append(parts, &r)
	}
	return merge(cfg, parts, mon), nil
}

func startChild(ctx context.Context, self string, cfg *config, out string, first, users int) (*childProc, error) {
	// Rates are totals: each child takes its share.
	args := append(childArgs(os.Args[1:]), "-child", "-json", out,
		"-first-user", strconv.Itoa(first), "-users", strconv.Itoa(users),
		"-rate", strconv.Itoa(cfg.rate/cfg.spawn), "-connect-rate", strconv.Itoa(cfg.connectRate/cfg.spawn))
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
	k := &childProc{cmd: cmd, out: out, stdin: stdin, ready: make(chan error, 1)}
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != readyLine+"\n" {
			err = fmt.Errorf("child said %q", line)
		}
		k.ready <- err
		_, _ = io.Copy(io.Discard, stdout)
	}()
	return k, nil
}

// childArgs drops the flags the parent sets for each child.
func childArgs(args []string) []string {
	drop := map[string]bool{"spawn": true, "json": true, "report": true, "server-pid": true,
		"users": true, "first-user": true, "rate": true, "connect-rate": true}
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, _, hasValue := cut(a, '=')
		if drop[trimDashes(name)] {
			if !hasValue {
				i++ // the value is the next argument
			}
			continue
		}
		out = append(out, a)
	}
	return out
}

func trimDashes(s string) string {
	for len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	return s
}

func cut(s string, c byte) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// merge adds the children's counts, merges their latency histograms, and
// takes the server figures from the parent's own sampling.
func merge(cfg *config, parts []*result, mon *monitor) *result {
	r := &result{Schema: 1, URL: cfg.url, Users: cfg.users, ConnsPerUser: cfg.connsPerUser,
		Payload: cfg.payload, Rate: cfg.rate, Backlog: cfg.backlog}
	h := newHist()
	bySecond := map[int]*timePoint{}
	for _, p := range parts {
		r.Connected += p.Connected
		r.ConnectFailed += p.ConnectFailed
		r.ConnectSeconds = max(r.ConnectSeconds, p.ConnectSeconds)
		r.Sent += p.Sent
		r.ProducerErrors += p.ProducerErrors
		r.Delivered += p.Delivered
		r.Lost += p.Lost
		r.StillInRedis += p.StillInRedis
		r.Duplicated += p.Duplicated
		r.OutOfOrder += p.OutOfOrder
		r.Misdelivered += p.Misdelivered
		r.Garbage += p.Garbage
		r.SendSeconds = max(r.SendSeconds, p.SendSeconds)
		r.DeliverSeconds = max(r.DeliverSeconds, p.DeliverSeconds)
		if ph, err := hdrhistogram.Decode([]byte(p.Histogram)); err == nil {
			h.Merge(ph)
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
	r.Latency = latencyOf(h)
	if enc, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase); err == nil {
		r.Histogram = string(enc)
	}
	r.Server = mon.serverStats(r.Connected, r.Delivered)
	return r
}
