package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// schema is the version of the JSON output: 2 since latency_ms is the
// corrected figure in -rate mode and lost is matched per message.
const schema = 2

// result is the bench's output; its JSON form is a stable schema (see the
// README): fields are added, and a change of meaning raises schema.
type result struct {
	Schema         int     `json:"schema"`
	URL            string  `json:"url"`
	Users          int     `json:"users"`
	ConnsPerUser   int     `json:"conns_per_user"`
	Payload        int     `json:"payload_bytes"`
	Rate           int     `json:"rate"`
	Connected      int64   `json:"connected"`
	ConnectFailed  int64   `json:"connect_failed"`
	ConnectSeconds float64 `json:"connect_seconds"`
	// IdleSeconds is the idle window: every user connected, nothing sent,
	// the last two thirds of -hold (Server and Redis give their CPU per
	// second in it); 0 without -hold.
	IdleSeconds float64 `json:"idle_seconds,omitempty"`
	// Sent counts LPUSHes that reached Redis; Unsent those that failed and
	// left no trace (no connection got them, Redis does not hold them).
	Sent           int64   `json:"sent"`
	Unsent         int64   `json:"unsent"`
	ProducerErrors int64   `json:"producer_errors"`
	ProducerMaxLag float64 `json:"producer_max_lag_ms"`
	// Delivered counts first receipts: each message once per connection.
	Delivered         int64   `json:"delivered"`
	Lost              int64   `json:"lost"`
	Partial           int64   `json:"partial"`
	StillInRedis      int64   `json:"still_in_redis"`
	StillInQueue      int64   `json:"still_in_queue"`
	StillProcessing   int64   `json:"still_processing"`
	Duplicated        int64   `json:"duplicated"`
	OutOfOrder        int64   `json:"out_of_order"`
	Misdelivered      int64   `json:"misdelivered"`
	Garbage           int64   `json:"unparsed_frames"`
	LatencyOutOfRange int64   `json:"latency_out_of_range"`
	SendSeconds       float64 `json:"send_seconds"`
	DeliverSeconds    float64 `json:"deliver_seconds"`
	DeliveredPerSec   float64 `json:"delivered_per_sec"`
	// Latency runs from the scheduled push in -rate mode (corrected for
	// coordinated omission), from the LPUSH otherwise; LatencyUncorrected
	// (rate mode only) runs from the actual LPUSH.
	Latency            latency     `json:"latency_ms"`
	LatencyUncorrected *latency    `json:"latency_uncorrected_ms,omitempty"`
	Server             serverStat  `json:"server"`
	Redis              *redisStat  `json:"redis"`                // null: Redis's processes are unknown
	CPUMicrosPerMsgAll *float64    `json:"cpu_us_per_msg_total"` // server + Redis; null when Redis is unknown
	RedisClients       clientStat  `json:"redis_clients"`
	Timeline           []timePoint `json:"timeline"`
	// Histogram is the latency histogram in microseconds, HdrHistogram V2
	// compressed and base64-encoded: -spawn merges children with it.
	Histogram            string `json:"histogram"`
	HistogramUncorrected string `json:"histogram_uncorrected,omitempty"`
	// Ack is -ack's figures: redeliveries and the time from the push to
	// the client's acknowledgement; absent without -ack.
	Ack *ackStat `json:"ack,omitempty"`
	// Backlog is -backlog: messages queued per user before connecting.
	Backlog int `json:"backlog_per_user,omitempty"`
	// Idle says the run only held its connections (-hold, nothing to send).
	Idle bool `json:"idle,omitempty"`
	// Verdict is "pass", or "fail: " and what failed the run.
	Verdict string   `json:"verdict"`
	Allowed []string `json:"allowed,omitempty"`
}

// ackStat is what acknowledged delivery adds to a run.
type ackStat struct {
	// Redelivered counts frames marked "redelivered" (popped before).
	Redelivered int64 `json:"redelivered"`
	// PushToAck runs from the scheduled push (the LPUSH outside -rate
	// mode) to the write of the client's acknowledgement, for every
	// frame received, duplicates included.
	PushToAck latency `json:"push_to_ack_ms"`
	Histogram string  `json:"histogram"`
}

func (r *result) setAck(redelivered int64, h *hdrhistogram.Histogram) {
	r.Ack = &ackStat{Redelivered: redelivered, PushToAck: latencyOf(h)}
	if enc, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase); err == nil {
		r.Ack.Histogram = string(enc)
	}
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
	PID       int   `json:"pid"`
	Processes int   `json:"processes"` // the pid and its descendants, all sampled
	RSSStart  int64 `json:"rss_start_bytes"`
	RSSIdle   int64 `json:"rss_idle_bytes"`
	RSSPeak   int64 `json:"rss_peak_bytes"`
	RSSEnd    int64 `json:"rss_end_bytes"`
	// RSSIdleTop is the largest single process's RSS at RSSIdle: with
	// several server processes, what one of them holds.
	RSSIdleTop      int64   `json:"rss_idle_top_process_bytes,omitempty"`
	RSSPerConn      int64   `json:"rss_per_conn_bytes"`
	CPUSeconds      float64 `json:"cpu_seconds"`
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg"`
	// IdleCPUMillisPerSec is the CPU the server spent per second of the
	// idle window (result.IdleSeconds).
	IdleCPUMillisPerSec float64 `json:"idle_cpu_ms_per_s,omitempty"`
}

type redisStat struct {
	PIDs            []int   `json:"pids"`
	CPUSeconds      float64 `json:"cpu_seconds"`
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg"`
	// IdleCPUMillisPerSec is Redis's CPU per second of the idle window.
	IdleCPUMillisPerSec float64 `json:"idle_cpu_ms_per_s,omitempty"`
}

// clientStat is Redis's INFO clients during the run (summed over a
// Cluster's masters), sampled once a second.
type clientStat struct {
	ConnectedMax int64 `json:"connected_max"`
	BlockedMax   int64 `json:"blocked_max"`
	Samples      int   `json:"samples"`
}

// setLatency fills the latency figures from the histograms; raw is nil
// outside -rate mode.
func (r *result) setLatency(h, raw *hdrhistogram.Histogram) {
	r.Latency = latencyOf(h)
	if enc, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase); err == nil {
		r.Histogram = string(enc)
	}
	if raw == nil {
		return
	}
	l := latencyOf(raw)
	r.LatencyUncorrected = &l
	if enc, err := raw.Encode(hdrhistogram.V2CompressedEncodingCookieBase); err == nil {
		r.HistogramUncorrected = string(enc)
	}
}

// setCPU fills the per-message CPU figures.
func (r *result) setCPU(mon *monitor) {
	r.Server = mon.serverStats(r.Connected, r.Delivered)
	_, r.IdleSeconds = mon.idleCPU()
	r.Redis = mon.redisStats(r.Delivered)
	if r.Redis != nil && r.Server.PID != 0 && r.Delivered > 0 {
		v := r.Server.CPUMicrosPerMsg + r.Redis.CPUMicrosPerMsg
		r.CPUMicrosPerMsgAll = &v
	}
	if r.RedisClients.Samples == 0 {
		r.RedisClients = mon.clientStats()
	}
}

func (r *result) setRate(start time.Time, lastRecv int64) {
	if lastRecv > 0 && r.Delivered > 0 {
		r.DeliverSeconds = time.Unix(0, lastRecv).Sub(start).Seconds()
		r.DeliveredPerSec = float64(r.Delivered) / r.DeliverSeconds
	}
}

func latencyOf(h *hdrhistogram.Histogram) latency {
	return latency{P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max()), Mean: h.Mean() / 1000}
}

func (r *result) printTable(w io.Writer) {
	row := func(k string, v any) { fmt.Fprintf(w, "%-22s %v\n", k, v) }
	fmt.Fprintln(w, strings.Repeat("-", 44))
	row("connected", fmt.Sprintf("%d (failed %d, %.1fs)", r.Connected, r.ConnectFailed, r.ConnectSeconds))
	row("sent", fmt.Sprintf("%d (unsent %d, producer errors %d)", r.Sent, r.Unsent, r.ProducerErrors))
	row("delivered", r.Delivered)
	row("lost", r.Lost)
	row("still in redis", fmt.Sprintf("%d (queued %d, processing %d)", r.StillInRedis, r.StillInQueue, r.StillProcessing))
	row("duplicated", r.Duplicated)
	row("out of order", r.OutOfOrder)
	row("misdelivered", r.Misdelivered)
	if r.ConnsPerUser > 1 {
		row("partial", fmt.Sprintf("%d (messages a connection missed that another of its user got)", r.Partial))
	}
	row("unparsed frames", r.Garbage)
	row("delivered/s", fmt.Sprintf("%.0f", r.DeliveredPerSec))
	row("latency ms", fmtLatency(r.Latency))
	if u := r.LatencyUncorrected; u != nil {
		row("  uncorrected", fmtLatency(*u))
		row("producer max lag", fmt.Sprintf("%.1f ms behind schedule", r.ProducerMaxLag))
	}
	if a := r.Ack; a != nil {
		row("ack: push to ack ms", fmtLatency(a.PushToAck))
		row("ack: redelivered", a.Redelivered)
	}
	if r.LatencyOutOfRange > 0 {
		row("latency out of range", fmt.Sprintf("%d (below 0 or above %v: not in the figures above)", r.LatencyOutOfRange, maxLatency))
	}
	if s := r.Server; s.PID != 0 {
		row("server rss", fmt.Sprintf("start %s  idle %s  peak %s  per conn %s%s (%s)",
			mib(s.RSSStart), mib(s.RSSIdle), mib(s.RSSPeak), kib(s.RSSPerConn), rssNote(r.Connected), plural(s.Processes, "process", "processes")))
		if s.Processes > 1 {
			row("  largest process", "idle "+mib(s.RSSIdleTop))
		}
		row("server cpu", fmt.Sprintf("%.2fs (%.1f µs/msg)", s.CPUSeconds, s.CPUMicrosPerMsg))
	}
	if r.Redis != nil {
		row("redis cpu", fmt.Sprintf("%.2fs (%.1f µs/msg; server + redis %.1f µs/msg)", r.Redis.CPUSeconds, r.Redis.CPUMicrosPerMsg, deref(r.CPUMicrosPerMsgAll)))
	} else {
		row("redis cpu", "unknown (Redis is not a local process: give -redis-pid)")
	}
	if r.IdleSeconds > 0 {
		server, redis := "unknown", "unknown"
		if r.Server.PID != 0 {
			server = fmt.Sprintf("%.1f ms/s", r.Server.IdleCPUMillisPerSec)
		}
		if r.Redis != nil {
			redis = fmt.Sprintf("%.1f ms/s", r.Redis.IdleCPUMillisPerSec)
		}
		row("idle cpu", fmt.Sprintf("server %s, redis %s (%d users connected, nothing sent, over %.1f s)", server, redis, r.Connected, r.IdleSeconds))
	}
	if c := r.RedisClients; c.Samples > 0 {
		row("redis clients", fmt.Sprintf("connected max %d, blocked max %d", c.ConnectedMax, c.BlockedMax))
	}
	row("verdict", r.Verdict)
	fmt.Fprintln(w, strings.Repeat("-", 44))
}

func fmtLatency(l latency) string {
	return fmt.Sprintf("p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f", l.P50, l.P90, l.P99, l.P999, l.Max)
}

// rssNote flags a per-connection figure that rests on too few connections
// to rise above the process's own noise (a few hundred KiB).
func rssNote(connected int64) string {
	if connected < minConnsForRSS {
		return fmt.Sprintf(" (noise: only %d connections)", connected)
	}
	return ""
}

const minConnsForRSS = 500

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func deref(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
func kib(b int64) string { return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10)) }
