package server

import (
	"context"
	"sync"

	"github.com/redpush/redpush/redisq"
)

// relay lets several instances share one Redis: a user's consumer on the
// instance that popped a batch writes it to the user's connections there
// and, when it acknowledges it, publishes it on the user's relay channel
// (redisq.Queue.RelayChannel) if another instance serves the user (redisq's
// "{Q}:instances", kept with the registry). Every instance subscribes to the
// channels of its online users and writes what other instances published
// to its own connections of that user. The popped copy stays the reliable
// one; relayed copies are best effort, as Redis pub/sub is: a connection
// that is on a different instance than its user's consumer can miss a
// message published while its instance was (re)subscribing or not yet in
// the user's set of instances, or during a Redis outage. On a Cluster the
// relays are sharded (SPUBLISH, redisq.Relays).
type relay struct {
	hub      *hub
	ps       *redisq.Relays
	instance string
	dirty    chan struct{} // wakes sync when want changed

	mu   sync.Mutex
	want map[string]string // channel → user, for the users online here
	// changed are the channels watched or unwatched since sync last ran:
	// sync's work grows with what changed, not with the users online (a
	// scan of want per change made every connect cost O(online users)).
	changed map[string]struct{}
	queues  map[string]*relayQueue // user → relayed batches not yet written
	pending int                    // batches in all queues
}

// maxRelayPending bounds the relayed batches waiting to be written, over
// all users: past it a relay is dropped (relay_dropped_total).
const maxRelayPending = 1024

// relayQueue holds one user's relayed batches in the order they were
// published; one goroutine at a time writes them, so they reach the
// connections in that order.
type relayQueue struct {
	batches []relayed
}

// relayed is one relayed batch, and the instance that popped it.
type relayed struct {
	origin string
	msgs   []string
}

// newRelay subscribes to relays; it must run before the first
// acknowledgement (SubscribeRelays decides how the ack script publishes).
func newRelay(ctx context.Context, h *hub, instance string) *relay {
	r := &relay{hub: h, ps: h.q.SubscribeRelays(ctx), instance: instance, dirty: make(chan struct{}, 1),
		want: make(map[string]string), changed: make(map[string]struct{}), queues: make(map[string]*relayQueue)}
	go r.run()
	go r.sync(ctx)
	return r
}

// watch asks for the relay channel of a user who came online here. It is
// called under the hub's lock, so it only records the wish: sync talks to
// Redis.
func (r *relay) watch(user string) {
	ch := r.hub.q.RelayChannel(user)
	r.mu.Lock()
	r.want[ch] = user
	r.changed[ch] = struct{}{}
	r.mu.Unlock()
	r.poke()
}

// unwatch drops the wish when the user's last connection here is gone.
func (r *relay) unwatch(user string) {
	ch := r.hub.q.RelayChannel(user)
	r.mu.Lock()
	delete(r.want, ch)
	r.changed[ch] = struct{}{}
	r.mu.Unlock()
	r.poke()
}

func (r *relay) poke() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// sync brings the subscription in line with want, in one SUBSCRIBE and one
// UNSUBSCRIBE for every change that piled up meanwhile. A channel is
// recorded even when the command fails, and subscribed again when the
// connection comes back, so a failure needs no retry here.
func (r *relay) sync(ctx context.Context) {
	have := make(map[string]bool)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.dirty:
		}
		add, drop := r.diff(have)
		if len(add) > 0 {
			if err := r.ps.Subscribe(ctx, add...); err != nil {
				r.hub.log.Debug("relay subscribe failed", "channels", len(add), "err", err)
			}
		}
		if len(drop) > 0 {
			_ = r.ps.Unsubscribe(ctx, drop...)
		}
	}
}

// diff takes the channels changed since the last call and says which to
// subscribe and which to drop so that have (updated) matches want. A
// channel watched and unwatched in between is neither.
func (r *relay) diff(have map[string]bool) (add, drop []string) {
	r.mu.Lock()
	changed := r.changed
	r.changed = make(map[string]struct{})
	for ch := range changed {
		_, wanted := r.want[ch]
		switch {
		case wanted && !have[ch]:
			add = append(add, ch)
			have[ch] = true
		case !wanted && have[ch]:
			drop = append(drop, ch)
			delete(have, ch)
		}
	}
	r.mu.Unlock()
	return add, drop
}

// run hands relayed batches to their users' queues until close. Each user
// with batches waiting has one writer goroutine, so that a slow client
// holds up only its own user's relays, and a user's batches are written in
// the order they were published.
func (r *relay) run() {
	for msg := range r.ps.Messages() {
		origin, msgs, err := redisq.ParseRelay(msg.Payload)
		if origin == redisq.AckersChanged {
			if user, ok := r.userOf(msg.Channel); ok {
				r.hub.ackersChanged(user)
			}
			continue
		}
		if err != nil || origin == r.instance || len(msgs) == 0 {
			continue
		}
		r.enqueue(msg.Channel, origin, msgs)
	}
}

// userOf is the user online here whose relay channel is channel.
func (r *relay) userOf(channel string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	user, ok := r.want[channel]
	return user, ok
}

func (r *relay) enqueue(channel, origin string, msgs []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	user, ok := r.want[channel]
	if !ok {
		return
	}
	if r.pending >= maxRelayPending {
		r.hub.m.relayDropped.Inc()
		return
	}
	r.pending++
	q := r.queues[user]
	if q == nil {
		q = &relayQueue{}
		r.queues[user] = q
		go r.write(user, q)
	}
	q.batches = append(q.batches, relayed{origin, msgs})
}

// write writes q's batches to user's connections here, oldest first, and
// returns when q is empty.
func (r *relay) write(user string, q *relayQueue) {
	for {
		r.mu.Lock()
		if len(q.batches) == 0 {
			delete(r.queues, user)
			r.mu.Unlock()
			return
		}
		b := q.batches[0]
		q.batches[0] = relayed{}
		q.batches = q.batches[1:]
		r.pending--
		r.mu.Unlock()
		r.hub.deliverUser(user, b.origin, b.msgs)
	}
}

func (r *relay) close() { _ = r.ps.Close() }
