package main

import (
	"context"
	"fmt"
	"io"
	"math/bits"
	"strconv"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/redis/go-redis/v9"
)

// result is the bench's output; its JSON form is a stable schema (see the
// README): fields are added, never renamed or removed.
type result struct {
	Schema          int         `json:"schema"`
	URL             string      `json:"url"`
	Users           int         `json:"users"`
	ConnsPerUser    int         `json:"conns_per_user"`
	Payload         int         `json:"payload_bytes"`
	Rate            int         `json:"rate"`
	Connected       int64       `json:"connected"`
	ConnectFailed   int64       `json:"connect_failed"`
	ConnectSeconds  float64     `json:"connect_seconds"`
	Sent            int64       `json:"sent"`
	ProducerErrors  int64       `json:"producer_errors"`
	Delivered       int64       `json:"delivered"`
	Lost            int64       `json:"lost"`
	StillInRedis    int64       `json:"still_in_redis"`
	Duplicated      int64       `json:"duplicated"`
	OutOfOrder      int64       `json:"out_of_order"`
	Misdelivered    int64       `json:"misdelivered"`
	Garbage         int64       `json:"unparsed_frames"`
	SendSeconds     float64     `json:"send_seconds"`
	DeliverSeconds  float64     `json:"deliver_seconds"`
	DeliveredPerSec float64     `json:"delivered_per_sec"`
	Latency         latency     `json:"latency_ms"`
	Server          serverStat  `json:"server"`
	Timeline        []timePoint `json:"timeline"`
	// Histogram is the latency histogram in microseconds, HdrHistogram V2
	// compressed and base64-encoded: -spawn merges children with it.
	Histogram string `json:"histogram"`
	// Backlog is -backlog: messages queued per user before connecting.
	Backlog int `json:"backlog_per_user,omitempty"`
}

type latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type serverStat struct {
	PID             int     `json:"pid"`
	RSSStart        int64   `json:"rss_start_bytes"`
	RSSIdle         int64   `json:"rss_idle_bytes"`
	RSSPeak         int64   `json:"rss_peak_bytes"`
	RSSEnd          int64   `json:"rss_end_bytes"`
	RSSPerConn      int64   `json:"rss_per_conn_bytes"`
	CPUSeconds      float64 `json:"cpu_seconds"`
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg"`
}

func buildResult(ctx context.Context, cfg *config, tr *tracker, cs *clients, pr *producers, mon *monitor,
	rc redis.UniversalClient, start, sendDone time.Time, connectTime time.Duration) *result {
	h := tr.merged()
	r := &result{
		Schema: 1, URL: cfg.url, Users: cfg.users, ConnsPerUser: cfg.connsPerUser, Payload: cfg.payload, Rate: cfg.rate,
		Connected: cs.connected.Load(), ConnectFailed: cs.failed.Load(), ConnectSeconds: connectTime.Seconds(),
		Sent: pr.all.Load(), ProducerErrors: pr.errs.Load(), Delivered: tr.received.Load(),
		Duplicated: tr.dups.Load(), OutOfOrder: tr.ooo.Load(), Misdelivered: tr.wrong.Load(), Garbage: tr.garbage.Load(),
		SendSeconds: sendDone.Sub(start).Seconds(),
		Latency:     latencyOf(h),
		Timeline:    tr.timeline, Backlog: cfg.backlog,
	}
	if enc, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase); err == nil {
		r.Histogram = string(enc)
	}
	if last := tr.lastRecv.Load(); last > 0 && r.Delivered > 0 {
		r.DeliverSeconds = time.Unix(0, last).Sub(start).Seconds()
		r.DeliveredPerSec = float64(r.Delivered) / r.DeliverSeconds
	}
	r.Lost, r.StillInRedis = countLost(ctx, cfg, cs, pr, rc)
	r.Server = mon.serverStats(r.Connected, r.Delivered)
	return r
}

func latencyOf(h *hdrhistogram.Histogram) latency {
	return latency{P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max()), Mean: h.Mean() / 1000}
}

// countLost counts, per connection, messages sent to its user that it never
// received and that are no longer in Redis (queue or processing lists).
func countLost(ctx context.Context, cfg *config, cs *clients, pr *producers, rc redis.UniversalClient) (lost, inRedis int64) {
	left := map[string]int64{} // user → messages still in Redis
	for u := range cfg.users {
		user := userName(cfg.firstUser + u)
		key := keyOf(cfg, cfg.firstUser+u)
		n, _ := rc.LLen(ctx, key).Result()
		left[user] += n
		iter := rc.Scan(ctx, 0, "{"+key+"}:processing:*", 100).Iterator()
		for iter.Next(ctx) {
			m, _ := rc.LLen(ctx, iter.Val()).Result()
			left[user] += m
		}
	}
	for _, n := range left {
		inRedis += n
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, st := range cs.states {
		u, _ := strconv.Atoi(st.user)
		sent := pr.sentTo(u - cfg.firstUser)
		got := int64(0)
		for _, w := range st.seen {
			got += int64(bits.OnesCount64(w))
		}
		if miss := sent - got - left[st.user]; miss > 0 {
			lost += miss
		}
	}
	return lost, inRedis
}

func (p *producers) sentTo(u int) int64 {
	if u < 0 || u >= len(p.sent) {
		return 0
	}
	return p.sent[u]
}

func (r *result) printTable(w io.Writer) {
	row := func(k string, v any) { fmt.Fprintf(w, "%-22s %v\n", k, v) }
	fmt.Fprintln(w, strings.Repeat("-", 44))
	row("connected", fmt.Sprintf("%d (failed %d, %.1fs)", r.Connected, r.ConnectFailed, r.ConnectSeconds))
	row("sent", r.Sent)
	row("delivered", r.Delivered)
	row("lost", r.Lost)
	row("still in redis", r.StillInRedis)
	row("duplicated", r.Duplicated)
	row("out of order", r.OutOfOrder)
	row("misdelivered", r.Misdelivered)
	row("delivered/s", fmt.Sprintf("%.0f", r.DeliveredPerSec))
	l := r.Latency
	row("latency ms", fmt.Sprintf("p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f", l.P50, l.P90, l.P99, l.P999, l.Max))
	if s := r.Server; s.PID != 0 {
		row("server rss", fmt.Sprintf("start %s  idle %s  peak %s  per conn %s",
			mib(s.RSSStart), mib(s.RSSIdle), mib(s.RSSPeak), kib(s.RSSPerConn)))
		row("server cpu", fmt.Sprintf("%.2fs (%.1f µs/msg)", s.CPUSeconds, s.CPUMicrosPerMsg))
	}
	fmt.Fprintln(w, strings.Repeat("-", 44))
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
func kib(b int64) string { return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10)) }
