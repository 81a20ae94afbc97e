package redisq

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Config configures a Queue. The zero value is usable except for Instance.
type Config struct {
	// KeyPattern maps a user id to the queue key; it must contain one %s.
	// Default "user_%s_messages", the key of the PHP original.
	KeyPattern string
	// Instance names this process; its processing lists carry it so that a
	// restarted instance finds what it left behind. Required.
	Instance string
	// Batch is the most messages one Pop returns. Default 128.
	Batch int
	// Round is how long one Pop blocks on an empty queue when the consumer
	// cannot be woken (Blocker.Wake): a blocked BLMOVE cannot be cancelled
	// through its context (go-redis waits for the reply), so the round bounds
	// how late a consumer notices that its user left or that the server is
	// shutting down. Default 1 s.
	Round time.Duration
	// WakeRound is the round of a Blocker that Wake can interrupt; it only
	// bounds how long a silently dead Redis connection goes unnoticed.
	// Default 10 s.
	WakeRound time.Duration
	// Logger gets the one line that says consumers cannot be woken (the
	// server has no CLIENT ID). Default slog.Default().
	Logger *slog.Logger
	// PresenceChannel is the pub/sub channel of presence events (SetPresence);
	// "": none are published.
	PresenceChannel string
	// PresenceTTL is how long a presence entry vouches (the instances'
	// -instance-ttl): a dead instance's entries are removed only if they
	// vouch for less than a third of it more. Default 30 s.
	PresenceTTL time.Duration
}

// Queue gives access to the per-user queues and their processing lists.
type Queue struct {
	blocking        redis.UniversalClient // BLMOVE only; one connection per blocked consumer
	cmd             redis.UniversalClient // everything that does not block
	prefix          string                // KeyPattern before %s
	suffix          string                // KeyPattern after %s
	procTail        string                // "}:processing:<instance>"
	instance        string
	batch           int
	round           time.Duration
	wakeRound       time.Duration
	noWake          atomic.Bool // the server has no CLIENT ID / CLIENT UNBLOCK
	noWakeLog       sync.Once
	log             *slog.Logger
	token           atomic.Uint64         // the last ackPop token; starts at random
	sharded         atomic.Bool           // relays use SPUBLISH (SubscribeRelays)
	presenceChannel string                // Config.PresenceChannel
	presenceTTL     time.Duration         // Config.PresenceTTL
	clock           redisClock            // Redis's time, for presence scores
	claim           atomic.Pointer[Claim] // set by Claim: guards the processing lists
	refusedID       atomic.Int64          // unix nanos until which CLIENT ID is not asked again (refused)
	refusedLog      atomic.Int64          // unix nanos of the last "CLIENT ID refused" line
}

// guard fails with ErrClaimLapsed when this process claimed its instance
// id and cannot be sure it still holds it: a process that stalled (a
// pause, a partition) past ClaimTTL may have been replaced by another with
// the same id, whose processing lists are the same keys.
func (q *Queue) guard() error {
	if c := q.claim.Load(); c != nil && !c.Held() {
		return ErrClaimLapsed
	}
	return nil
}

// leaseMargin is how long before the claim may expire a guarded command
// must be done: the time it takes to reach Redis.
const leaseMargin = 200 * time.Millisecond

// leased is guard, and a context that ends before another process may take
// the id: a command sent with it cannot reach Redis after that (go-redis
// does not retry past a deadline), however long it waited for a pooled
// connection or a reply.
func (q *Queue) leased(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if err := q.guard(); err != nil {
		return nil, nil, err
	}
	c := q.claim.Load()
	if c == nil {
		return ctx, func() {}, nil
	}
	ctx, cancel := context.WithDeadline(ctx, c.expires().Add(-leaseMargin))
	return ctx, cancel, nil
}

// ackPop acknowledges the ARGV[5] oldest messages of the processing list
// KEYS[2] (delivered; -1: all of them) and moves up to ARGV[1] messages
// from the right of the queue KEYS[1] to the left of the processing list,
// returning them oldest first. The processing list holds the newest message
// at its left, so the oldest, acknowledged first, are at its right: RPOP
// with a count. LMOVE with a count does not exist before Redis 8, hence the
// script: one round trip per batch, ack included.
//
// Acknowledging by count trusts that the processing list holds exactly
// what the consumer holds; if it does not (another instance took this one
// for dead and returned its lists, a failover to a replica that lagged),
// the oldest messages are not the ones confirmed, and acknowledging them
// would lose others. So the consumer says how many messages it holds
// (ARGV[6]; -1: not checked) and the script refuses with DIVERGED, changing
// nothing, when the list holds another number: the consumer then requeues
// everything (duplicates, not losses).
//
// Before dropping what it acknowledges it publishes it on the relay channel
// ARGV[3] (a channel is not a key, so it is not in KEYS), so that other
// instances holding connections of the same user write it to them too:
// "<origin instance>\n" then each message, oldest first, as
// "<length>:<bytes>" (binary safe), with ARGV[8]: PUBLISH, or SPUBLISH on a
// Cluster that has it (Relays). It publishes only when the set KEYS[4]
// of the instances serving the user (registry.go) names another instance
// than ARGV[2]: with the user online here alone, which is the common case,
// a publication would reach only this instance's own subscription, to be
// read and dropped.
//
// Run twice, the script would ack messages the first run popped and nobody
// delivered, and go-redis does run a command twice when the connection
// breaks between the request and the reply (a cluster client retries such
// errors whatever MaxRetries says). So each call carries a token ARGV[4]
// that the script stores, with how many messages it popped, in the fence
// key KEYS[3] for ARGV[7] ms (FenceLife); a call whose token is already there is such a
// retry, and gets the messages the first run popped, still the newest in
// the processing list, instead: it acknowledges nothing more.
var ackPop = redis.NewScript(ackPopSource)

const ackPopSource = `
local out = {}
local fence = redis.call('GET', KEYS[3])
if fence then
  local token, popped = string.match(fence, '^(%d+):(%d+)$')
  if token == ARGV[4] then
    if popped ~= '0' then
      local newest = redis.call('LRANGE', KEYS[2], 0, tonumber(popped) - 1)
      for i = #newest, 1, -1 do out[#out + 1] = newest[i] end
    end
    return out
  end
end
local held = tonumber(ARGV[6])
if held >= 0 and redis.call('LLEN', KEYS[2]) ~= held then
  return redis.error_reply('DIVERGED the processing list does not hold what the consumer does')
end
local acked = tonumber(ARGV[5])
if acked < 0 then acked = redis.call('LLEN', KEYS[2]) end
if acked > 0 then
  local held = redis.call('RPOP', KEYS[2], acked)
  if held then
    local parts = {ARGV[2], '\n'}
    for i = 1, #held do
      parts[#parts + 1] = #held[i] .. ':' .. held[i]
    end
    if redis.call('SCARD', KEYS[4]) > redis.call('SISMEMBER', KEYS[4], ARGV[2]) then
      redis.call(ARGV[8], ARGV[3], table.concat(parts))
    end
  end
end
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[i] = v
end
if acked > 0 or #out > 0 then
  redis.call('SET', KEYS[3], ARGV[4] .. ':' .. #out, 'PX', ARGV[7])
end
return out`

// requeueAll moves every message of the processing list KEYS[1] back to the
// right end of the queue KEYS[2]. The processing list holds the newest message
// at its left, so taking from the left and pushing to the right leaves the
// oldest message rightmost, where the consumer reads next: order is kept.
var requeueAll = redis.NewScript(`
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end
return n`)

// New returns a Queue over the two clients: blocking for BLMOVE, cmd for the
// rest. Both may be the same client in tests.
func New(blocking, cmd redis.UniversalClient, cfg Config) (*Queue, error) {
	if cfg.KeyPattern == "" {
		cfg.KeyPattern = "user_%s_messages"
	}
	if err := CheckKeyPattern(cfg.KeyPattern); err != nil {
		return nil, err
	}
	prefix, suffix, _ := strings.Cut(cfg.KeyPattern, "%s")
	if !ValidID(cfg.Instance) {
		return nil, fmt.Errorf("%w: %q", ErrBadInstance, cfg.Instance)
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 128
	}
	if cfg.Round <= 0 {
		cfg.Round = time.Second
	}
	if cfg.WakeRound <= 0 {
		cfg.WakeRound = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	q := &Queue{
		blocking: blocking, cmd: cmd,
		prefix: prefix, suffix: suffix,
		procTail: "}:processing:" + cfg.Instance,
		instance: cfg.Instance,
		batch:    cfg.Batch, round: cfg.Round, wakeRound: cfg.WakeRound,
		log: cfg.Logger, presenceChannel: cfg.PresenceChannel, presenceTTL: cmp.Or(cfg.PresenceTTL, 30*time.Second),
	}
	// Random, so that a restart of the same instance does not reuse the
	// token of a call made just before it died.
	q.token.Store(rand.Uint64())
	return q, nil
}

// CheckKeyPattern reports whether pattern can name queues: exactly one %s
// (the user id) and no braces, which would change the Cluster hash tag the
// processing lists rely on.
func CheckKeyPattern(pattern string) error {
	_, suffix, ok := strings.Cut(pattern, "%s")
	if !ok || strings.Contains(suffix, "%s") || strings.ContainsAny(pattern, "{}") {
		return fmt.Errorf("%w: %q", ErrBadPattern, pattern)
	}
	return nil
}

// Key returns the queue key of user, e.g. "user_42_messages".
func (q *Queue) Key(user string) string { return q.prefix + user + q.suffix }

// Backlog is how many messages wait in the queues of users (Lengths,
// each pipeline within a second); an error when any could not be read.
func (q *Queue) Backlog(ctx context.Context, users []string) (int64, error) {
	lens, err := q.Lengths(ctx, users, time.Second)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, l := range lens {
		n += l
	}
	return n, nil
}

// ProcessingKey returns the processing list of user on this instance,
// e.g. "{user_42_messages}:processing:host-9502".
func (q *Queue) ProcessingKey(user string) string { return "{" + q.Key(user) + q.procTail }

// blockPop blocks for one round until a message arrives in the queue of user
// and moves it into the processing list. It returns none when the round
// ended (or a Blocker was woken).
func (q *Queue) blockPop(ctx context.Context, bc redis.Cmdable, round time.Duration, user string) ([]string, error) {
	if c := q.claim.Load(); c != nil {
		// A BLMOVE blocked in Redis moves a message into the processing
		// list whenever one comes, even if this process stalled
		// meanwhile: it must time out before another process may take
		// the id and its lists. The round shrinks to fit.
		// (BLMOVE takes whole seconds here: go-redis sends them so.)
		round = min(round, time.Until(c.expires().Add(-leaseMargin)).Truncate(time.Second))
		if round < time.Second {
			return nil, ErrClaimLapsed
		}
	}
	first, err := bc.BLMove(ctx, q.Key(user), q.ProcessingKey(user), "RIGHT", "LEFT", round).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return []string{first}, nil
}

// AckPop acknowledges everything in the processing list of user (delivered;
// nothing after a Requeue) and moves the next batch of up to Batch
// messages into it, oldest first, without blocking. If it fails, the caller
// cannot know whether the ack happened: it must Requeue, which may deliver
// the acknowledged messages twice but never loses them.
func (q *Queue) AckPop(ctx context.Context, user string) ([]string, error) {
	return q.AckPopToken(ctx, user, Acks{Oldest: AckAll, Held: Unchecked}, q.batch, q.NewToken())
}

// Acks says what a pop acknowledges before it pops.
type Acks struct {
	// Oldest is how many of the oldest messages of the processing list
	// were delivered and are acknowledged; AckAll: every one.
	Oldest int
	// Held is how many messages the processing list holds as far as the
	// consumer knows; if it holds another number, nothing is changed and
	// the call fails with ErrDiverged. Unchecked: not checked.
	Held int
}

// FenceLife is how long the fence of an AckPopToken call lasts: a repeat
// with its token later than that runs as a new call.
const FenceLife = time.Minute

const (
	// AckAll, as Acks.Oldest, acknowledges the whole processing list.
	AckAll = -1
	// Unchecked, as Acks.Held, skips the check.
	Unchecked = -1
)

// Instance is the id whose processing lists this Queue uses.
func (q *Queue) Instance() string { return q.instance }

// setInstance changes the instance id (ClaimSlot), before any use.
func (q *Queue) setInstance(id string) {
	q.instance, q.procTail = id, "}:processing:"+id
}

// BatchSize is the most messages AckPop moves (Config.Batch).
func (q *Queue) BatchSize() int { return q.batch }

// NewToken is the token of a new AckPopToken call.
func (q *Queue) NewToken() uint64 { return q.token.Add(1) }

// AckPopToken acknowledges the oldest messages of the processing list of
// user that acks names and moves up to n more into it, with the caller's
// token. A consumer may hold several popped batches at once and
// acknowledge them oldest first, as their delivery is confirmed. A call
// that failed with an unknown outcome may be repeated with the same token:
// if the first one ran, the repeat returns the messages it popped instead
// of acknowledging more, or popping again. go-redis returns the error of
// its last attempt, so a redis.ErrPoolTimeout does not prove that an
// earlier attempt of the same call did not run: repeat it with its token.
// What it acknowledges is relayed to other instances as SubscribeRelays
// chose (PUBLISH, or SPUBLISH on a Cluster): call that first.
func (q *Queue) AckPopToken(ctx context.Context, user string, acks Acks, n int, token uint64) ([]string, error) {
	ctx, cancel, err := q.leased(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	keys := []string{q.Key(user), q.ProcessingKey(user), q.fenceKey(user), q.instancesKey(user)}
	msgs, err := ackPop.Run(ctx, q.cmd, keys, n, q.instance, q.RelayChannel(user), token, acks.Oldest, acks.Held,
		FenceLife.Milliseconds(), q.publishCommand()).StringSlice()
	var rerr redis.Error
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "DIVERGED"):
		return nil, fmt.Errorf("%w: %s", ErrDiverged, user)
	}
	return msgs, err
}

// fenceKey holds the token of the last ackPop of user on this instance,
// e.g. "{user_42_messages}:ack:host-9502".
func (q *Queue) fenceKey(user string) string {
	return "{" + q.Key(user) + "}:ack:" + q.instance
}

// publishCommand is how the ack script publishes a relay.
func (q *Queue) publishCommand() string {
	if q.sharded.Load() {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// RelayChannel is the pub/sub channel on which acknowledged batches of user
// are published for other instances, e.g. "{user_42_messages}:relay": the
// hash tag keeps it in the queue's cluster slot, ready for sharded pub/sub.
func (q *Queue) RelayChannel(user string) string { return "{" + q.Key(user) + "}:relay" }

// AckersChanged is the origin of a relay publication that carries no
// messages but says that an instance's ack connections of the user came
// or went (setPresence): not an instance id, which has no "!".
const AckersChanged = "!ack"

// AnnounceAckers publishes AckersChanged on user's relay channel: the
// other instances serving the user read again where its ack connections
// are (an instance that missed the presence script's announcement, and
// pops for its plain connections, learns it so).
func (q *Queue) AnnounceAckers(ctx context.Context, user string) error {
	return q.cmd.Do(ctx, q.publishCommand(), q.RelayChannel(user), ackersChangedRelay).Err()
}

// ackersChangedRelay is the relay publication of AckersChanged: an origin
// line and no messages.
const ackersChangedRelay = AckersChanged + "\n"

// HoldsAcks reports whether instance says it holds ack connections of
// user (its "<instance>/ack" field of the presence hash).
func (q *Queue) HoldsAcks(ctx context.Context, user, instance string) (bool, error) {
	n, err := q.cmd.HGet(ctx, q.connectionsKey(user), instance+"/ack").Int()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	return n > 0, err
}

// ParseRelay decodes a relay publication into its origin instance and its
// messages, oldest first.
func ParseRelay(payload string) (origin string, msgs []string, err error) {
	origin, rest, ok := strings.Cut(payload, "\n")
	if !ok {
		return "", nil, errBadRelay
	}
	for rest != "" {
		size, body, ok := strings.Cut(rest, ":")
		n, err := strconv.Atoi(size)
		if !ok || err != nil || n < 0 || n > len(body) {
			return "", nil, errBadRelay
		}
		msgs = append(msgs, body[:n])
		rest = body[n:]
	}
	return origin, msgs, nil
}

// Ack drops the processing list of user (and relays it, as AckPop does):
// everything popped since the last ack or Requeue was delivered.
func (q *Queue) Ack(ctx context.Context, user string) error {
	return q.AckOldest(ctx, user, Acks{Oldest: AckAll, Held: Unchecked})
}

// AckOldest acknowledges what acks names, without popping.
func (q *Queue) AckOldest(ctx context.Context, user string, acks Acks) error {
	_, err := q.AckPopToken(ctx, user, acks, 0, q.NewToken())
	return err
}

// Requeue returns everything popped for user since the last Ack or Requeue to
// the end of the queue that is read next, in its original order, and reports
// how many messages it moved.
func (q *Queue) Requeue(ctx context.Context, user string) (int, error) {
	ctx, cancel, err := q.leased(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	return q.requeueKey(ctx, q.ProcessingKey(user))
}

func (q *Queue) requeueKey(ctx context.Context, proc string) (int, error) {
	queue, ok := q.queueOf(proc)
	if !ok {
		return 0, fmt.Errorf("redisq: %q is not a processing list of this instance", proc)
	}
	return requeueAll.Run(ctx, q.cmd, []string{proc, queue}).Int()
}

// queueOf is the inverse of ProcessingKey, for this instance's lists only.
func (q *Queue) queueOf(proc string) (string, bool) {
	queue, owner, ok := splitProcessing(proc)
	return queue, ok && owner == q.instance
}

// splitProcessing parses "{queue}:processing:instance".
func splitProcessing(proc string) (queue, instance string, ok bool) {
	inner, instance, ok := strings.Cut(proc, "}:processing:")
	if !ok || !strings.HasPrefix(inner, "{") || !ValidID(instance) {
		return "", "", false
	}
	return inner[1:], instance, true
}

// Recover returns to their queues the messages this instance had popped but
// not acknowledged when it last stopped (a crash, kill -9, or Redis being
// down during shutdown). Call it once at start, before any consumer runs. It
// reports how many processing lists and messages it found. It returns the
// registered lists by key (safe from a SCAN over a stale cluster slot map),
// then SCANs for any other list of this instance (left by a version
// without the registry), removes its presence entries of the registered
// users, then drops its registry: its consumers register what they serve
// from now on.
func (q *Queue) Recover(ctx context.Context) (lists, msgs int, err error) {
	lists, msgs, err = q.reclaimRegistered(ctx, q.instance)
	if err != nil {
		return lists, msgs, err
	}
	// The instance id passed ValidID, so it holds no glob metacharacters.
	match := "{*" + q.procTail
	err = forEachMaster(ctx, q.cmd, func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, match, 1000).Iterator()
		for iter.Next(ctx) {
			n, err := q.requeueKey(ctx, iter.Val())
			if err != nil {
				return err
			}
			if n > 0 {
				lists++
				msgs += n
			}
		}
		return iter.Err()
	})
	if err != nil {
		return lists, msgs, err
	}
	// Its users of the last run are offline until they connect again.
	err = q.forEachRegistered(ctx, q.instance, func(queues []string) error {
		return q.forgetPresence(ctx, q.instance, queues, 0)
	})
	if err != nil {
		return lists, msgs, err
	}
	return lists, msgs, q.cmd.Del(ctx, listsKey(q.instance)).Err()
}

// forEachMaster runs fn on every node that holds keys: each master of a
// cluster, or the one server otherwise. Calls never overlap (go-redis runs
// them on a goroutine per master), so fn may update its caller's counters.
func forEachMaster(ctx context.Context, c redis.UniversalClient, fn func(context.Context, *redis.Client) error) error {
	switch c := c.(type) {
	case *redis.ClusterClient:
		var mu sync.Mutex
		return c.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return fn(ctx, node)
		})
	case *redis.Client:
		return fn(ctx, c)
	default:
		return fmt.Errorf("redisq: recovery does not support %T", c)
	}
}

// ValidID reports whether s can be used as a user or instance id: 1 to 128
// bytes of [A-Za-z0-9_.:-]. The set keeps keys free of glob characters,
// braces (cluster hash tags) and anything a log or URL would need to escape.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '_', c == '.', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// heartbeatKey marks instance as alive while it exists.
func heartbeatKey(instance string) string { return "redpush:instance:" + instance }

// Heartbeat marks this instance alive for ttl, and lists it among the
// instances that may hold processing lists. Call it every ttl/3. relisted
// reports that the instance was not listed: at the first heartbeat, or
// because another instance took it for dead (its heartbeat lapsed during
// an outage) and dropped its registry; the caller then registers the
// queues it serves again (RegisterAll).
func (q *Queue) Heartbeat(ctx context.Context, ttl time.Duration) (relisted bool, err error) {
	var added *redis.IntCmd
	_, err = q.cmd.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, heartbeatKey(q.instance), "alive", ttl)
		added = p.SAdd(ctx, instancesKey, q.instance)
		return nil
	})
	return err == nil && added.Val() == 1, err
}

// ReclaimDeadScan is ReclaimDead by SCANning every master's keyspace for
// processing lists whose instance's heartbeat expired, registered or not:
// the slow safety net, for lists of versions without the registry.
func (q *Queue) ReclaimDeadScan(ctx context.Context) (lists, msgs int, err error) {
	alive := map[string]bool{q.instance: true}
	err = forEachMaster(ctx, q.cmd, func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, "{*}:processing:*", 1000).Iterator()
		for iter.Next(ctx) {
			proc := iter.Val()
			queue, owner, ok := splitProcessing(proc)
			if !ok {
				continue
			}
			live, seen := alive[owner]
			if !seen {
				n, err := q.cmd.Exists(ctx, heartbeatKey(owner)).Result()
				if err != nil {
					return err
				}
				live = n == 1
				alive[owner] = live
			}
			if live {
				continue
			}
			moved, err := requeueAll.Run(ctx, q.cmd, []string{proc, queue}).Int()
			if err != nil {
				return err
			}
			lists++
			msgs += moved
		}
		return iter.Err()
	})
	return lists, msgs, err
}
