package redisq

import (
	"cmp"
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
//	{<queue>}:connections   HASH instance → connections of the user on it
//
// An instance writes its entry when the user's connections on it change
// (SetPresence with their number; 0 removes it) and again, for every user
// online on it, with each heartbeat, which pushes the entry's score ttl
// ahead. An instance killed with kill -9 writes nothing more: its entries
// fall ttl behind Redis's clock at the latest, and another instance that
// finds it dead removes them (dropRegistry). So "is user 42 online" is one
// plain read command:
//
//	ZCOUNT {user_42_messages}:presence <now in unix ms> +inf
//
// (> 0: online; the caller's clock stands in for Redis's). A heartbeat
// writes one entry per user online on that instance: its cost grows with
// its own users, not with those of the other instances.
//
// Join and leave events: the same script publishes {"user":"42",
// "event":"online"} on the presence channel when the user's set of live
// entries goes from empty to not, and "offline" when it goes back, once
// per transition whichever instance or tab causes it. Entries found expired
// (their instance died) are removed by the next write to the user's
// presence, which publishes "offline" if they were the last.

// PresenceKey is the sorted set of the instances where user is online.
func (q *Queue) PresenceKey(user string) string { return "{" + q.Key(user) + "}:presence" }

// connectionsKey is the hash of user's connections per instance.
func (q *Queue) connectionsKey(user string) string { return "{" + q.Key(user) + "}:connections" }

// presenceKeep is how long the presence keys outlive the last write that
// extended them, past the entries' lifetime ttl: long enough for a dead
// instance's entries to be still there when another instance removes them
// (and publishes "offline"), and for refreshes to extend them only now and
// then (ExtendEvery); short enough that a Redis no instance uses any more
// sheds them.
func presenceKeep(ttl time.Duration) time.Duration { return max(10*time.Minute, 10*ttl) }

// ExtendEvery is how many of an instance's refreshes pass between two that
// also extend the keys' expiry (RefreshPresence's extend): 5 heartbeats of
// a third of ttl each stay well within presenceKeep.
const ExtendEvery = 5

// setPresence sets ARGV[1]'s entry to ARGV[2] connections (0: removes it),
// vouched for ARGV[3] ms, and publishes transitions on ARGV[4] ("": none)
// for user ARGV[5] (already JSON-quoted). See Presence above.
var setPresence = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = redis.call('ZCARD', KEYS[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #stale > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(stale))
end
local live = before - #stale
local function event(what)
  if ARGV[4] ~= '' then
    redis.call('PUBLISH', ARGV[4], '{"user":' .. ARGV[5] .. ',"event":"' .. what .. '"}')
  end
end
if before > 0 and live == 0 then event('offline') end
local n = tonumber(ARGV[2])
if n > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], n)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[6]))
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[6]))
  if live == 0 then event('online') end
else
  local removed = redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  if removed == 1 and live == 1 then event('offline') end
end
return live`)

// readPresence answers the live entries' connections: one number per live
// instance.
var readPresence = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
if #live == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(live))`)

// PresenceUpdate is one user's connections on this instance.
type PresenceUpdate struct {
	User  string
	Conns int
}

// SetPresence writes this instance's entries for the users in ups (Conns
// 0: the user has no connection here any more), in one pipeline, with
// lifetime ttl, publishing join and leave events on the Config's
// PresenceChannel. It returns the updates that failed, to be written again.
func (q *Queue) SetPresence(ctx context.Context, ups []PresenceUpdate, ttl time.Duration) ([]PresenceUpdate, error) {
	return q.setPresenceOf(ctx, q.instance, ups, ttl)
}

func (q *Queue) setPresenceOf(ctx context.Context, instance string, ups []PresenceUpdate, ttl time.Duration) ([]PresenceUpdate, error) {
	if len(ups) == 0 {
		return nil, nil
	}
	life := strconv.FormatInt(ttl.Milliseconds(), 10)
	keep := strconv.FormatInt(presenceKeep(ttl).Milliseconds(), 10)
	failed := make([]bool, len(ups))
	err := q.pipelineScript(ctx, setPresence, len(ups), func(i int) ([]string, []any) {
		id, _ := json.Marshal(ups[i].User)
		return []string{q.PresenceKey(ups[i].User), q.connectionsKey(ups[i].User)},
			[]any{instance, ups[i].Conns, life, q.presenceChannel, string(id), keep}
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
// fifth of that); with extend, it also extends the keys' expiry. Entries
// that are not there (Redis lost them, or another instance took this one
// for dead) are set as SetPresence sets them, which publishes what that
// changes. The score is Redis's time as this process reckons it (Clock).
// It returns the updates that failed.
func (q *Queue) RefreshPresence(ctx context.Context, ups []PresenceUpdate, ttl time.Duration, extend bool) ([]PresenceUpdate, error) {
	if len(ups) == 0 {
		return nil, nil
	}
	now, err := q.clock.now(ctx, q.cmd)
	if err != nil {
		return ups, err
	}
	until := float64(now.Add(ttl).UnixMilli())
	life := presenceKeep(ttl) + ttl
	added := make([]*redis.IntCmd, len(ups))
	_, err = q.cmd.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, u := range ups {
			key := q.PresenceKey(u.User)
			added[i] = p.ZAddArgs(ctx, key, redis.ZAddArgs{XX: true, Ch: true, Members: []redis.Z{{Score: until, Member: q.instance}}})
			if extend {
				p.PExpire(ctx, key, life)
				p.PExpire(ctx, q.connectionsKey(u.User), life)
			}
		}
		return nil
	})
	var missing, failed []PresenceUpdate
	for i, c := range added {
		switch n, cerr := c.Result(); {
		case cerr != nil:
			failed = append(failed, ups[i])
		case n == 0:
			missing = append(missing, ups[i])
		}
	}
	again, serr := q.SetPresence(ctx, missing, ttl)
	return append(failed, again...), cmp.Or(err, serr)
}

// pipelineScript runs script n times in one pipeline, with the keys and
// arguments call(i) names, and hands each reply to reply. A pipeline cannot
// fall back on NOSCRIPT as a single call does: when Redis lacks the script
// (a restart, a new cluster node) it is loaded and the pipeline sent again.
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
	if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
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

// Presence is a user's connections over all instances.
type Presence struct {
	Online      bool
	Connections int
}

// ReadPresence reads the presence of users, in one pipeline.
func (q *Queue) ReadPresence(ctx context.Context, users []string) ([]Presence, error) {
	out := make([]Presence, len(users))
	err := q.pipelineScript(ctx, readPresence, len(users), func(i int) ([]string, []any) {
		return []string{q.PresenceKey(users[i]), q.connectionsKey(users[i])}, nil
	}, func(i int, c *redis.Cmd) {
		vals, _ := c.Slice()
		for _, v := range vals {
			s, _ := v.(string)
			n, _ := strconv.Atoi(s)
			out[i].Connections += n
		}
		out[i].Online = len(vals) > 0
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// redisClock reckons Redis's time from this process's clock and an offset
// measured with TIME, again once it is older than clockCheck: presence
// scores are Redis's time, whichever process writes them.
type redisClock struct {
	mu      sync.Mutex
	offset  time.Duration // Redis's time minus this process's
	checked time.Time     // when offset was measured; zero: never
}

// clockCheck is how long a measured offset is trusted.
const clockCheck = time.Minute

func (c *redisClock) now(ctx context.Context, cmd redis.UniversalClient) (time.Time, error) {
	c.mu.Lock()
	offset, checked := c.offset, c.checked
	c.mu.Unlock()
	if !checked.IsZero() && time.Since(checked) < clockCheck {
		return time.Now().Add(offset), nil
	}
	sent := time.Now()
	t, err := cmd.Time(ctx).Result()
	if err != nil {
		return time.Time{}, err
	}
	got := time.Now()
	offset = t.Sub(sent.Add(got.Sub(sent) / 2)) // the reply was made halfway, on average
	c.mu.Lock()
	c.offset, c.checked = offset, got
	c.mu.Unlock()
	return got.Add(offset), nil
}
