package server

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// Each connection has an outbox: the batches queued for it, drained by a
// writer goroutine of its own that exists only while there is something to
// write. A consumer hands a batch to every connection of its user without
// waiting for any of them, then waits for the batch's ticket: done as soon
// as one connection's writer has written it to its socket (the batch is
// then acknowledged in Redis once a peer's TCP acknowledged it: confirm.go),
// or when every connection failed it (it goes back to the queue). A tab that
// stops reading holds up neither its user's other tabs nor the queue.
//
// The outbox is bounded in bytes (Config.MaxQueuedBytes) beyond its first
// batch, so that one message larger than the bound still goes out. A
// connection whose outbox stays over the bound for Config.WriteTimeout, or
// grows past four times it, is closed: a client that reads, but more
// slowly than its messages come, cannot make the server hold its backlog.
// The writer writes all it finds queued in one writev (write coalescing).

// ticket follows one encoded batch through the connections it was handed
// to.
type ticket struct {
	buf    *[]byte // the frames; back to bufPool when every connection is done
	ackBuf *[]byte // the frames for ack connections (ack.go), if it has any; pooled too
	popped time.Time
	answer bool // an answer (post): buf is its own, not the pool's, and nothing was popped
	m      *metrics
	left   atomic.Int32 // connections not done with it
	wrote  atomic.Bool  // some connection wrote it
	tried  atomic.Bool  // some connection tried to write it
	once   sync.Once
	done   chan struct{} // closed at the first write, or when all failed

	mu    sync.Mutex
	marks []mark // where it ends on each connection that wrote it
}

func newTicket(buf *[]byte, conns int, popped time.Time, m *metrics) *ticket {
	t := &ticket{buf: buf, popped: popped, m: m, done: make(chan struct{})}
	t.left.Store(int32(conns))
	return t
}

// finish records one connection's outcome: whether it tried to write the
// batch (false: it closed before its turn), and whether that worked; when
// it did, m is where the batch ends on the connection's socket.
func (t *ticket) finish(tried, written bool, m mark) {
	if tried {
		t.tried.Store(true)
	}
	if written {
		t.mu.Lock()
		t.marks = append(t.marks, m)
		t.mu.Unlock()
	}
	if written && t.wrote.CompareAndSwap(false, true) {
		if !t.answer {
			t.m.observePopToWrite(t.popped)
		}
		t.once.Do(func() { close(t.done) })
	}
	if t.left.Add(-1) == 0 {
		t.once.Do(func() { close(t.done) })
		if !t.answer {
			putBuf(t.buf)
			if t.ackBuf != nil {
				putBuf(t.ackBuf)
			}
		}
	}
}

// outcome is confirmed once one connection's peer acknowledged the batch,
// failed once every connection it was handed to is done with it and the
// ones that wrote it are closed without that (confirm.go).
func (t *ticket) outcome() outcome {
	t.mu.Lock()
	defer t.mu.Unlock()
	closed := true
	for _, m := range t.marks {
		acked, final := m.c.ackedThrough()
		if acked >= m.end {
			return confirmed
		}
		closed = closed && final
	}
	if closed && t.left.Load() == 0 {
		return failed
	}
	return pending
}

// frames is what c writes of t: the ack frames for an ack connection.
func (t *ticket) frames(c *conn) []byte {
	if c.ack != nil && t.ackBuf != nil {
		return *t.ackBuf
	}
	return *t.buf
}

// wait blocks until the ticket is done and reports whether a connection
// wrote the batch, and whether any tried to.
func (t *ticket) wait() (written, tried bool) {
	<-t.done
	return t.wrote.Load(), t.tried.Load()
}

// outbox is a connection's queue of batches.
type outbox struct {
	mu        sync.Mutex
	queue     []*ticket
	bytes     int       // queued, not yet taken by the writer
	overSince time.Time // since when bytes is over the bound; zero if it is not
	writing   bool      // a writer goroutine runs
	closed    bool
	spare     []*ticket // the writer's last batch slice, for reuse
	bufs      net.Buffers
}

// send queues t for c and starts c's writer if none runs. It never blocks.
// A connection over its bound for too long is closed instead, failing t
// and everything it held.
func (c *conn) send(t *ticket) {
	o := &c.out
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		t.finish(false, false, mark{})
		return
	}
	o.queue = append(o.queue, t)
	o.bytes += len(t.frames(c))
	if too := c.tooSlow(); too != "" {
		// Fail what it holds at once, and close it on another goroutine:
		// its writer may be blocked in a write, and the consumer must not
		// wait for that.
		o.closed = true
		queued := o.queue
		o.queue, o.bytes = nil, 0
		o.mu.Unlock()
		for _, q := range queued {
			q.finish(false, false, mark{})
		}
		c.closeTooSlow(too)
		return
	}
	start := !o.writing
	o.writing = true
	o.mu.Unlock()
	if start {
		go c.drain()
	}
}

// post queues frame for c without waiting for it to be written: the
// reactor's answers (pong, reply, ping), which must not hold up a reader
// task. It fails when c is closing. Its buffer is its own, of its size:
// a pooled one would hold 4 KiB for a 7-byte answer.
func (c *conn) post(frame []byte) error {
	if c.gone.Load() {
		return ErrConnClosed
	}
	buf := bytes.Clone(frame)
	t := newTicket(&buf, 1, time.Time{}, c.m)
	t.answer = true
	c.send(t)
	return nil
}

// maxAnswers is how many answers may wait in a connection's outbox before
// the reactor stops reading it (watch.pause): a client that sends and
// does not read is pushed back by TCP, not queued for by the server.
const maxAnswers = 64

// answersPiled reports whether more than maxAnswers batches or answers
// wait in c's outbox.
func (c *conn) answersPiled() bool {
	c.out.mu.Lock()
	defer c.out.mu.Unlock()
	return len(c.out.queue) > maxAnswers
}

// readOn lets the reactor read c again if it paused it for its answers
// (watch.pause): the writer took them.
func (c *conn) readOn() {
	if c.w.state.Load() == watchPaused {
		c.rx.resume(c)
	}
}

// flushOutbox waits until what c's outbox holds is written (or failed),
// or until deadline.
func (c *conn) flushOutbox(deadline time.Time) {
	for time.Now().Before(deadline) {
		c.out.mu.Lock()
		idle := c.out.closed || (!c.out.writing && len(c.out.queue) == 0)
		c.out.mu.Unlock()
		if idle {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// closeTooSlow closes c with 1008 and reason, on another goroutine: a
// writer blocked on the full socket fails at once and closes it (with this
// reason); otherwise the close frame goes out.
func (c *conn) closeTooSlow(reason string) {
	why := (&closeErr{code: ws.StatusPolicyViolation, reason: reason}).String()
	c.slowWhy.Store(&why)
	_ = c.nc.SetWriteDeadline(time.Now())
	go c.closeWith(ws.StatusPolicyViolation, reason, time.Now().Add(min(c.writeTimeout, time.Second)))
}

// tooSlow says why the outbox of c is over its bound for good, or "".
// The bound applies to what is queued beyond the first batch: one batch of
// any size may wait (besides the one being written). Called with c.out.mu
// held.
func (c *conn) tooSlow() string {
	o := &c.out
	beyond := 0
	if len(o.queue) > 1 {
		beyond = o.bytes - len(o.queue[0].frames(c))
	}
	if beyond <= c.maxQueued {
		o.overSince = time.Time{}
		return ""
	}
	now := time.Now()
	if o.overSince.IsZero() {
		o.overSince = now
	}
	switch {
	case beyond > 4*c.maxQueued:
		return "client too slow: outbox over 4 × -max-queued-bytes"
	case now.Sub(o.overSince) > c.writeTimeout:
		return "client too slow: outbox over -max-queued-bytes for -write-timeout"
	}
	return ""
}

// drain writes what is queued, all of it in one writev, until the outbox is
// empty or the connection closed.
func (c *conn) drain() {
	o := &c.out
	for {
		o.mu.Lock()
		if len(o.queue) == 0 || o.closed {
			o.writing = false
			o.mu.Unlock()
			c.readOn() // its answers are written
			return
		}
		batch := o.queue
		o.queue, o.spare = o.spare[:0], nil
		o.bytes = 0
		o.overSince = time.Time{}
		o.mu.Unlock()
		c.readOn() // what was queued is taken: read on while it is written

		n, end, err := c.writeBatch(batch)
		// A connection closed before its turn did not try: its user
		// closing a tab is no failed delivery of the batch.
		tried := !errors.Is(err, ErrConnClosed)
		for _, t := range batch {
			l := int64(len(t.frames(c)))
			// Every batch of the writev is marked with its end: over TLS
			// only the whole write's end on the wire is known, and a
			// later end is only a later confirmation.
			t.finish(tried, err == nil || n >= l, mark{c, end})
			n -= l
		}
		clear(batch)
		o.mu.Lock()
		o.spare = batch[:0]
		o.mu.Unlock()
	}
}

// writeBatch writes the tickets' frames in one writev under the write
// lock and deadline; on error it closes the connection (a partial frame
// cannot be continued). It reports how many bytes went out, and the
// connection's wire offset after them.
func (c *conn) writeBatch(batch []*ticket) (n, end int64, err error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return 0, 0, ErrConnClosed
	}
	bufs := c.out.bufs[:0]
	for _, t := range batch {
		bufs = append(bufs, t.frames(c))
	}
	c.out.bufs = bufs[:0]
	_ = c.nc.SetWriteDeadline(c.writeDeadline())
	w := bufs // WriteTo consumes the slice it is given
	n, err = w.WriteTo(c.nc)
	c.sent.Add(n)
	clear(bufs)
	end = c.wireSent()
	if err != nil {
		c.m.writeFailures.Inc()
		c.closeLocked("write failed: " + err.Error())
	}
	return n, end, err
}

// failOutbox fails everything c still has queued; called when c closes.
func (c *conn) failOutbox() {
	o := &c.out
	o.mu.Lock()
	o.closed = true
	queued := o.queue
	o.queue, o.bytes = nil, 0
	o.mu.Unlock()
	for _, t := range queued {
		t.finish(false, false, mark{})
	}
}

// writeNow writes buf to c in the caller's goroutine when c's outbox is
// idle: the common case of a user with one connection, where the consumer
// has to wait for that write anyway, without a ticket, a writer goroutine
// or two goroutine switches per batch. ok is false when the outbox is busy
// (the caller queues instead); tried is false when c was already closed;
// end is where buf ends on the socket when written.
func (c *conn) writeNow(buf []byte) (end int64, written, tried, ok bool) {
	o := &c.out
	o.mu.Lock()
	if o.closed || o.writing || len(o.queue) > 0 {
		o.mu.Unlock()
		return 0, false, false, false
	}
	o.writing = true // batches queued meanwhile wait behind this one
	o.mu.Unlock()
	end, err := c.writeAt(buf)
	o.mu.Lock()
	more := len(o.queue) > 0 && !o.closed
	o.writing = more
	o.mu.Unlock()
	if more {
		go c.drain()
	}
	return end, err == nil, !errors.Is(err, ErrConnClosed), true
}
