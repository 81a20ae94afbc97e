package main

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// monitor prints one progress line a second, records the latency timeline,
// and samples the server's process tree, the Redis processes and Redis's
// client counts.
//
// CPU per message divides like with like: the CPU spent between markFrom
// (sending starts; for a backlog drain, connecting starts) and markTo (the
// last message arrived, or the grace period ran out) by the messages
// delivered in that interval.
type monitor struct {
	cfg       *config
	tr        *tracker // nil in a -spawn parent: the children print progress
	cs        *clients
	pr        *producers
	rc        redis.UniversalClient
	redisPIDs []int
	t0        time.Time
	done      chan struct{}
	wg        sync.WaitGroup
	stopOnce  sync.Once

	mu                         sync.Mutex
	haveServer, haveRedis      bool
	procs                      int
	rssStart, rssIdle, rssPeak int64
	rssEnd                     int64
	rssIdleTop                 int64 // the largest process's RSS at rssIdle
	cpuFrom, cpuTo             usage
	// idleFrom and idleTo bound the idle window (markIdleFrom, markIdle):
	// every user connected, nothing sent; their times say how long.
	idleFrom, idleTo     usage
	idleFromAt, idleToAt time.Time
	stopped              bool  // markTo was called: cpuTo is final
	deliveredAtTo        int64 // first receipts when markTo was called (-1: not known here)
	clients              clientStat
}

// usage is CPU seconds of the server tree and of Redis at one moment.
type usage struct{ server, redis float64 }

func newMonitor(ctx context.Context, cfg *config, tr *tracker, cs *clients, pr *producers, rc redis.UniversalClient) *monitor {
	m := &monitor{cfg: cfg, tr: tr, cs: cs, pr: pr, rc: rc, t0: time.Now(), done: make(chan struct{})}
	switch {
	case len(cfg.redisPIDs) > 0:
		m.redisPIDs = cfg.redisPIDs
	case !cfg.child && rc != nil:
		m.redisPIDs, _ = findRedisPIDs(ctx, rc)
	}
	if s, ok := m.sample(); ok {
		m.rssStart, m.rssPeak, m.haveServer = s.rss, s.rss, true
	}
	m.markFrom()
	return m
}

// sample reads the server tree and the Redis processes, and keeps the
// latest CPU figures in cpuTo until markTo freezes them.
func (m *monitor) sample() (procSample, bool) {
	var s procSample
	ok := false
	if m.cfg.serverPID != 0 {
		s, ok = sampleTree(m.cfg.serverPID)
	}
	r, rok := sampleProcs(m.redisPIDs)
	m.mu.Lock()
	defer m.mu.Unlock()
	if ok {
		m.rssPeak = max(m.rssPeak, s.rss)
		m.rssEnd, m.procs = s.rss, max(m.procs, s.procs)
		if !m.stopped {
			m.cpuTo.server = s.cpu
		}
	}
	if rok {
		m.haveRedis = true
		if !m.stopped {
			m.cpuTo.redis = r.cpu
		}
	}
	return s, ok
}

// markFrom starts the CPU interval.
func (m *monitor) markFrom() {
	m.sample()
	m.mu.Lock()
	m.cpuFrom = m.cpuTo
	m.mu.Unlock()
}

// markIdleFrom starts the idle window: what the server and Redis spend
// with every user connected and nothing sent (heartbeats, presence, pings).
func (m *monitor) markIdleFrom() {
	m.sample()
	m.mu.Lock()
	m.idleFrom, m.idleFromAt = m.cpuTo, time.Now()
	m.mu.Unlock()
}

// markIdle records the RSS with every connection open and idle, and ends
// the idle window if markIdleFrom started one.
func (m *monitor) markIdle() {
	s, ok := m.sample()
	m.mu.Lock()
	defer m.mu.Unlock()
	if ok {
		m.rssIdle, m.rssIdleTop = s.rss, s.top
	}
	if !m.idleFromAt.IsZero() {
		m.idleTo, m.idleToAt = m.cpuTo, time.Now()
	}
}

// idleCPU is the CPU per second of the idle window, in ms/s (0 without
// one), and the window's length.
func (m *monitor) idleCPU() (per usage, seconds float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.idleToAt.IsZero() {
		return usage{}, 0
	}
	seconds = m.idleToAt.Sub(m.idleFromAt).Seconds()
	if seconds <= 0 {
		return usage{}, 0
	}
	return usage{server: (m.idleTo.server - m.idleFrom.server) * 1e3 / seconds,
		redis: (m.idleTo.redis - m.idleFrom.redis) * 1e3 / seconds}, seconds
}

// markTo ends the CPU interval: later samples only track RSS. The sample
// and the freeze happen in one critical section, so that no tick can slip
// an older reading in between.
func (m *monitor) markTo() {
	s, ok := sampleTree(m.cfg.serverPID)
	r, rok := sampleProcs(m.redisPIDs)
	m.mu.Lock()
	defer m.mu.Unlock()
	if ok && m.cfg.serverPID != 0 {
		m.cpuTo.server = s.cpu
	}
	if rok {
		m.cpuTo.redis = r.cpu
	}
	m.stopped = true
	m.deliveredAtTo = -1
	if m.tr != nil {
		m.deliveredAtTo = m.tr.received.Load()
	}
}

// perMessage is the divisor of CPU per message: the messages delivered in
// the CPU interval when this process counted them, else delivered.
func (m *monitor) perMessage(delivered int64) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped && m.deliveredAtTo >= 0 {
		return m.deliveredAtTo
	}
	return delivered
}

// start runs the monitor until stop.
func (m *monitor) start(ctx context.Context) {
	m.wg.Add(1)
	go m.run(ctx)
}

func (m *monitor) run(ctx context.Context) {
	defer m.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	win := newHist()
	var lastRecv int64
	for {
		select {
		case <-t.C:
		case <-m.done:
			return
		case <-ctx.Done():
			return
		}
		m.sample()
		m.sampleClients(ctx)
		if m.tr == nil {
			continue
		}
		recv := m.tr.received.Load()
		m.tr.snapshotWindow(time.Since(m.t0).Seconds(), win)
		p99 := 0.0
		m.tr.mu.Lock()
		if tl := m.tr.timeline; len(tl) > 0 {
			p99 = tl[len(tl)-1].P99
		}
		m.tr.mu.Unlock()
		logf("%5.0fs connected %d sent %d received %d rate %d/s p99 %.2fms",
			time.Since(m.t0).Seconds(), m.cs.connected.Load(), m.pr.all.Load(), recv, recv-lastRecv, p99)
		lastRecv = recv
	}
}

// sampleClients keeps the largest connected and blocked client counts
// that Redis reported.
func (m *monitor) sampleClients(ctx context.Context) {
	if m.rc == nil || m.cfg.child {
		return // a -spawn parent samples for its children
	}
	cc, ok := sampleClients(ctx, m.rc)
	if !ok {
		return
	}
	m.mu.Lock()
	m.clients.Samples++
	m.clients.ConnectedMax = max(m.clients.ConnectedMax, cc.connected)
	m.clients.BlockedMax = max(m.clients.BlockedMax, cc.blocked)
	m.mu.Unlock()
}

// stop ends the sampling; it may be called more than once.
func (m *monitor) stop() {
	m.stopOnce.Do(func() {
		close(m.done)
		m.wg.Wait()
		m.sample()
	})
}

// cpuUsed is the CPU of the interval from markFrom to markTo (or to now).
func (m *monitor) cpuUsed() usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return usage{server: m.cpuTo.server - m.cpuFrom.server, redis: m.cpuTo.redis - m.cpuFrom.redis}
}

// serverStats turns the samples into the result's server figures.
func (m *monitor) serverStats(connected, delivered int64) serverStat {
	var s serverStat
	if !m.haveServer {
		return s
	}
	cpu := m.cpuUsed().server
	delivered = m.perMessage(delivered)
	idle, _ := m.idleCPU()
	m.mu.Lock()
	defer m.mu.Unlock()
	s.PID, s.Processes = m.cfg.serverPID, m.procs
	s.RSSStart, s.RSSIdle, s.RSSPeak, s.RSSEnd = m.rssStart, m.rssIdle, m.rssPeak, m.rssEnd
	s.RSSIdleTop = m.rssIdleTop
	s.CPUSeconds = cpu
	s.IdleCPUMillisPerSec = idle.server
	if connected > 0 {
		s.RSSPerConn = (m.rssIdle - m.rssStart) / connected
	}
	if delivered > 0 {
		s.CPUMicrosPerMsg = cpu * 1e6 / float64(delivered)
	}
	return s
}

// redisStats is Redis's CPU in the same interval, or nil when the Redis
// processes are unknown (not on this machine, or in a container).
func (m *monitor) redisStats(delivered int64) *redisStat {
	m.mu.Lock()
	have := m.haveRedis
	m.mu.Unlock()
	if !have {
		return nil
	}
	cpu := m.cpuUsed().redis
	delivered = m.perMessage(delivered)
	idle, _ := m.idleCPU()
	r := &redisStat{PIDs: m.redisPIDs, CPUSeconds: cpu, IdleCPUMillisPerSec: idle.redis}
	if delivered > 0 {
		r.CPUMicrosPerMsg = cpu * 1e6 / float64(delivered)
	}
	return r
}

func (m *monitor) clientStats() clientStat {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.clients
}
