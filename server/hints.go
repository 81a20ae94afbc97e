package server

import (
	"context"
	"time"
)

// sweepEvery is how often hinted consumption looks at the queue of every
// user online here. Hints are fire-and-forget: one sent while a hint
// connection was down is lost, so a message can wait this long at worst
// (a reconnect sweeps at once). Measured: 5 ms of Redis CPU per sweep at
// 10,000 online users, 49 ms at 100,000 (docs/consumption.md).
const sweepEvery = 5 * time.Second

// startHints starts hinted consumption (Config.Consumer) and its sweep. It
// returns what stops them, or nil when consumers block instead: by
// configuration, or because Redis refused client tracking.
func (s *Server) startHints(ctx context.Context) (stop func()) {
	if s.cfg.Consumer != ConsumerHinted {
		return nil
	}
	sweepNow := make(chan struct{}, 1)
	lost := func() {
		select {
		case sweepNow <- struct{}{}:
		default:
		}
	}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	hints, err := s.q.StartHints(hctx, s.hub.hinted, lost)
	cancel()
	if err != nil {
		s.log.Warn("Redis refused client tracking: consumers block in BLMOVE, one Redis connection and one task per online user, as with -consumer blocking (size -workers and -max-users for two open files per user)", "err", err)
		s.blockInstead()
		return nil
	}
	s.hub.hints = hints
	sctx, stopSweep := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.hub.sweepLoop(sctx, sweepNow)
	}()
	return func() {
		stopSweep()
		<-done
		hints.Close()
	}
}

// blockInstead makes consumers block, hinted consumption having been
// refused: the bounds that were not given follow the mode (a task per
// online user, two open files each).
func (s *Server) blockInstead() {
	s.cfg.Consumer = ConsumerBlocking
	s.cfg.defaultBounds()
	s.pool.Resize(poolSize(s.cfg))
	s.hub.maxUsers = s.cfg.usersBound()
	s.hub.workers = s.cfg.Workers
}

// consumerMode is the mode consumers run in, for the start line.
func (s *Server) consumerMode() string {
	if s.hub.hints != nil {
		return ConsumerHinted
	}
	return ConsumerBlocking
}

// sweepLoop sweeps every sweepEvery, and at once when hints may have been
// lost.
func (h *hub) sweepLoop(ctx context.Context, now <-chan struct{}) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.refreshHints(ctx)
		case <-now:
		}
		h.sweep(ctx)
	}
}

// sweep hints every user online here whose queue holds messages.
func (h *hub) sweep(ctx context.Context) {
	users := h.onlineUsers()
	if len(users) == 0 {
		return
	}
	lens, err := h.q.Lengths(ctx, users, time.Second)
	if err != nil {
		h.log.Debug("the sweep could not read every queue; the next one retries", "err", err)
	}
	for i, n := range lens {
		if n > 0 {
			h.hinted(users[i])
		}
	}
}

// refreshHints opens hint connections to masters added to a cluster.
func (h *hub) refreshHints(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := h.hints.Refresh(rctx); err != nil {
		h.log.Debug("refreshing the hint connections failed", "err", err)
	}
}
