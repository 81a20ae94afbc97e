package server

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the series the consumers update on their hot path; the
// gauges and the other counters are read from the hub and the Server when
// Prometheus scrapes, so they cost nothing in between.
type metrics struct {
	popToWrite    prometheus.Histogram
	writeFailures prometheus.Counter
	redisErrors   prometheus.Counter
	relayDropped  prometheus.Counter
	panics        prometheus.Counter
	deadLettered  prometheus.Counter
	ackTimeouts   prometheus.Counter
	redelivered   prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		popToWrite: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "redpush", Name: "pop_to_write_seconds",
			Help:    "Time from popping a batch out of Redis to its first successful write to a client.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16), // 50 µs … 1.6 s
		}),
		writeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "redpush", Name: "write_failures_total",
			Help: "Writes to a client that failed (the connection is then closed).",
		}),
		redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "redpush", Name: "redis_errors_total",
			Help: "Redis commands of consumers that failed.",
		}),
		relayDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "redpush", Name: "relay_dropped_total",
			Help: "Batches relayed from other instances that were dropped because too many relay writes were in flight.",
		}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "redpush", Name: "dead_lettered_total",
			Help: "Messages moved to a dead-letter list {queue}:dead after every connection they reached failed 10 times in a row.",
		}),
		ackTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "redpush", Name: "ack_timeouts_total",
			Help: "Batches an ack connection (?ack=1) left unacknowledged for -ack-timeout (they went back to the queue).",
		}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "redpush", Name: "ack_redelivered_total",
			Help: "Messages sent to ack connections marked \"redelivered\": they had been popped before.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "redpush", Name: "consumer_panics_total",
			Help: "Consumers that panicked (their user's connections were closed with 1011 and its messages requeued).",
		}),
	}
}

func (m *metrics) observePopToWrite(popped time.Time) {
	m.popToWrite.Observe(time.Since(popped).Seconds())
}

// metricsHandler serves GET /metrics in the Prometheus text format.
func (s *Server) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		s.hub.m.popToWrite, s.hub.m.writeFailures, s.hub.m.redisErrors, s.hub.m.relayDropped, s.hub.m.panics, s.hub.m.deadLettered,
		s.hub.m.ackTimeouts, s.hub.m.redelivered,
	)
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "redpush", Name: name, Help: help}, f))
	}
	counter := func(name, help string, labels prometheus.Labels, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "redpush", Name: name, Help: help, ConstLabels: labels}, f))
	}
	gauge("backlog_messages", "Messages waiting in the queues of the users online here (LLEN of each, at scrape time); -1 when Redis did not answer.",
		func() float64 { return float64(s.hub.backlog()) })
	gauge("partial_message_bytes", "Bytes the partial messages of all clients hold now (bounded by -max-pending-bytes).",
		func() float64 { return float64(s.partial.held.Load()) })
	gauge("connections", "Open WebSocket connections.", func() float64 { _, c := s.hub.counts(); return float64(c) })
	gauge("reactor_connections", "Connections read by the epoll reactor, without a goroutine each (Linux; the rest: TLS, or the portable build).",
		func() float64 { return float64(s.rx.count()) })
	gauge("users_online", "Users with at least one connection or handshake in progress.", func() float64 { u, _ := s.hub.counts(); return float64(u) })
	gauge("consumers_running", "Consumers of online users: running a task, or parked waiting for a hint (hinted consumption).", func() float64 { return float64(s.hub.consumers.Load()) })
	gauge("consumer_tasks_running", "Consumer tasks running now (a parked consumer holds none).", func() float64 { return float64(s.hub.tasks.Load()) })
	gauge("pool_capacity", "Consumers that may work at once (-workers).", func() float64 { return float64(s.hub.workers) })
	gauge("consumers_waiting", "Consumers waiting for one of the -workers slots (hinted consumption).", func() float64 { return float64(s.hub.waiting()) })
	gauge("users_capacity", "Users that may be online at once (-max-users; blocking, -workers too).", func() float64 { return float64(s.hub.maxUsers) })
	gauge("redis_up", "1 while consumers reach Redis, 0 during an outage.", func() float64 {
		if s.hub.health.down.Load() {
			return 0
		}
		return 1
	})
	counter("messages_delivered_total", "Messages written to at least one connection and acknowledged.", nil,
		func() float64 { return float64(s.hub.stats.Delivered.Load()) })
	counter("messages_requeued_total", "Messages put back into their queue (failed write, user gone, shutdown).", nil,
		func() float64 { return float64(s.hub.stats.Requeued.Load()) })
	for status, c := range map[string]func() int64{
		"400": s.stats.refused400.Load, "401": s.stats.refused401.Load,
		"403": s.stats.refused403.Load, "429": s.stats.refused429.Load, "503": s.stats.refused503.Load,
	} {
		counter("handshakes_refused_total", "WebSocket handshakes refused, by HTTP status (429: too many connections of one user; 503: -max-users online, no task for a blocking consumer, or shutting down).",
			prometheus.Labels{"status": status}, func() float64 { return float64(c()) })
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
