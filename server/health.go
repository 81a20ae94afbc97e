package server

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// health tracks whether Redis answers the consumers, so that an outage is
// logged once when it starts and once when it ends, not once per consumer
// and retry. Right after Redis comes back, consumers still find a few pooled
// connections that died with the old server; failures within flapGrace of
// the recovery count as the same outage's tail and are not logged again.
type health struct {
	log  *slog.Logger
	m    *metrics
	down atomic.Bool // read on every pop; the rest only on changes

	mu      sync.Mutex
	logged  bool      // an outage was logged and its end not yet
	upSince time.Time // last recovery
}

const flapGrace = 2 * time.Second

func (h *health) fail(err error) {
	h.m.redisErrors.Inc()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.down.Store(true)
	if !h.logged && time.Since(h.upSince) > flapGrace {
		h.logged = true
		h.log.Warn("redis unreachable; consumers keep their messages and retry", "err", err)
	}
}

func (h *health) ok() {
	if !h.down.Load() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.down.Load() {
		return
	}
	h.down.Store(false)
	h.upSince = time.Now()
	if h.logged {
		h.logged = false
		h.log.Info("redis reachable again; delivery resumed")
	}
}
