package redisq

import (
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

var (
	// ErrBadPattern is returned by New for a key pattern without exactly one %s,
	// or one containing a brace (braces would break the cluster hash tag).
	ErrBadPattern = errors.New("redisq: key pattern must contain exactly one %s and no braces")
	// ErrBadInstance is returned by New for an empty instance id or one with
	// characters outside [A-Za-z0-9_.:-].
	ErrBadInstance = errors.New("redisq: instance id must be 1-128 characters of [A-Za-z0-9_.:-]")
	// ErrBadURL is returned by Dial for a Redis URL go-redis cannot parse.
	ErrBadURL = errors.New("redisq: bad redis URL")
	// errBadRelay: a relay publication that ParseRelay cannot read.
	errBadRelay = errors.New("redisq: malformed relay message")
	// ErrDiverged is returned by Queue.AckPopToken when the processing
	// list does not hold as many messages as the caller says it holds:
	// acknowledging its oldest could drop messages nobody delivered. The
	// caller requeues everything instead.
	ErrDiverged = errors.New("redisq: processing list differs from what the consumer holds; nothing acknowledged")
	// ErrSlotMoved is returned by Blocker.Pop when the user's cluster slot
	// moved to another master: not an outage; the next Pop blocks there.
	ErrSlotMoved = errors.New("redisq: cluster slot moved")
	// ErrInstanceTaken is returned by Queue.Claim when another live process
	// holds the instance id.
	ErrInstanceTaken = errors.New("redisq: instance id in use")
	// ErrInstanceLost is returned by Claim.Renew when another process took
	// the instance id: this one must stop serving.
	ErrInstanceLost = errors.New("redisq: instance id taken over by another process")
	// ErrClaimLapsed is returned by the commands that change processing
	// lists while this process cannot be sure it still holds its instance
	// id (Claim.Held): its last renewal is too old. They change nothing;
	// the caller retries, and stops once the claim is lost.
	ErrClaimLapsed = errors.New("redisq: instance id claim not renewed in time; not touching in-flight messages")
	// ErrUnreachable is returned by Dial when Redis does not answer PING.
	ErrUnreachable = errors.New("redisq: redis unreachable")
)

// SlotMoving reports whether err is a Redis Cluster saying that a key's
// slot is moving or has moved (MOVED, ASK, TRYAGAIN, or a script that
// found one of its keys gone from the node mid-migration): the caller
// tries again once the slot map caught up; it is no outage.
func SlotMoving(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrSlotMoved) || redis.IsTryAgainError(err) {
		return true
	}
	if _, ok := redis.IsMovedError(err); ok {
		return true
	}
	if _, ok := redis.IsAskError(err); ok {
		return true
	}
	return strings.Contains(err.Error(), "non local key")
}
