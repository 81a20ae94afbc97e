package server

import (
	"errors"
	"slices"
	"sync"
)

// acker is the acknowledgement state of one ack connection: the messages
// it was sent, numbered in the order sent (its sequence), the ones not yet
// acknowledged, and how far the client and the timeout got. Its methods
// are safe for concurrent use: the consumer records and expires, the
// connection's reader acknowledges.
type acker struct {
	mu     sync.Mutex
	window int // at most this many outstanding
	sent   int64
	// acked: the client acknowledged every message through this
	// sequence; expired: the timeout gave up on every one through this.
	acked, expired int64
	out            []sent // outstanding, in sequence order
	// lo and hi bound the ids ever sent (0: none yet): an ack for an id
	// outside them names one this connection never had.
	lo, hi uint64
	// back are the ids sent here whose batch went back to the queue
	// unacknowledged here, in the order they went, at most maxBack
	// windows of them: if one comes here again, an ack of it may be a
	// late one for the first copy (sent.again).
	back  map[uint64]int64 // id → its place in backQ's order (backN)
	backQ []backID
	backN int64
}

// backID is an id in acker.backQ, and when it went back.
type backID struct {
	id uint64
	n  int64
}

// maxBack bounds acker.back, per window: an id that comes back after more
// than that many others went back here is taken for a first send.
const maxBack = 4

// sent is one outstanding message of an ack connection. again marks an
// id sent here before, whose batch went back to the queue: an ack of it
// may be a late one for the earlier copy, sent before the client could
// have read what precedes this one (ack).
type sent struct {
	id    uint64
	seq   int64
	again bool
}

func newAcker(window int) *acker { return &acker{window: window} }

// room is how many more messages may be sent before the window is full.
func (a *acker) room() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.window - len(a.out)
}

// record numbers ids, about to be written in this order, and returns the
// sequence of the last: the batch is acknowledged once acked reaches it.
func (a *acker) record(ids []uint64) (end int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		a.sent++
		_, again := a.back[id]
		a.out = append(a.out, sent{id: id, seq: a.sent, again: again})
		if a.lo == 0 || id < a.lo {
			a.lo = id
		}
		a.hi = max(a.hi, id)
	}
	return a.sent
}

// errAckUnknown: an ack names an id this connection was never sent.
var errAckUnknown = errors.New("ack for an id never sent on this connection")

// ack takes the client's acknowledgement of id: that message, the last
// time it was sent here, and every one sent before it. An id sent here
// but no longer outstanding (acknowledged already, given up by the
// timeout, or settled by another connection) is ignored. So is the ack of
// a message sent here again while a message not sent here before is
// outstanding ahead of it: the ack may be a late one for the first
// copy, and must not cover what the client may never have read (a message
// given up and sent again behind one this connection never had). A batch
// that comes again whole is acknowledged as before; a client that
// acknowledges what it reads, in order, acknowledges the others first.
func (a *acker) ack(id uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := len(a.out) - 1; i >= 0; i-- {
		if a.out[i].id == id {
			if a.out[i].again && slices.ContainsFunc(a.out[:i], func(s sent) bool { return !s.again }) {
				return nil
			}
			for _, s := range a.out[:i+1] {
				delete(a.back, s.id)
			}
			a.acked = max(a.acked, a.out[i].seq)
			a.out = slices.Delete(a.out, 0, i+1)
			return nil
		}
	}
	if a.lo != 0 && a.lo <= id && id <= a.hi {
		return nil
	}
	return errAckUnknown
}

// expire gives up on the messages through sequence end that are not
// acknowledged, and reports whether there were any: the batch ending there
// failed on this connection, and its messages free the window.
func (a *acker) expire(end int64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.acked >= end || a.expired >= end {
		return false
	}
	a.expired = end
	a.dropThroughLocked(end, true)
	return true
}

// release drops the outstanding messages through sequence end: their batch
// left the consumer (acknowledged by another connection, or requeued:
// back in the queue, to come again), so they no longer hold the window,
// and a late ack of them is ignored.
func (a *acker) release(end int64, requeued bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dropThroughLocked(end, requeued)
}

func (a *acker) dropThroughLocked(end int64, requeued bool) {
	i := 0
	for i < len(a.out) && a.out[i].seq <= end {
		if requeued {
			a.wentBackLocked(a.out[i].id)
		}
		i++
	}
	a.out = slices.Delete(a.out, 0, i)
}

// wentBackLocked records that id went back to the queue unacknowledged.
func (a *acker) wentBackLocked(id uint64) {
	if a.back == nil {
		a.back = make(map[uint64]int64)
	}
	if _, ok := a.back[id]; ok {
		return
	}
	a.backN++
	a.back[id] = a.backN
	a.backQ = append(a.backQ, backID{id, a.backN})
	for len(a.backQ) > maxBack*a.window {
		// An id acknowledged and gone back again since is queued twice:
		// the older entry no longer stands for it.
		if old := a.backQ[0]; a.back[old.id] == old.n {
			delete(a.back, old.id)
		}
		a.backQ = a.backQ[1:]
	}
}

// state says whether the message at sequence end (and so every one before
// it) is acknowledged, or was given up by the timeout.
func (a *acker) state(end int64) (acked, expired bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.acked >= end, a.expired >= end
}

// ackedSeq is the sequence through which the client acknowledged.
func (a *acker) ackedSeq() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.acked
}
