package server

import (
	"crypto/tls"
	"net"
	"sync/atomic"
	"time"
)

// A batch counts as delivered when the client's TCP stack has acknowledged
// its last byte, not when a write returned. A write returns once the kernel
// holds the bytes in the socket's send buffer, where they may wait for
// minutes behind a client that stopped reading; closing that socket (the
// server does, for a slow or idle client) then loses them, although they
// were written. So a written batch stays in its user's processing list
// until a connection's peer acknowledged it, and goes back to the queue if
// every connection it was written to closed first: it may arrive twice,
// never not at all.
//
// The bytes of a socket that its peer has not acknowledged yet (SIOCOUTQ)
// are always the newest written, so a connection that handed sent bytes to
// the kernel had every byte up to sent − SIOCOUTQ acknowledged: a batch
// whose bytes end at offset end is confirmed once that reaches end. Over
// TLS the offsets count the encrypted bytes below it (countedConn). The
// consumer keeps its written batches in order (flight) and acknowledges
// the oldest confirmed ones in Redis with its next pop.
//
// Where SIOCOUTQ cannot be asked (not Linux), a write counts as delivery.
// What no server can see is a client whose kernel acknowledged bytes its
// application never read (a tab killed at that moment): that takes an
// acknowledgement by the application.

// mark is where a batch's bytes end on one connection's socket.
type mark struct {
	c   *conn
	end int64 // the connection's wire offset after the batch was written
}

// outcome is what became of a written batch.
type outcome int

const (
	pending   outcome = iota // not acknowledged yet by any peer, and some connection may still
	confirmed                // a peer acknowledged its last byte
	failed                   // every connection it was handed to closed without that
)

// flight is a written batch that is not acknowledged in Redis yet.
type flight struct {
	n   int       // its messages
	one mark      // where writeNow wrote it, when t is nil
	t   *ticket   // the batch handed to several connections
	at  time.Time // when it was written
	// acks are where it ends on each ack connection it was handed to
	// (ack.go): when there are any, their acknowledgements alone decide.
	acks []ackMark
}

func (f *flight) outcome() outcome {
	switch {
	case len(f.acks) > 0:
		return ackOutcome(f.acks)
	case f.t != nil:
		return f.t.outcome()
	case f.one.c == nil: // popped, never written (nobody took it, or a shutdown came between)
		return failed
	}
	acked, final := f.one.c.ackedThrough()
	switch {
	case acked >= f.one.end:
		return confirmed
	case final:
		return failed
	}
	return pending
}

// settle reports how many messages of the oldest flights are confirmed
// (in order: a confirmed batch behind a pending one waits), and whether
// the first flight after those failed. Of that flight, n counts the
// messages an ack connection acknowledged (its oldest): done flights hold
// fewer than n messages then.
func settle(flights []flight) (n, done int, headFailed bool) {
	for _, f := range flights {
		switch f.outcome() {
		case confirmed:
			n += f.n
			done++
			continue
		case failed:
			headFailed = true
		}
		n += f.ackedPrefix()
		break
	}
	return n, done, headFailed
}

// settleWait is how long a consumer whose queue ran dry polls for its
// flights' confirmations before it blocks for the next message: a client
// that reads acknowledges within a round trip, usually well within it. A
// consumer whose client did not (it stopped reading, or delays its ACKs)
// blocks at once next time (consumer.slowAcks), in rounds of heldRound
// while it holds batches, which it acknowledges with the next pop.
const (
	settleWait = 50 * time.Millisecond
	heldRound  = time.Second
)

// pollStep is the pause after prev in a poll for confirmations: from
// 250 µs, doubling, at most 20 ms.
func pollStep(prev time.Duration) time.Duration {
	return min(max(2*prev, 250*time.Microsecond), 20*time.Millisecond)
}

// wire is how a connection counts the bytes it hands to the kernel.
type wire struct {
	sent    *atomic.Int64 // bytes handed to the kernel so far; nil: the conn's own count
	counted bool          // sent and SIOCOUTQ agree: confirmations can be asked
	final   atomic.Int64  // the acknowledged offset when the socket closed
	closed  atomic.Bool   // final is set
	fin     atomic.Bool   // the socket was half-closed: SIOCOUTQ counts its FIN
}

// init counts the bytes of nc in the conn's own count, or, over TLS, in
// the countedConn below it, which sees the encrypted bytes.
func (w *wire) init(nc net.Conn) {
	if tc, ok := nc.(*tls.Conn); ok {
		// Without a countedConn below (a listener of the caller's), the
		// stream's offsets are not the socket's: a write counts as delivery.
		if cc, ok := tc.NetConn().(*countedConn); ok {
			w.sent, w.counted = &cc.sent, canAskUnsent
		}
		return
	}
	_, tcp := nc.(*net.TCPConn)
	w.counted = tcp && canAskUnsent
}

// ackedThrough is the offset up to which the peer acknowledged what c
// wrote, and whether the socket is closed (it will not grow any more).
// It never overstates: a write in progress only makes it smaller.
func (c *conn) ackedThrough() (int64, bool) {
	w := &c.wire
	if w.closed.Load() {
		return w.final.Load(), true
	}
	sent := c.wireSent()
	if !w.counted {
		return sent, false
	}
	fin := w.fin.Load() // before the ioctl: set once the FIN is queued, so then q counts it
	if q := unsent(c.nc); q >= 0 {
		if q > 0 && fin {
			q-- // the FIN takes a sequence number, not a byte of ours
		}
		return sent - int64(q), false
	}
	if w.closed.Load() { // closed meanwhile: SIOCOUTQ fails on a closed socket
		return w.final.Load(), true
	}
	return 0, false // cannot be asked right now: nothing is confirmed
}

// wireSent is how many bytes c handed to the kernel: its own count, or the
// one below TLS.
func (c *conn) wireSent() int64 {
	if c.wire.sent != nil {
		return c.wire.sent.Load()
	}
	return c.sent.Load()
}

// shutLocked records how far the peer acknowledged, then closes the socket
// (after which that cannot be asked). Called with wmu held: no write runs.
func (c *conn) shutLocked() {
	if !c.wire.closed.Load() {
		acked, _ := c.ackedThrough()
		c.wire.final.Store(acked)
		c.wire.closed.Store(true)
	}
	_ = c.nc.Close()
}

// closeStalled closes the connections that wrote f, the oldest batch a
// consumer holds, that have not confirmed it and whose peers acknowledged
// nothing new for -write-timeout: a client that reads acknowledges as it
// reads, however slowly, and one that does not holds up the
// acknowledgement of everything after f (the consumer acknowledges oldest
// first). It is what -write-timeout does to a write that blocks, for
// bytes the kernel took but the client does not. Called at every look at
// the held batches, so that progress is seen as it happens.
func (h *hub) closeStalled(f flight) {
	now := time.Now()
	f.eachMark(func(m mark) {
		stalled := m.c.stalledFor(now, m.end)
		if stalled >= h.writeTimeout && now.Sub(f.at) >= h.writeTimeout && !m.c.gone.Load() {
			m.c.closeTooSlow("client too slow: nothing acknowledged for -write-timeout")
		}
	})
}

// eachMark calls fn with where f ends on each connection that wrote it.
func (f *flight) eachMark(fn func(mark)) {
	if f.t == nil {
		if f.one.c != nil {
			fn(f.one)
		}
		return
	}
	f.t.mu.Lock()
	marks := f.t.marks // appended to only under mu; the prefix read here does not change
	f.t.mu.Unlock()
	for _, m := range marks {
		fn(m)
	}
}

// stalledFor is how long c's peer has acknowledged nothing new while bytes
// up to end wait for it, as far as the calls to it saw; 0 when end is
// acknowledged. Only the consumer of c's user calls it.
func (c *conn) stalledFor(now time.Time, end int64) time.Duration {
	acked, _ := c.ackedThrough()
	if acked >= end {
		return 0
	}
	if acked != c.progressOff.Load() {
		c.progressOff.Store(acked)
		c.progressAt.Store(now.UnixNano())
		return 0
	}
	return now.Sub(time.Unix(0, c.progressAt.Load()))
}

// refusedBy reports whether a connection that wrote f closed with an
// error code of its own (it refused what it got).
func (f *flight) refusedBy() bool {
	refused := false
	f.eachMark(func(m mark) { refused = refused || m.c.refused.Load() })
	return refused
}

// countedConn counts the bytes written to a TCP socket below TLS, where a
// frame's offset on the wire is not its offset in the stream.
type countedConn struct {
	*net.TCPConn
	sent atomic.Int64
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.TCPConn.Write(p)
	c.sent.Add(int64(n))
	return n, err
}

// countingListener hands out its TCP connections as countedConns.
type countingListener struct{ net.Listener }

func (l countingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if tc, ok := nc.(*net.TCPConn); ok {
		return &countedConn{TCPConn: tc}, nil
	}
	return nc, err
}
