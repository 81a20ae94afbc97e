package server

import (
	"log/slog"
	"sync/atomic"
)

// health tracks whether Redis answers the consumers, so that an outage is
// logged once when it starts and once when it ends, not once per consumer
// and retry.
type health struct {
	log  *slog.Logger
	m    *metrics
	down atomic.Bool
}

func (h *health) fail(err error) {
	h.m.redisErrors.Inc()
	if h.down.CompareAndSwap(false, true) {
		h.log.Warn("redis unreachable; consumers keep their messages and retry", "err", err)
	}
}

func (h *health) ok() {
	if h.down.CompareAndSwap(true, false) {
		h.log.Info("redis reachable again; delivery resumed")
	}
}
