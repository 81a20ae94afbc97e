package main

import (
	"fmt"
	"slices"
	"strings"
)

// check is one figure that fails a run when it is not zero.
type check struct {
	name string // the JSON field, and the -allow word
	get  func(*result) int64
}

// A run fails when any of these is not zero, unless -allow names it.
var checks = []check{
	{"lost", func(r *result) int64 { return r.Lost }},
	{"duplicated", func(r *result) int64 { return r.Duplicated }},
	{"misdelivered", func(r *result) int64 { return r.Misdelivered }},
	{"out_of_order", func(r *result) int64 { return r.OutOfOrder }},
	{"partial", func(r *result) int64 { return r.Partial }},
	{"connect_failed", func(r *result) int64 { return r.ConnectFailed }},
	{"producer_errors", func(r *result) int64 { return r.ProducerErrors }},
	{"still_in_redis", func(r *result) int64 { return r.StillInRedis }},
	{"unparsed_frames", func(r *result) int64 { return r.Garbage }},
	{"latency_out_of_range", func(r *result) int64 { return r.LatencyOutOfRange }},
}

// allowLossAlias is what the old -allow-loss flag tolerated.
var allowLossAlias = []string{"lost", "duplicated", "misdelivered"}

// parseAllow reads -allow: a comma-separated list of check names, or "all".
func parseAllow(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	if s == "all" {
		var all []string
		for _, c := range checks {
			all = append(all, c.name)
		}
		return all, nil
	}
	var out []string
	for _, w := range strings.Split(s, ",") {
		w = strings.TrimSpace(w)
		if !slices.ContainsFunc(checks, func(c check) bool { return c.name == w }) {
			return nil, fmt.Errorf("-allow %q: want a comma-separated list of %s, or all", w, checkNames())
		}
		out = append(out, w)
	}
	return out, nil
}

func checkNames() string {
	var n []string
	for _, c := range checks {
		n = append(n, c.name)
	}
	return strings.Join(n, ", ")
}

// judge sets r.Verdict: "pass", or "fail: " and every check that failed.
func judge(allowed []string, r *result) {
	r.Allowed = allowed
	var bad []string
	for _, c := range checks {
		if v := c.get(r); v != 0 && !slices.Contains(allowed, c.name) {
			bad = append(bad, fmt.Sprintf("%d %s", v, strings.ReplaceAll(c.name, "_", " ")))
		}
	}
	if r.Sent == 0 && r.Unsent == 0 && !r.Idle {
		bad = append(bad, "nothing sent")
	}
	if len(bad) == 0 {
		r.Verdict = "pass"
		return
	}
	r.Verdict = "fail: " + strings.Join(bad, ", ")
}

func (r *result) passed() bool { return r.Verdict == "pass" }
