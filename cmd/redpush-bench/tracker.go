package main

import (
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// tracker matches what each connection receives against what was sent.
//
// Latency runs from the moment a message was scheduled to be pushed (its
// stamp) to the client's read. In -rate mode the schedule is fixed in
// advance, so a producer that falls behind (Redis stalled, say) does not
// hide the stall: the messages it should have sent meanwhile carry their
// scheduled time (the correction for coordinated omission that wrk2
// makes). The uncorrected figure, from the actual LPUSH, is kept beside it.
type tracker struct {
	shards     []histShard
	received   atomic.Int64 // first receipts: each message counted once per connection
	dups       atomic.Int64 // receipts of a message this connection already had
	ooo        atomic.Int64
	wrong      atomic.Int64 // payload of another user
	garbage    atomic.Int64 // frames without a bench payload
	outOfRange atomic.Int64 // latencies below 0 or above maxLatency
	lastRecv   atomic.Int64 // unix nanos of the latest first receipt
	// redelivered counts frames of acknowledged delivery (-ack) marked
	// "redelivered": popped before, a duplicate or not.
	redelivered atomic.Int64

	mu       sync.Mutex
	timeline []timePoint // per second, for the report

	anomalies *anomalyLog // when duplicates and reorderings happened (chaos runs); nil: not kept
}

// maxLatency is the histograms' highest trackable value: anything slower
// is counted in outOfRange, never dropped silently.
const maxLatency = time.Hour

type histShard struct {
	mu  sync.Mutex
	h   *hdrhistogram.Histogram // the whole run, from the schedule
	raw *hdrhistogram.Histogram // the whole run, from the actual LPUSH
	win *hdrhistogram.Histogram // since the last progress line
	ack *hdrhistogram.Histogram // -ack: from the schedule to the acknowledgement's write
}

type timePoint struct {
	At  float64 `json:"t"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
	N   int64   `json:"n"`
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(maxLatency/time.Microsecond), 3)
}

func newTracker(shards int) *tracker {
	t := &tracker{shards: make([]histShard, shards)}
	for i := range t.shards {
		t.shards[i] = histShard{h: newHist(), raw: newHist(), win: newHist(), ack: newHist()}
	}
	return t
}

// connState is one connection's view: which seqs it saw, the last one.
// Its reader owns it; mu lets another goroutine look at seen meanwhile.
type connState struct {
	user string
	mu   sync.Mutex
	seen bitset
	last int64
	sh   *histShard
}

// snapshot returns a copy of the seqs seen so far.
func (c *connState) snapshot() bitset {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append(bitset(nil), c.seen...)
}

func (t *tracker) newConn(user string, i int) *connState {
	return &connState{user: user, last: -1, sh: &t.shards[i%len(t.shards)]}
}

// record books one parsed frame. Only a first receipt is a delivery: a
// duplicate is counted as such and nothing else, so it can neither raise
// the delivery figures nor end the wait for stragglers early.
func (t *tracker) record(c *connState, s stamp, now time.Time) {
	if string(s.user) != c.user {
		t.wrong.Add(1)
		return
	}
	c.mu.Lock()
	dup := c.seen.testAndSet(s.seq)
	ooo := !dup && s.seq < c.last
	if !dup {
		c.last = max(c.last, s.seq)
	}
	c.mu.Unlock()
	if dup {
		t.dups.Add(1)
		t.anomalies.note(true, now)
		return
	}
	t.received.Add(1)
	t.lastRecv.Store(now.UnixNano())
	if ooo {
		t.ooo.Add(1)
		t.anomalies.note(false, now)
	}
	us := now.Sub(time.Unix(0, s.scheduled)).Microseconds()
	raw := us - s.lagMicros
	if us < 0 || us > int64(maxLatency/time.Microsecond) || raw < 0 {
		t.outOfRange.Add(1)
		return
	}
	c.sh.mu.Lock()
	_ = c.sh.h.RecordValue(us)
	_ = c.sh.raw.RecordValue(raw)
	_ = c.sh.win.RecordValue(us)
	c.sh.mu.Unlock()
}

// recordAck books the time from a message's scheduled push to the write
// of its acknowledgement (every receipt's, a duplicate's too: each is
// acknowledged).
func (t *tracker) recordAck(c *connState, s stamp, now time.Time) {
	us := now.Sub(time.Unix(0, s.scheduled)).Microseconds()
	if us < 0 || us > int64(maxLatency/time.Microsecond) {
		t.outOfRange.Add(1)
		return
	}
	c.sh.mu.Lock()
	_ = c.sh.ack.RecordValue(us)
	c.sh.mu.Unlock()
}

// mergedAck returns the push-to-acknowledgement times in one histogram.
func (t *tracker) mergedAck() *hdrhistogram.Histogram {
	h := newHist()
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		h.Merge(sh.ack)
		sh.mu.Unlock()
	}
	return h
}

// merged returns all latencies so far in one histogram, corrected and not.
func (t *tracker) merged() (corrected, raw *hdrhistogram.Histogram) {
	corrected, raw = newHist(), newHist()
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		corrected.Merge(s.h)
		raw.Merge(s.raw)
		s.mu.Unlock()
	}
	return corrected, raw
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

// decodeHist reads a histogram that result.Histogram holds. An empty or
// damaged one is an error: hdrhistogram.Decode itself panics on some.
func decodeHist(s string) (h *hdrhistogram.Histogram, err error) {
	if s == "" {
		return nil, errors.New("no histogram")
	}
	defer func() {
		if recover() != nil {
			h, err = nil, errors.New("damaged histogram")
		}
	}()
	return hdrhistogram.Decode([]byte(s))
}

// anomalyLog keeps when duplicates and reorderings happened.
type anomalyLog struct {
	mu       sync.Mutex
	dups     []time.Time
	reorders []time.Time
}

func (a *anomalyLog) note(dup bool, at time.Time) {
	if a == nil {
		return
	}
	a.mu.Lock()
	if dup {
		a.dups = append(a.dups, at)
	} else {
		a.reorders = append(a.reorders, at)
	}
	a.mu.Unlock()
}

// bySecond counts them per second since t0, seconds without any left out.
func (a *anomalyLog) bySecond(t0 time.Time) []timeCount {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := map[int]*timeCount{}
	get := func(at time.Time) *timeCount {
		k := int(at.Sub(t0).Seconds())
		if m[k] == nil {
			m[k] = &timeCount{At: k}
		}
		return m[k]
	}
	for _, at := range a.dups {
		get(at).Duplicated++
	}
	for _, at := range a.reorders {
		get(at).Reordered++
	}
	var out []timeCount
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, *m[k])
	}
	return out
}

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
	return i >= 0 && w < len(b) && b[w]&(1<<(i%64)) != 0
}

// or adds every member of o.
func (b *bitset) or(o bitset) {
	for len(*b) < len(o) {
		*b = append(*b, 0)
	}
	for i, w := range o {
		(*b)[i] |= w
	}
}
