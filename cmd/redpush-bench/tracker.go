package main

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// tracker matches what each connection receives against what was sent.
type tracker struct {
	shards   []histShard
	received atomic.Int64 // frames that carried a bench payload
	dups     atomic.Int64
	ooo      atomic.Int64
	wrong    atomic.Int64 // payload of another user
	garbage  atomic.Int64 // frames without a bench payload
	lastRecv atomic.Int64 // unix nanos of the latest matched frame

	mu       sync.Mutex
	timeline []timePoint // p99 per second, for the report
}

type histShard struct {
	mu  sync.Mutex
	h   *hdrhistogram.Histogram // the whole run
	win *hdrhistogram.Histogram // since the last progress line
}

type timePoint struct {
	At  float64 `json:"t"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
	N   int64   `json:"n"`
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
}

func newTracker(shards int) *tracker {
	t := &tracker{shards: make([]histShard, shards)}
	for i := range t.shards {
		t.shards[i].h = newHist()
		t.shards[i].win = newHist()
	}
	return t
}

// connState is one connection's view: which seqs it saw, the last one.
type connState struct {
	user string
	seen bitset
	last int64
	n    int64
	sh   *histShard
}

func (t *tracker) newConn(user string, i int) *connState {
	return &connState{user: user, last: -1, sh: &t.shards[i%len(t.shards)]}
}

func (t *tracker) record(c *connState, user []byte, seq, nanos int64, now time.Time) {
	if string(user) != c.user {
		t.wrong.Add(1)
		return
	}
	t.received.Add(1)
	t.lastRecv.Store(now.UnixNano())
	c.n++
	if c.seen.testAndSet(seq) {
		t.dups.Add(1)
	}
	if seq < c.last {
		t.ooo.Add(1)
	}
	c.last = max(c.last, seq)
	us := now.Sub(time.Unix(0, nanos)).Microseconds()
	c.sh.mu.Lock()
	_ = c.sh.h.RecordValue(max(us, 1))
	_ = c.sh.win.RecordValue(max(us, 1))
	c.sh.mu.Unlock()
}

// merged returns all latencies so far in one histogram.
func (t *tracker) merged() *hdrhistogram.Histogram {
	h := newHist()
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		h.Merge(s.h)
		s.mu.Unlock()
	}
	return h
}

// snapshotWindow adds the latencies since the last call to the timeline.
func (t *tracker) snapshotWindow(at float64, win *hdrhistogram.Histogram) {
	win.Reset()
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		win.Merge(s.win)
		s.win.Reset()
		s.mu.Unlock()
	}
	if win.TotalCount() == 0 {
		return
	}
	t.mu.Lock()
	t.timeline = append(t.timeline, timePoint{At: at,
		P50: ms(win.ValueAtQuantile(50)), P99: ms(win.ValueAtQuantile(99)), Max: ms(win.Max()), N: win.TotalCount()})
	t.mu.Unlock()
}

func ms(us int64) float64 { return float64(us) / 1000 }

// bitset is a growable set of non-negative ints.
type bitset []uint64

func (b *bitset) testAndSet(i int64) bool {
	w := int(i / 64)
	for len(*b) <= w {
		*b = append(*b, 0)
	}
	m := uint64(1) << (i % 64)
	was := (*b)[w]&m != 0
	(*b)[w] |= m
	return was
}

func (b bitset) has(i int64) bool {
	w := int(i / 64)
	return w < len(b) && b[w]&(1<<(i%64)) != 0
}
