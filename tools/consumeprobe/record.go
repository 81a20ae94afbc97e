package main

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// recorder counts what the consumers popped, by the producer's sequence
// number (exactly once), by user (FIFO order) and by latency (send stamp in
// the payload to the moment the pop's reply was read).
type recorder struct {
	mu       sync.Mutex
	seen     []uint8 // by seq: times popped
	last     []int64 // by user: last seq popped
	hist     *hdrhistogram.Histogram
	unique   int64
	dups     int64
	order    int64 // a user's seq going backwards
	bad      int64 // unparsable payloads
	measure  atomic.Bool
	popped   atomic.Int64 // messages, duplicates included
	pops     atomic.Int64 // pop commands sent (replied)
	empty    atomic.Int64 // pops that found nothing
	hints    atomic.Int64 // hints (keys named by invalidate / keyspace events)
	selfHint atomic.Int64 // events recognised as caused by our own pops (C only)
	sweeps   atomic.Int64
	sweepHit atomic.Int64 // users a sweep found non-empty while idle
	reconn   atomic.Int64
	recovRQ  atomic.Int64 // messages requeued by recovery after a kill
	recovAck atomic.Int64 // processing lists acked by recovery (all delivered)
}

func newRecorder(users int) *recorder {
	last := make([]int64, users)
	for i := range last {
		last[i] = -1
	}
	return &recorder{
		seen: make([]uint8, 1<<16),
		last: last,
		hist: hdrhistogram.New(1, 120_000_000, 3), // µs
	}
}

// payload is "<seq>:<unix nanos>:" then padding.
func parsePayload(p string) (seq int64, sent int64, ok bool) {
	a, rest, ok1 := strings.Cut(p, ":")
	b, _, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 {
		return 0, 0, false
	}
	s, err1 := strconv.ParseInt(a, 10, 64)
	t, err2 := strconv.ParseInt(b, 10, 64)
	return s, t, err1 == nil && err2 == nil
}

// got records msgs popped for user, oldest first.
func (r *recorder) got(user int, msgs []string) {
	if len(msgs) == 0 {
		r.empty.Add(1)
		return
	}
	now := time.Now().UnixNano()
	r.popped.Add(int64(len(msgs)))
	measure := r.measure.Load()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		seq, sent, ok := parsePayload(m)
		if !ok || seq < 0 {
			r.bad++
			continue
		}
		for int(seq) >= len(r.seen) {
			r.seen = append(r.seen, make([]uint8, len(r.seen))...)
		}
		if r.seen[seq] == 0 {
			r.unique++
		} else {
			r.dups++
		}
		if r.seen[seq] < 255 {
			r.seen[seq]++
		}
		if user >= 0 && user < len(r.last) {
			if seq < r.last[user] {
				r.order++
			}
			r.last[user] = seq
		}
		if measure {
			us := (now - sent) / 1000
			if us < 1 {
				us = 1
			}
			_ = r.hist.RecordValue(us)
		}
	}
}

// delivered reports whether every message in msgs was already popped.
func (r *recorder) delivered(msgs []string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		seq, _, ok := parsePayload(m)
		if !ok || int(seq) >= len(r.seen) || r.seen[seq] == 0 {
			return false
		}
	}
	return true
}

func (r *recorder) uniqueCount() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unique
}

// missing counts the seqs below sent never popped.
func (r *recorder) missing(sent int64) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for i := int64(0); i < sent; i++ {
		if int(i) >= len(r.seen) || r.seen[i] == 0 {
			n++
		}
	}
	return n
}

// userOf parses the user index out of "user_<n>_messages".
func userOf(key string) int {
	s, ok := strings.CutPrefix(key, "user_")
	if !ok {
		return -1
	}
	s, ok = strings.CutSuffix(s, "_messages")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}

func queueKey(u int) string { return "user_" + strconv.Itoa(u) + "_messages" }
func procKey(u int) string  { return "{" + queueKey(u) + "}:processing:probe" }
