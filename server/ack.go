package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"strconv"
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
	if s.ackConns.Load() == 0 {
		return -1 // the common case: no lock taken per pop
	}
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
	n := len(msgs)
	ab := &ackBatch{ids: make([]uint64, n), payloads: make([]string, n), redelivered: make([]bool, n)}
	raw := false
	for i, m := range msgs {
		id, payload, ok := redisq.ParseEnvelope(m)
		ab.ids[i], ab.payloads[i], ab.redelivered[i] = id, payload, ok
		raw = raw || !ok
	}
	if !raw {
		return ab, nil
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	defer cancel()
	ids, err := c.h.q.Wrap(actx, c.s.user, n, c.acks().Held+n) // what it holds, and this batch
	if err != nil {
		return nil, err
	}
	copy(ab.ids, ids)
	return ab, nil
}

// ackBatch is what an ack connection needs of a batch: each message's
// id, payload (the envelope's), and whether it was popped before.
type ackBatch struct {
	ids         []uint64
	payloads    []string
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

// appendAckFrames appends one {"id","data"} text frame per message of ab.
func appendAckFrames(dst []byte, ab *ackBatch) []byte {
	for i, p := range ab.payloads {
		dst = appendFrame(dst, ws.OpText, ackMessage(ab.ids[i], p, ab.redelivered[i]))
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
	if err != nil {
		return true, &closeErr{code: ws.StatusPolicyViolation, reason: `malformed ack: the id must be a decimal string`}
	}
	if err := c.ack.ack(id); err != nil {
		return true, &closeErr{code: ws.StatusPolicyViolation, reason: err.Error()}
	}
	c.sess.notify() // its consumer may acknowledge in Redis, or pop again
	return true, nil
}
