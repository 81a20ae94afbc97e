package redisq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Acknowledged delivery (the server's ?ack=1 connections) needs an id that
// stays with a message from its first pop until a client acknowledges it,
// across requeues, instances and crashes; producers keep pushing raw
// payloads. The id therefore lives in the message itself once it was
// popped for such a connection: Wrap rewrites the raw messages of a batch
// just popped into the processing list as envelopes,
//
//	EnvelopeMarker + "<id>:" + payload
//
// with ids from the user's counter "{Q}:ackseq". An envelope goes wherever
// the message goes (requeued to the queue, taken over by another instance,
// relayed, dead-lettered) and keeps its id; a consumer that pops an
// envelope knows the message was popped before (a redelivery), and a plain
// connection gets the payload alone (ParseEnvelope). A raw payload that
// begins with the marker is taken for an envelope: the marker's first
// byte, 0xFF, never occurs in UTF-8, so only a binary payload can.
//
// Ids are decimal, unique per user and increasing in the order of first
// pops: the counter starts at Redis's clock in microseconds when it does
// not exist, and expires after ackSeqLife without use, so that a user who
// stopped using acknowledged delivery leaves no key behind, and a counter
// that comes back starts above every id it gave before.
const EnvelopeMarker = "\xff\x00redpush-ack:"

// ackSeqLife is how long an unused id counter lives.
const ackSeqLife = 30 * 24 * time.Hour

// ParseEnvelope splits an envelope into its id and payload; ok is false for
// a raw message.
func ParseEnvelope(m string) (id uint64, payload string, ok bool) {
	rest, found := strings.CutPrefix(m, EnvelopeMarker)
	if !found {
		return 0, m, false
	}
	digits, payload, found := strings.Cut(rest, ":")
	if !found || len(digits) > maxIDDigits {
		return 0, m, false
	}
	id, err := strconv.ParseUint(digits, 10, 64) // digits only: no sign, no underscore
	if err != nil || id == 0 {
		return 0, m, false
	}
	return id, payload, true
}

// maxIDDigits bounds an envelope's id: 19 digits always fit in a uint64.
// The wrap script applies the same rule: an element with the marker that
// breaks it is a raw payload (and gets wrapped), not an envelope.
const maxIDDigits = 19

// Unwrap is the payload of m, whether it is an envelope or raw.
func Unwrap(m string) string {
	_, p, _ := ParseEnvelope(m)
	return p
}

// wrap gives an id to each raw message among the newest ARGV[1] of the
// processing list KEYS[1] (a batch just popped: newest at the left) and
// returns the ids of all of them, oldest first (an envelope is the marker,
// 1 to 19 digits, not all zero, and ":", as ParseEnvelope reads it;
// anything else is raw, the marker or not). It refuses (DIVERGED,
// changing nothing) when the list does not hold ARGV[2] messages. An
// element already an envelope keeps its id: run twice (go-redis repeats a
// call whose reply was lost), the script finds its own envelopes and
// returns the same ids. The counter KEYS[2] starts at Redis's clock in
// microseconds (ARGV[4]: its life in ms).
var wrap = redis.NewScript(`
local k = tonumber(ARGV[1])
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[2]) then
  return redis.error_reply('DIVERGED the processing list does not hold what the consumer does')
end
local marker = ARGV[3]
local batch = redis.call('LRANGE', KEYS[1], 0, k - 1)
local function idOf(m)
  if string.sub(m, 1, #marker) ~= marker then return nil end
  local d = string.match(m, '^(%d+):', #marker + 1)
  if not d or #d > 19 or tonumber(d) == 0 then return nil end
  return d
end
local raw = 0
for i = 1, #batch do
  if not idOf(batch[i]) then raw = raw + 1 end
end
local next = 0
if raw > 0 then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', KEYS[2], tostring(t[1]) .. string.format('%06d', tonumber(t[2])))
  end
  next = redis.call('INCRBY', KEYS[2], raw) - raw + 1
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
local ids = {}
for i = #batch, 1, -1 do
  local m = batch[i]
  local d = idOf(m)
  if d then
    ids[#ids + 1] = d
  else
    local id = string.format('%d', next)
    next = next + 1
    redis.call('LSET', KEYS[1], i - 1, marker .. id .. ':' .. m)
    ids[#ids + 1] = id
  end
end
return ids`)

// Wrap gives the k messages just popped for user (the newest of the
// processing list, which holds held messages in all) their ids, and
// returns the ids oldest first. A message popped as an envelope keeps its
// own. It fails with ErrDiverged when the processing list does not hold
// held messages.
func (q *Queue) Wrap(ctx context.Context, user string, k, held int) ([]uint64, error) {
	ctx, cancel, err := q.leased(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	keys := []string{q.ProcessingKey(user), q.ackSeqKey(user)}
	strs, err := wrap.Run(ctx, q.cmd, keys, k, held, EnvelopeMarker, ackSeqLife.Milliseconds()).StringSlice()
	var rerr redis.Error
	if errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "DIVERGED") {
		return nil, fmt.Errorf("%w: %s", ErrDiverged, user)
	}
	if err != nil {
		return nil, err
	}
	if len(strs) != k {
		return nil, fmt.Errorf("%w: %s: %d of %d messages to wrap", ErrDiverged, user, len(strs), k)
	}
	ids := make([]uint64, k)
	for i, s := range strs {
		if ids[i], err = strconv.ParseUint(s, 10, 64); err != nil || ids[i] == 0 {
			return nil, fmt.Errorf("%w: %s: bad id %q", ErrDiverged, user, s)
		}
	}
	return ids, nil
}

// ackSeqKey is the id counter of user's envelopes, e.g.
// "{user_42_messages}:ackseq".
func (q *Queue) ackSeqKey(user string) string { return "{" + q.Key(user) + "}:ackseq" }
