package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redpush/redpush/taskpool"
)

// sched runs hinted consumers on the pool, at most -workers at once. A
// consumer that needs a task (a new user, a hint to a parked one) when
// every task is busy waits in line, oldest first; a task whose consumer
// parks, ends or yields goes on with the next in line instead of
// returning to the pool. Nothing that schedules blocks: the hint reader
// schedules. A consumer with messages to move keeps its task, but while
// others wait it yields after yieldAfter pops: users past -workers take
// turns rather than wait for a busy user's queue to run dry.
type sched struct {
	mu      sync.Mutex
	running int         // tasks that drive consumers, or are being submitted to
	line    []*consumer // waiting for a task, oldest first
}

// yieldAfter is how many pops a hinted consumer makes in one turn while
// others wait for a task.
const yieldAfter = 8

// schedule gives c a task: a new one if fewer than -workers run, else a
// place in line. It never blocks.
func (h *hub) schedule(c *consumer) {
	h.sched.mu.Lock()
	if h.sched.running >= h.pool.Cap() {
		h.sched.line = append(h.sched.line, c)
		h.sched.mu.Unlock()
		return
	}
	h.sched.running++
	h.sched.mu.Unlock()
	h.submit(c)
}

// submit hands the task that drives c to the pool. The pool refuses for a
// moment after one of its tasks returned (its goroutine is not yet back
// among the idle ones): then it tries again shortly, from a goroutine of
// its own. Once the pool is shut (a shutdown), c ends where it is.
func (h *hub) submit(c *consumer) {
	task := func(ctx context.Context) { h.drive(ctx, c) }
	err := h.pool.Submit(task)
	if errors.Is(err, taskpool.ErrFull) {
		go func() {
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

// shutOut ends c, which the shut pool will not run: new or parked, it
// holds nothing (endParked). Whoever waited in line behind its task is
// driven to its end on a goroutine of its own, under a done context.
func (h *hub) shutOut(c *consumer) {
	h.endParked(c)
	if next := h.next(nil); next != nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		go h.drive(ctx, next)
	}
}

// drive is one task: it runs c, then whoever waits in line, until the line
// is empty. A consumer that yields goes to the end of the line.
func (h *hub) drive(ctx context.Context, c *consumer) {
	for c != nil {
		if h.run(ctx, c) == yielded {
			c = h.next(c)
		} else {
			c = h.next(nil)
		}
	}
}

// next is what a task goes on with: the first in line, after putting
// yielding (if not nil) at its end; nil when nobody waits, and the task
// ends (yielding, if any, goes on then: it is returned).
func (h *hub) next(yielding *consumer) *consumer {
	h.sched.mu.Lock()
	defer h.sched.mu.Unlock()
	if len(h.sched.line) == 0 {
		if yielding == nil {
			h.sched.running--
		}
		return yielding
	}
	if yielding != nil {
		h.sched.line = append(h.sched.line, yielding)
	}
	c := h.sched.line[0]
	h.sched.line[0] = nil
	h.sched.line = h.sched.line[1:]
	return c
}

// othersWait reports whether a consumer waits in line for a task.
func (h *hub) othersWait() bool {
	h.sched.mu.Lock()
	defer h.sched.mu.Unlock()
	return len(h.sched.line) > 0
}
