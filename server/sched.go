package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redpush/redpush/taskpool"
)

// sched bounds the hinted consumers that work at once to -workers
// (hub.workers): a consumer holds a slot while it pops, encodes and
// acknowledges, and gives it up while it writes or waits (a write may
// stall on a full socket; a client's TCP acknowledgement, a hint while it
// holds batches, a backoff while Redis fails): a waiting consumer keeps
// its goroutine, not its slot, so that one slow client or one failing
// Redis master holds up no other user. A consumer that needs a slot to start or go on (a new
// user, a hint to a parked one) when all are taken waits in line, oldest
// first, without blocking its caller (the hint reader schedules); one
// whose wait ended waits for a slot on its goroutine (waiters, served
// before the line: it holds batches). A freed slot goes to a waiter, else
// to the first in line. A consumer with messages to move keeps its slot,
// but while others wait it yields after yieldAfter pops and goes to the
// end of the line: users past -workers take turns rather than wait for a
// busy user's queue to run dry.
type sched struct {
	mu      sync.Mutex
	running int             // slots taken: consumers working, or being started
	line    []*consumer     // waiting for a slot and a goroutine, oldest first
	waiters []chan struct{} // goroutines of consumers waiting for a slot, oldest first
}

// yieldAfter is how many pops a hinted consumer makes in one turn while
// others wait for a slot.
const yieldAfter = 8

// schedule gives c a slot and a goroutine, or a place in line. It never
// blocks.
func (h *hub) schedule(c *consumer) {
	h.sched.mu.Lock()
	if h.sched.running >= h.workers {
		h.sched.line = append(h.sched.line, c)
		h.sched.mu.Unlock()
		return
	}
	h.sched.running++
	h.sched.mu.Unlock()
	h.submit(c)
}

// submit runs c, which holds a slot, on a goroutine of the pool. The
// pool refuses for a moment after one of its tasks returned (its goroutine
// is not yet back among the idle ones): then it tries again shortly, from
// a goroutine of its own. Once the pool is shut (a shutdown), c ends where
// it is (shutOut).
func (h *hub) submit(c *consumer) {
	task := func(ctx context.Context) { h.drive(ctx, c) }
	err := h.pool.Submit(task)
	if errors.Is(err, taskpool.ErrFull) {
		h.strays.Add(1) // a shutdown that shuts the pool meanwhile waits for it
		go func() {
			defer h.strays.Add(-1)
			for errors.Is(err, taskpool.ErrFull) {
				time.Sleep(time.Millisecond)
				err = h.pool.Submit(task)
			}
			if err != nil {
				h.shutOut(c)
			}
		}()
		return
	}
	if err != nil {
		h.shutOut(c)
	}
}

// shutOut ends c, which the shut pool will not run, and passes its slot
// on. A consumer that needs a new goroutine was new or parked, or yielded
// holding batches: it runs to its end under a done context (it settles
// and requeues what it holds) on a goroutine that the shutdown waits for
// (hub.strays, awaitStrays; so does a consumer whose submission is
// retried).
func (h *hub) shutOut(c *consumer) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h.strays.Add(1)
	go func() {
		defer h.strays.Add(-1)
		h.drive(ctx, c)
	}()
}

// drive runs c, which holds a slot, then whoever waits in line, until
// the slot goes to a waiter or nobody waits. A consumer that yields goes
// to the end of the line.
func (h *hub) drive(ctx context.Context, c *consumer) {
	for c != nil {
		if h.run(ctx, c) == yielded {
			c = h.next(c)
		} else {
			c = h.next(nil)
		}
	}
}

// next is what the slot of a task whose consumer is done (parked, ended,
// or yielding, if not nil: it goes to the end of the line) goes on with:
// a waiter takes it (nil: the task ends), else the first in line, or the
// yielding consumer itself when nobody waits; nil when nobody is left
// and the slot is free.
func (h *hub) next(yielding *consumer) *consumer {
	h.sched.mu.Lock()
	defer h.sched.mu.Unlock()
	if yielding != nil {
		if len(h.sched.line) == 0 && len(h.sched.waiters) == 0 {
			return yielding
		}
		h.sched.line = append(h.sched.line, yielding)
	}
	if h.handToWaiter() {
		return nil
	}
	if len(h.sched.line) > 0 {
		return h.popLine()
	}
	h.sched.running--
	return nil
}

// handToWaiter passes the caller's slot to the first waiter, if any.
// Called with h.sched.mu held.
func (h *hub) handToWaiter() bool {
	if len(h.sched.waiters) == 0 {
		return false
	}
	close(h.sched.waiters[0])
	h.sched.waiters[0] = nil
	h.sched.waiters = h.sched.waiters[1:]
	return true
}

// popLine takes the first consumer in line. Called with h.sched.mu held.
func (h *hub) popLine() *consumer {
	c := h.sched.line[0]
	h.sched.line[0] = nil
	h.sched.line = h.sched.line[1:]
	return c
}

// pause gives up the calling consumer's slot while it waits (sched); its
// end, unpause, takes one again. Always deferred: a panic while it waits
// (recovered by run) must find the slot taken again, or the task's end
// would give it up twice (a review found the count drifting below zero).
// Blocking consumers are not scheduled: both do nothing.
func (h *hub) pause() {
	if h.hints == nil {
		return
	}
	h.sched.mu.Lock()
	if h.handToWaiter() {
		h.sched.mu.Unlock()
		return
	}
	if len(h.sched.line) > 0 {
		c := h.popLine()
		h.sched.mu.Unlock()
		h.submit(c) // the slot goes with it
		return
	}
	h.sched.running--
	h.sched.mu.Unlock()
}

// unpause takes a slot again after pause, waiting for one if all are
// taken.
func (h *hub) unpause() {
	if h.hints == nil {
		return
	}
	h.sched.mu.Lock()
	if h.sched.running < h.workers {
		h.sched.running++
		h.sched.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	h.sched.waiters = append(h.sched.waiters, ch)
	h.sched.mu.Unlock()
	<-ch // a slot was handed over
}

// waiting is how many consumers wait for a slot: in line, or after a
// wait of their own.
func (h *hub) waiting() int {
	h.sched.mu.Lock()
	defer h.sched.mu.Unlock()
	return len(h.sched.line) + len(h.sched.waiters)
}

// othersWait reports whether a consumer waits for a slot.
func (h *hub) othersWait() bool { return h.waiting() > 0 }

// awaitStrays waits until no consumer runs outside the pool (shutOut), or
// until deadline: the end of a shutdown. They start after the pool shut,
// so a WaitGroup, whose Wait must come after every Add, cannot count them.
func (h *hub) awaitStrays(deadline time.Time) {
	for h.strays.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}
