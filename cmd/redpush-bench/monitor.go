package main

import (
	"context"
	"sync"
	"time"
)

// monitor prints one progress line a second, records the latency timeline
// and samples the server process.
type monitor struct {
	cfg  *config
	tr   *tracker
	cs   *clients
	pr   *producers
	t0   time.Time
	done chan struct{}
	wg   sync.WaitGroup

	mu                         sync.Mutex
	rssStart, rssIdle, rssPeak int64
	rssEnd                     int64
	cpuStart, cpuEnd           float64
	cpuSendStart               float64
	haveServer                 bool
}

func newMonitor(cfg *config, tr *tracker, cs *clients, pr *producers) *monitor {
	m := &monitor{cfg: cfg, tr: tr, cs: cs, pr: pr, t0: time.Now(), done: make(chan struct{})}
	if s, ok := m.sample(); ok {
		m.rssStart, m.rssPeak, m.cpuStart, m.haveServer = s.rss, s.rss, s.cpu, true
	}
	return m
}

func (m *monitor) sample() (procSample, bool) {
	if m.cfg.serverPID == 0 {
		return procSample{}, false
	}
	s, ok := sampleProc(m.cfg.serverPID)
	if ok {
		m.mu.Lock()
		m.rssPeak = max(m.rssPeak, s.rss)
		m.rssEnd, m.cpuEnd = s.rss, s.cpu
		m.mu.Unlock()
	}
	return s, ok
}

func (m *monitor) markConnected() { m.sample() }

// markIdle records the RSS with every connection open and idle.
func (m *monitor) markIdle() {
	if s, ok := m.sample(); ok {
		m.mu.Lock()
		m.rssIdle, m.cpuSendStart = s.rss, s.cpu
		m.mu.Unlock()
	}
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
		if m.tr == nil {
			continue // a -spawn parent: the children print progress
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

func (m *monitor) stop() {
	close(m.done)
	m.wg.Wait()
	m.sample()
}

// serverStats turns the samples into the result's server figures.
func (m *monitor) serverStats(connected, delivered int64) serverStat {
	var s serverStat
	if !m.haveServer {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s.PID, s.RSSStart, s.RSSIdle, s.RSSPeak, s.RSSEnd = m.cfg.serverPID, m.rssStart, m.rssIdle, m.rssPeak, m.rssEnd
	s.CPUSeconds = m.cpuEnd - m.cpuStart
	if connected > 0 {
		s.RSSPerConn = (m.rssIdle - m.rssStart) / connected
	}
	if delivered > 0 {
		s.CPUMicrosPerMsg = (m.cpuEnd - m.cpuSendStart) * 1e6 / float64(delivered)
	}
	return s
}
