package redisq

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// An instance id is held by one live process at a time: two processes with
// one id would each run the other's recovery and ack scripts on the same
// processing lists, and delete each other's in-flight batches.
//
// A process claims its id at start by storing a random token in
// redpush:claim:<instance> for ClaimTTL, and renews the claim every
// ClaimEvery while it runs. A claim that was not renewed for ClaimTTL is
// free: a process restarted after kill -9 takes its id back within
// ClaimTTL. This is apart from the heartbeat (Heartbeat, -instance-ttl),
// which says when another instance may reclaim a dead one's messages.

const (
	ClaimTTL   = 3 * time.Second
	ClaimEvery = time.Second
)

func claimKey(instance string) string { return "redpush:claim:" + instance }

// renewClaim extends the claim KEYS[1] if it still holds our token ARGV[1],
// or takes it back if it expired meanwhile (a Redis restart or a long
// outage); it returns 0 when another process holds it.
var renewClaim = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

// Claim is this process's hold on its instance id.
//
// While it is held, the Queue's commands that change this instance's
// processing lists (AckPop, Ack, Requeue, RequeueFailed, Blocker.Pop) run;
// once the last renewal that succeeded is older than ClaimTTL − ClaimEvery
// they fail with ErrClaimLapsed instead, until a renewal succeeds again. A
// process that stalled (a pause, a partition from Redis) does not resume
// touching lists that a successor with the same id may own by then. The
// margin (ClaimEvery) covers a renewal's own delay; a stall between that
// check and the command reaching Redis is not covered, so a process should
// not be paused for a second in the middle of a command.
type Claim struct {
	q     *Queue
	token string
	until atomic.Int64 // unix nanos: held until then, by the last renewal
}

// Held reports whether the last renewal is recent enough that no other
// process can have taken the id.
func (c *Claim) Held() bool { return time.Now().UnixNano() < c.until.Load() }

// expires is when another process may take the id at the earliest, by the
// last renewal: a command sent now must be over by then.
func (c *Claim) expires() time.Time { return time.Unix(0, c.until.Load()).Add(ClaimEvery) }

// renewed records a successful claim or renewal sent at sent.
func (c *Claim) renewed(sent time.Time) { c.until.Store(sent.Add(ClaimTTL - ClaimEvery).UnixNano()) }

// Claim takes the instance id for this process. If another process holds
// it, Claim waits up to ClaimTTL (and a little) for a claim that is not
// renewed, the one a killed process left, to expire; if it is renewed
// meanwhile, a live process has the id, and Claim fails with
// ErrInstanceTaken.
func (q *Queue) Claim(ctx context.Context) (*Claim, error) {
	deadline := time.Now().Add(ClaimTTL + ClaimEvery)
	for {
		c, err := q.tryClaim(ctx, q.instance)
		if c != nil || err != nil {
			return c, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: %q is held by another live process", ErrInstanceTaken, q.instance)
		}
		t := time.NewTimer(ClaimEvery / 5)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// ClaimSlot claims the first free id of the Queue's instance id followed by
// -0, -1, … -(slots-1), and makes it the Queue's instance id; call it
// before the Queue is used. It does not wait for a claim to expire: a slot
// held by a process that died is skipped, and its in-flight messages are
// returned by ReclaimDead once its heartbeat expired.
func (q *Queue) ClaimSlot(ctx context.Context, slots int) (*Claim, error) {
	base := q.instance[:min(len(q.instance), 120)] // a slot id stays within 128 characters
	for n := range slots {
		if c, err := q.tryClaim(ctx, fmt.Sprintf("%s-%d", base, n)); c != nil || err != nil {
			return c, err
		}
	}
	return nil, fmt.Errorf("%w: all %d slots of %q are held", ErrInstanceTaken, slots, base)
}

// tryClaim takes id if no process holds it, and makes it the Queue's
// instance id; it returns no Claim and no error when id is held.
func (q *Queue) tryClaim(ctx context.Context, id string) (*Claim, error) {
	c := &Claim{q: q, token: newToken()}
	sent := time.Now()
	ok, err := q.cmd.SetNX(ctx, claimKey(id), c.token, ClaimTTL).Result()
	if err != nil || !ok {
		return nil, err
	}
	q.setInstance(id)
	c.renewed(sent)
	q.claim.Store(c)
	return c, nil
}

func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Renew extends the claim for another ClaimTTL. It fails with
// ErrInstanceLost when another process holds the id now; any other error
// is Redis's, and the caller retries.
func (c *Claim) Renew(ctx context.Context) error {
	sent := time.Now()
	n, err := renewClaim.Run(ctx, c.q.cmd, []string{claimKey(c.q.instance)}, c.token, ClaimTTL.Milliseconds()).Int()
	if err != nil {
		return err
	}
	if n == 0 {
		c.until.Store(0) // for good: the lists are the other process's now
		return fmt.Errorf("%w: %q", ErrInstanceLost, c.q.instance)
	}
	if c.until.Load() != 0 {
		c.renewed(sent)
	}
	return nil
}

// Release gives the id up, if this process still holds it, so that a
// successor need not wait for the claim to expire.
func (c *Claim) Release(ctx context.Context) error {
	c.until.Store(0) // from now on this process touches no processing list
	err := releaseClaim.Run(ctx, c.q.cmd, []string{claimKey(c.q.instance)}, c.token).Err()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

var releaseClaim = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)
