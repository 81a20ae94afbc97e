package redisq

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Presence: which users are online, on any instance. Per user, in the
// queue's cluster slot:
//
//	{<queue>}:presence      ZSET instance → unix ms (Redis's clock) until
//	                        which that instance vouches that the user has a
//	                        connection on it
//	{<queue>}:connections   HASH instance → connections of the user on it,
//	                        and "<instance>/ack" → how many of them asked
//	                        for acknowledged delivery (none: no field)
//
// An instance writes its entry when the user's connections on it change
// (SetPresence with their number; 0 removes it) and again, for every user
// online on it, with each heartbeat (RefreshPresence), which pushes the
// entry's score ttl ahead. An instance killed with kill -9 writes nothing
// more: its entries fall behind Redis's clock within ttl, and another
// instance that finds it dead removes them (dropRegistry). So "is user 42
// online" is one plain read command:
//
//	ZCOUNT {user_42_messages}:presence <now in unix ms> +inf
//
// (> 0: online; the caller's clock stands in for Redis's). A heartbeat
// writes one entry per user online on that instance: its cost grows with
// its own users, not with those of the other instances.
//
// Join and leave events: the script that changes an entry publishes
// {"user":"42","event":"online"} on the presence channel when the user's
// set of live entries goes from empty to not, and "offline" when it goes
// back, once per transition whichever instance or tab causes it. It
// publishes before it writes, so that a publication Redis refuses (an ACL
// without the channel) changes nothing and the write is tried again, not
// done without its event. Entries found expired (their instance died, or
// could not reach Redis for ttl) are removed by the next such script for
// the user, which publishes "offline" if they were the last. A refresh
// that finds its entry expired but still there revives it without an
// event: ZCOUNT said offline meanwhile, subscribers heard nothing.
//
// Every write is fenced by the instance's claim (leased): a process that
// lost its instance id to another writes no presence in its name.

// PresenceKey is the sorted set of the instances where user is online.
func (q *Queue) PresenceKey(user string) string { return "{" + q.Key(user) + "}:presence" }

// connectionsKey is the hash of user's connections per instance.
func (q *Queue) connectionsKey(user string) string { return "{" + q.Key(user) + "}:connections" }

// presenceKeep is how long the presence keys outlive the last write that
// extended them, past the entries' lifetime ttl: long enough for a dead
// instance's entries to be still there when another instance removes them
// (and publishes "offline"), and for refreshes to extend them only now and
// then (ExtendEvery); short enough that a Redis no instance uses any more
// sheds them. The script never shortens them; a refresh may
// (RefreshPresence).
func presenceKeep(ttl time.Duration) time.Duration { return max(10*time.Minute, 10*ttl) }

// ExtendEvery is how many of an instance's refreshes pass between two that
// also extend the keys' expiry (RefreshPresence's extend): 5 heartbeats of
// a third of ttl each stay well within presenceKeep.
const ExtendEvery = 5

// setPresence sets ARGV[1]'s entry to ARGV[2] connections (0: removes it),
// vouched for ARGV[3] ms, and publishes transitions on ARGV[4] ("": none)
// for user ARGV[5] (already JSON-quoted); the keys live ARGV[6] ms past
// the entry. ARGV[7], if not "", is the forget mode for another
// instance's entries: the entry is removed only if it vouches for less
// than ARGV[7] ms more (an instance found dead that restarted meanwhile
// writes entries a full ttl ahead, which stay). ARGV[8] of the
// connections are ack connections: when that goes from none to some or
// back, ARGV[11] (AckersChanged's publication) is published on the user's
// relay channel ARGV[9] with ARGV[10] (PUBLISH or SPUBLISH), so that the
// other instances serving the user look again whether they may pop
// (AckElsewhere). See Presence above.
var setPresence = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[2])
local before = redis.call('ZCARD', KEYS[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
local live = before - #stale
local own = redis.call('ZSCORE', KEYS[1], ARGV[1])
local ownLive = own and tonumber(own) > now
if n == 0 and own and ARGV[7] ~= '' and tonumber(own) >= now + tonumber(ARGV[7]) then
  return live
end
local ackField = ARGV[1] .. '/ack'
local acks = tonumber(ARGV[8])
if n == 0 then acks = 0 end
if (acks > 0) ~= (redis.call('HEXISTS', KEYS[2], ackField) == 1) then
  redis.call(ARGV[10], ARGV[9], ARGV[11])
end
local after = live
if n > 0 and not ownLive then after = after + 1 end
if n == 0 and ownLive then after = after - 1 end
if ARGV[4] ~= '' then
  local function event(what)
    redis.call('PUBLISH', ARGV[4], '{"user":' .. ARGV[5] .. ',"event":"' .. what .. '"}')
  end
  if before > 0 and live == 0 then event('offline') end
  if live == 0 and after > 0 then event('online') end
  if live > 0 and after == 0 then event('offline') end
end
if #stale > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(stale))
  for _, inst in ipairs(stale) do redis.call('HDEL', KEYS[2], inst .. '/ack') end
end
if n > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], n)
  if acks > 0 then
    redis.call('HSET', KEYS[2], ackField, acks)
  else
    redis.call('HDEL', KEYS[2], ackField)
  end
  local life = tonumber(ARGV[3]) + tonumber(ARGV[6])
  for _, k in ipairs(KEYS) do
    if redis.call('PTTL', k) < life then redis.call('PEXPIRE', k, life) end
  end
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1], ackField)
end
return after`)

// PresenceUpdate is one user's connections on this instance.
type PresenceUpdate struct {
	User  string
	Conns int
	Acks  int // of Conns, the ones with acknowledged delivery
}

// SetPresence writes this instance's entries for the users in ups (Conns
// 0: the user has no connection here any more), in one pipeline, with
// lifetime ttl, publishing join and leave events on the Config's
// PresenceChannel. It returns the updates that failed, to be written again.
func (q *Queue) SetPresence(ctx context.Context, ups []PresenceUpdate, ttl time.Duration) ([]PresenceUpdate, error) {
	return q.setPresenceOf(ctx, q.instance, ups, ttl, 0)
}

// setPresenceOf is SetPresence for instance's entries; forget > 0 is the
// forget mode of setPresence (ARGV[7]).
func (q *Queue) setPresenceOf(ctx context.Context, instance string, ups []PresenceUpdate, ttl, forget time.Duration) ([]PresenceUpdate, error) {
	if len(ups) == 0 {
		return nil, nil
	}
	ctx, cancel, err := q.leased(ctx)
	if err != nil {
		return ups, err
	}
	defer cancel()
	life := strconv.FormatInt(ttl.Milliseconds(), 10)
	keep := strconv.FormatInt(presenceKeep(ttl).Milliseconds(), 10)
	margin := ""
	if forget > 0 {
		margin = strconv.FormatInt(forget.Milliseconds(), 10)
	}
	failed := make([]bool, len(ups))
	err = q.pipelineScript(ctx, setPresence, len(ups), func(i int) ([]string, []any) {
		id, _ := json.Marshal(ups[i].User)
		return []string{q.PresenceKey(ups[i].User), q.connectionsKey(ups[i].User)},
			[]any{instance, ups[i].Conns, life, q.presenceChannel, string(id), keep, margin,
				ups[i].Acks, q.RelayChannel(ups[i].User), q.publishCommand(), ackersChangedRelay}
	}, func(i int, c *redis.Cmd) {
		failed[i] = c.Err() != nil
	})
	if err == nil {
		return nil, nil
	}
	var again []PresenceUpdate
	for i, f := range failed {
		if f {
			again = append(again, ups[i])
		}
	}
	return again, err
}

// RefreshPresence pushes this instance's entries for the users in ups
// (with their connections here, all > 0) ttl ahead, in one pipeline of
// plain commands (a heartbeat writes every online user's entry: a script
// each cost 14 µs of Redis per user at 100,000 users, ZADD XX about a
// third of that); with extend, it also extends the keys' expiry (plain
// PEXPIRE, which Redis 6.2 has: instances that share a Redis should share
// -instance-ttl, or one with a short one may shorten the keys of a user
// that one with a long one extends seldom). Entries that are not there (Redis
// lost them, or another instance took this one for dead) are returned as
// missing, for the caller to set with SetPresence from the connections it
// has then. The score is Redis's time as this process reckons it
// (redisClock). failed are the updates whose write failed.
func (q *Queue) RefreshPresence(ctx context.Context, ups []PresenceUpdate, ttl time.Duration, extend bool) (missing, failed []PresenceUpdate, err error) {
	if len(ups) == 0 {
		return nil, nil, nil
	}
	ctx, cancel, err := q.leased(ctx)
	if err != nil {
		return nil, ups, err
	}
	defer cancel()
	now, err := q.clock.now(ctx, q.cmd)
	if err != nil {
		return nil, ups, err
	}
	until := float64(now.Add(ttl).UnixMilli())
	life := presenceKeep(ttl) + ttl
	added := make([]*redis.IntCmd, len(ups))
	extended := make([][2]*redis.BoolCmd, len(ups))
	_, err = q.cmd.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, u := range ups {
			key := q.PresenceKey(u.User)
			added[i] = p.ZAddArgs(ctx, key, redis.ZAddArgs{XX: true, Ch: true, Members: []redis.Z{{Score: until, Member: q.instance}}})
			if extend {
				extended[i] = [2]*redis.BoolCmd{p.PExpire(ctx, key, life), p.PExpire(ctx, q.connectionsKey(u.User), life)}
			}
		}
		return nil
	})
	for i, c := range added {
		ok := c.Err() == nil
		for _, e := range extended[i] {
			ok = ok && (e == nil || e.Err() == nil)
		}
		switch {
		case !ok:
			failed = append(failed, ups[i])
		case c.Val() == 0:
			missing = append(missing, ups[i])
		}
	}
	return missing, failed, err
}

// pipelineScript runs script n times in one pipeline, with the keys and
// arguments call(i) names, and hands each reply to reply. A pipeline cannot
// fall back on NOSCRIPT as a single call does: when Redis lacks the script
// (a restart, a new cluster node) it is loaded and the pipeline sent again
// (the scripts are idempotent: a second run finds what the first did).
func (q *Queue) pipelineScript(ctx context.Context, script *redis.Script, n int,
	call func(i int) ([]string, []any), reply func(i int, c *redis.Cmd)) error {
	if n == 0 {
		return nil
	}
	cmds := make([]*redis.Cmd, n)
	send := func() error {
		_, err := q.cmd.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := range n {
				keys, args := call(i)
				cmds[i] = script.EvalSha(ctx, p, keys, args...)
			}
			return nil
		})
		return err
	}
	err := send()
	if err != nil && noScript(cmds) {
		if err = script.Load(ctx, q.cmd).Err(); err == nil {
			err = send()
		}
	}
	for i, c := range cmds {
		if c != nil {
			reply(i, c)
		}
	}
	return err
}

// noScript reports whether a command of cmds failed with NOSCRIPT.
func noScript(cmds []*redis.Cmd) bool {
	for _, c := range cmds {
		if c != nil && c.Err() != nil && strings.HasPrefix(c.Err().Error(), "NOSCRIPT") {
			return true
		}
	}
	return false
}

// Presence is a user's connections over all instances.
type Presence struct {
	Online      bool
	Connections int
}

// ReadPresence reads the presence of users, in one pipeline of plain read
// commands (an ACL needs @read and TIME; they go to the master like the
// rest of this client's commands): the live
// entries (scored after Redis's time now) and the connections they count.
func (q *Queue) ReadPresence(ctx context.Context, users []string) ([]Presence, error) {
	out := make([]Presence, len(users))
	if len(users) == 0 {
		return out, nil
	}
	now, err := q.clock.now(ctx, q.cmd)
	if err != nil {
		return nil, err
	}
	reads := make([]presenceRead, len(users))
	_, err = q.cmd.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, u := range users {
			reads[i] = q.readPresence(ctx, p, u, now)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, r := range reads {
		out[i] = r.presence()
	}
	return out, nil
}

// presenceRead is one user's presence as a pipeline read it: the live
// entries and the connections hash.
type presenceRead struct {
	live  *redis.StringSliceCmd
	conns *redis.MapStringStringCmd
}

// readPresence queues the reads of user's presence on p: the entries that
// vouch past now (Redis's time), and the connections hash.
func (q *Queue) readPresence(ctx context.Context, p redis.Pipeliner, user string, now time.Time) presenceRead {
	after := "(" + strconv.FormatInt(now.UnixMilli(), 10)
	return presenceRead{
		live:  p.ZRangeByScore(ctx, q.PresenceKey(user), &redis.ZRangeBy{Min: after, Max: "+inf"}),
		conns: p.HGetAll(ctx, q.connectionsKey(user)),
	}
}

// presence counts the connections of the live entries.
func (r presenceRead) presence() Presence {
	var out Presence
	for _, inst := range r.live.Val() {
		n, _ := strconv.Atoi(r.conns.Val()[inst])
		out.Connections += n
	}
	out.Online = len(r.live.Val()) > 0
	return out
}

// acksElsewhere reports whether a live entry of an instance other than
// self says it holds ack connections (its "<instance>/ack" field).
func (r presenceRead) acksElsewhere(self string) bool {
	for _, inst := range r.live.Val() {
		if n, _ := strconv.Atoi(r.conns.Val()[inst+"/ack"]); n > 0 && inst != self {
			return true
		}
	}
	return false
}

// redisClock reckons Redis's time from a TIME reading and the time passed
// since on this process's monotonic clock, reading TIME again once the
// reading is older than clockCheck: presence scores are Redis's time,
// whichever process writes them. On a Cluster TIME goes to one master;
// their clocks are assumed to agree (NTP) as any two hosts' do.
type redisClock struct {
	mu         sync.Mutex
	redisAt    time.Time // Redis's time at the reading
	measuredAt time.Time // this process's time then (with its monotonic reading)
}

// clockCheck is how long a TIME reading is used.
const clockCheck = time.Minute

func (c *redisClock) now(ctx context.Context, cmd redis.UniversalClient) (time.Time, error) {
	c.mu.Lock()
	redisAt, measuredAt := c.redisAt, c.measuredAt
	c.mu.Unlock()
	if !measuredAt.IsZero() && time.Since(measuredAt) < clockCheck {
		return redisAt.Add(time.Since(measuredAt)), nil
	}
	sent := time.Now()
	t, err := cmd.Time(ctx).Result()
	if err != nil {
		return time.Time{}, err
	}
	got := time.Now()
	mid := sent.Add(got.Sub(sent) / 2) // the reply was made halfway, on average
	c.mu.Lock()
	c.redisAt, c.measuredAt = t, mid
	c.mu.Unlock()
	return t.Add(time.Since(mid)), nil
}

// AckElsewhere reports whether another instance vouches that it holds ack
// connections of user (the "<instance>/ack" fields of live entries): then
// only instances holding one pop the user's queue, and the others write
// the relayed copies to their plain connections.
func (q *Queue) AckElsewhere(ctx context.Context, user string) (bool, error) {
	now, err := q.clock.now(ctx, q.cmd)
	if err != nil {
		return false, err
	}
	var r presenceRead
	_, err = q.cmd.Pipelined(ctx, func(p redis.Pipeliner) error {
		r = q.readPresence(ctx, p, user, now)
		return nil
	})
	if err != nil {
		return false, err
	}
	return r.acksElsewhere(q.instance), nil
}
