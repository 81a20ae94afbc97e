package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/redisq"
)

// Acknowledged delivery, opt-in per connection (?ack=1): a pushed message
// arrives as {"id","data"} (or "data_b64"), "redelivered":true when it was
// popped before, and leaves Redis only once a client acknowledged it with
// {"ack":"<id>"}, which acknowledges that message and every earlier one
// sent on the connection. Its id lives in the message (redisq.Wrap), so it
// survives requeues and crashes.
//
// The consumer treats an acknowledgement as it treats a TCP confirmation
// on a plain connection (confirm.go): a batch written to ack connections
// is confirmed when one of them acknowledged it, and failed when every one
// of them closed, or let -ack-timeout pass without acknowledging it (the
// connection stays open); a failed batch goes back to the queue with what
// follows it, and comes again with the same ids. A batch that reached an
// ack connection is confirmed by an acknowledgement only: a plain
// connection's TCP confirmation does not count for it.

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
}

// sent is one outstanding message of an ack connection. again marks an
// id that may have been sent here before (not above every id sent so
// far): an ack of it may be a late one for the earlier copy, sent before
// the client could have read what precedes this one (ack).
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
		a.out = append(a.out, sent{id: id, seq: a.sent, again: a.hi != 0 && id <= a.hi})
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
// a message that may have been sent here before while older messages are
// still outstanding: it may be the late ack of its first copy, which must
// not cover messages sent since (a message given up and sent again behind
// one this client never read); a client that acknowledges what it reads,
// in order, acknowledges those first, and then this one counts.
func (a *acker) ack(id uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := len(a.out) - 1; i >= 0; i-- {
		if a.out[i].id == id {
			if a.out[i].again && i > 0 {
				return nil
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
	a.dropThroughLocked(end)
	return true
}

// release drops the outstanding messages through sequence end: their batch
// left the consumer (acknowledged by another connection, or back in the
// queue, to come again), so they no longer hold the window, and a late ack
// of them is ignored.
func (a *acker) release(end int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dropThroughLocked(end)
}

func (a *acker) dropThroughLocked(end int64) {
	i := 0
	for i < len(a.out) && a.out[i].seq <= end {
		i++
	}
	a.out = slices.Delete(a.out, 0, i)
}

// state says whether the message at sequence end (and so every one before
// it) is acknowledged, or was given up by the timeout.
func (a *acker) state(end int64) (acked, expired bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.acked >= end, a.expired >= end
}

// ackedPrefix is how many of f's oldest messages an ack connection
// acknowledged, short of all of them: a cumulative ack may fall inside a
// batch, and what it covers leaves Redis without waiting for the rest.
func (f *flight) ackedPrefix() int {
	k := 0
	for _, m := range f.acks {
		start := m.end - int64(f.n) // the sequence before f's first message here
		if a := m.c.ack.ackedSeq(); a > start {
			k = max(k, int(min(a-start, int64(f.n))))
		}
	}
	return k
}

// ackedSeq is the sequence through which the client acknowledged.
func (a *acker) ackedSeq() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.acked
}

// ackMark is where a batch ends in an ack connection's sequence.
type ackMark struct {
	c   *conn
	end int64
}

// ackOutcome is the outcome of a batch written to ack connections:
// confirmed once one acknowledged it, failed once every one closed or
// timed it out.
func ackOutcome(marks []ackMark) outcome {
	given := true // up by every connection
	for _, m := range marks {
		acked, expired := m.c.ack.state(m.end)
		if acked {
			return confirmed
		}
		if !expired && !m.c.gone.Load() {
			given = false
		}
	}
	if given {
		return failed
	}
	return pending
}

// expireAcks gives up, on every ack connection f was written to, on f's
// messages once -ack-timeout passed since it was written without an
// acknowledgement: the consumer then returns f (and what follows it) to
// the queue, and the connections stay open.
// It reports whether it gave up on any.
func (h *hub) expireAcks(f flight, now time.Time) bool {
	if len(f.acks) == 0 || now.Sub(f.at) < h.ackTimeout {
		return false
	}
	gaveUp := false
	for _, m := range f.acks {
		if m.c.ack.expire(m.end) {
			gaveUp = true
			h.m.ackTimeouts.Inc()
			h.log.Debug("ack timeout: the batch goes back to the queue", "user", m.c.user, "fd", m.c.fd)
		}
	}
	return gaveUp
}

// ackRoom is how many messages the next pop for s may take: the least
// room of its ack connections that have any; 0 when every one is at its
// window; -1 when it has none (plain connections take any number).
func (h *hub) ackRoom(s *session) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	room := -1
	for _, c := range s.conns {
		if c.ack == nil || c.gone.Load() {
			continue
		}
		switch r := c.ack.room(); {
		case r > 0 && (room <= 0 || r < room):
			room = r
		case r <= 0 && room < 0:
			room = 0
		}
	}
	return room
}

// wrap gives the batch just popped its ids (redisq.Wrap): a message popped
// raw gets a new one, written into it in Redis; one popped as an envelope
// was popped before, and keeps its own.
func (c *consumer) wrap(ctx context.Context, msgs []string) (*ackBatch, error) {
	ab := &ackBatch{ids: make([]uint64, len(msgs)), redelivered: make([]bool, len(msgs))}
	raw := false
	for i, m := range msgs {
		id, _, ok := redisq.ParseEnvelope(m)
		ab.ids[i], ab.redelivered[i] = id, ok
		raw = raw || !ok
	}
	if !raw {
		return ab, nil
	}
	held := len(msgs)
	for _, f := range c.flights {
		held += f.n
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	defer cancel()
	ids, err := c.h.q.Wrap(actx, c.s.user, len(msgs), held)
	if err != nil {
		return nil, err
	}
	copy(ab.ids, ids)
	return ab, nil
}

// ackBatch is what an ack connection needs of a batch besides its
// messages: their ids, and whether each was popped before.
type ackBatch struct {
	ids         []uint64
	redelivered []bool
}

// redeliveries counts the messages of the batch that were popped before.
func (ab *ackBatch) redeliveries() int {
	n := 0
	for _, r := range ab.redelivered {
		if r {
			n++
		}
	}
	return n
}

// appendAckFrames appends one {"id","data"} text frame per message of a
// batch (msgs are envelopes or, for a message popped before acknowledged
// delivery was asked for, raw; the ids are ab's).
func appendAckFrames(dst []byte, msgs []string, ab *ackBatch) []byte {
	for i, m := range msgs {
		dst = appendFrame(dst, ws.OpText, ackMessage(ab.ids[i], redisq.Unwrap(m), ab.redelivered[i]))
	}
	return dst
}

// ackMessage is {"id","data"} (data_b64 for a payload that is not UTF-8),
// with "redelivered":true for a message popped before.
func ackMessage(id uint64, payload string, redelivered bool) []byte {
	body := append(make([]byte, 0, len(payload)+48), `{"id":"`...)
	body = strconv.AppendUint(body, id, 10)
	if utf8.ValidString(payload) {
		data, _ := json.Marshal(payload)
		body = append(append(body, `","data":`...), data...)
	} else {
		body = append(body, `","data_b64":"`...)
		body = base64.StdEncoding.AppendEncode(body, []byte(payload))
		body = append(body, '"')
	}
	if redelivered {
		body = append(body, `,"redelivered":true`...)
	}
	return append(body, '}')
}

// takeAck acts on a text message of an ack connection if it is an ack
// (a JSON object with an "ack" member): it reports whether it was one, and
// the 1008 close for a malformed one or one naming an id never sent here.
// Any other message is the client's, answered as on a plain connection.
func (c *conn) takeAck(msg []byte) (bool, error) {
	body := bytes.TrimSpace(msg)
	if !bytes.HasPrefix(body, []byte("{")) || !bytes.Contains(body, []byte(`"ack"`)) {
		return false, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return true, &closeErr{code: ws.StatusPolicyViolation, reason: `malformed ack: want {"ack":"<id>"}`}
	}
	raw, isAck := obj["ack"]
	if !isAck {
		return false, nil // JSON of the client's own, with "ack" elsewhere in it
	}
	var s string
	if json.Unmarshal(raw, &s) != nil || string(raw) == "null" {
		return true, &closeErr{code: ws.StatusPolicyViolation, reason: `malformed ack: the id must be a string`}
	}
	id, err := strconv.ParseUint(s, 10, 64)
	if err == nil {
		err = c.ack.ack(id)
	} else {
		err = errAckUnknown
	}
	if err != nil {
		return true, &closeErr{code: ws.StatusPolicyViolation, reason: err.Error()}
	}
	c.sess.notify() // its consumer may acknowledge in Redis, or pop again
	return true, nil
}

// deferToAckers reports whether another instance holds ack connections of
// the user, which this one (none here) leaves the popping to: reading it
// again when an instance said its ack connections changed (the relay's
// "!ack", ackersChanged) and, while deferring, every heldRound (an
// instance that died says nothing; its entries expire).
func (c *consumer) deferToAckers(ctx context.Context) bool {
	recheck := c.s.ackRecheck.Swap(false)
	if !recheck && (!c.ackElsewhere || time.Since(c.ackCheckedAt) < heldRound) {
		return c.ackElsewhere
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	elsewhere, err := c.h.q.AckElsewhere(actx, c.s.user)
	cancel()
	c.ackCheckedAt = time.Now()
	if err != nil {
		c.h.log.Debug("reading where the ack connections are failed", "user", c.s.user, "err", err)
		return c.ackElsewhere // looked at again in a round
	}
	switch {
	case c.ackElsewhere && !elsewhere:
		c.more, c.left = true, -1 // what the other instance left is for this one
		c.h.log.Debug("no other instance holds ack connections of the user any more: popping here", "user", c.s.user)
	case !c.ackElsewhere && elsewhere:
		c.h.log.Debug("another instance holds ack connections of the user: popping left to it", "user", c.s.user)
	}
	c.ackElsewhere = elsewhere
	return elsewhere
}

// awaitAckers waits a round, or until the user's connections here change,
// one of them acknowledges, or ack connections changed somewhere: while
// another instance pops for the user, or every ack connection here is at
// its window.
func (c *consumer) awaitAckers(ctx context.Context) {
	c.h.pause()
	defer c.h.unpause()
	t := time.NewTimer(heldRound)
	defer t.Stop()
	select {
	case <-c.s.wake:
	case <-t.C:
	case <-ctx.Done():
	}
}

// ackersChanged tells the consumer of user, if online here, that an
// instance's ack connections of the user came or went (the relay's "!ack").
// A parked consumer goes on at once, to look.
func (h *hub) ackersChanged(user string) {
	h.mu.Lock()
	s := h.users[user]
	var pc *consumer
	if s != nil {
		s.ackRecheck.Store(true)
		pc, s.parked = s.parked, nil
	}
	h.mu.Unlock()
	if s != nil {
		s.notify()
	}
	if pc != nil {
		h.resume(pc)
	}
}

// relayedWhileAcking is told of a batch another instance popped for user:
// if user has ack connections here, that instance should not pop, and
// missed the announcement (pub/sub is best effort: it was resubscribing,
// or not yet subscribed when it read where the ack connections are). It
// is announced again, at most once a second per user.
func (h *hub) relayedWhileAcking(user string) {
	h.mu.Lock()
	s := h.users[user]
	announce := false
	if s != nil && time.Since(s.announced) >= time.Second {
		for _, c := range s.conns {
			if c.ack != nil && !c.gone.Load() {
				announce = true
				s.announced = time.Now()
				break
			}
		}
	}
	h.mu.Unlock()
	if !announce {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), detachedTimeout)
		defer cancel()
		if err := h.q.AnnounceAckers(ctx, user); err != nil {
			h.log.Debug("announcing ack connections failed", "user", user, "err", err)
		}
	}()
}
