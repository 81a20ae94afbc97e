package server

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// conn is one upgraded WebSocket connection. Its reader (its goroutine,
// or a reactor task at a time) owns the read side; writes from any
// goroutine go through write, which holds wmu, so one frame sequence is on
// the wire at a time (gobwas/ws does no locking).
type conn struct {
	fd    uint64 // per-process, never reused
	user  string
	until time.Time // when its token expires (with leeway); zero without authentication
	nc    net.Conn
	sess  *session
	// ack is its acknowledgement state when it asked for acknowledged
	// delivery (?ack=1); nil for a plain connection.
	ack *acker

	writeTimeout time.Duration
	maxQueued    int                    // Config.MaxQueuedBytes
	m            *metrics               // write failures
	out          outbox                 // batches for this connection (writer.go)
	slowWhy      atomic.Pointer[string] // set when the outbox closes the connection: the reason wins
	// stopBy is the hub's shutdown deadline (unix nanos, 0 until a shutdown;
	// nil in unit tests): no write may block past it, whenever it starts,
	// and no close lingers past it, even one that already left the hub.
	stopBy *atomic.Int64

	// gone mirrors closed for readers that do not take wmu: a consumer
	// hands no batch to, and does not wait on, a connection that is
	// closing but not yet unregistered (its reader may linger a second).
	gone atomic.Bool

	// refused is set when the client closed with an error code of its
	// own: it refused what it got (consumer: a counted failure).
	refused atomic.Bool
	// progressOff is how far the peer had acknowledged when the consumer
	// last saw that move, at progressAt (unix nanos): closeStalled.
	progressOff, progressAt atomic.Int64

	// sent counts the bytes written (under wmu); wire reads it, or the
	// TLS layer's own count, to tell how far the peer acknowledged them
	// (confirm.go).
	sent atomic.Int64
	wire wire

	wmu    sync.Mutex
	closed bool   // under wmu: the socket is closed, writes fail
	why    string // under wmu: why the server closed it, for the log

	// expire ends the connection when its token expires; nil without
	// authentication.
	expire *time.Timer

	// The reactor's (reactor_linux.go), when it reads the connection:
	// rx is set under wmu (nil: a goroutine reads it), w is where it
	// stands, rd its frame reader while a frame or message is being read
	// (nil between them: only its reader task touches it), raw its
	// socket, lastRead when bytes last came (unix nanos), pinged whether
	// it was pinged since.
	rx       *reactor
	w        watch
	rd       *frameReader
	raw      syscall.RawConn
	lastRead atomic.Int64
	pinged   atomic.Bool
	// idleClosing is set when the idle sweep closes it: once.
	idleClosing atomic.Bool
	rs          readState // its reading's state between frame readers
}

// write sends p, which holds whole frames, under the write lock and
// deadline. A failed write ends the connection: a partial frame cannot be
// continued, and the reader is woken to unregister it. It fails
// with ErrConnClosed, having tried nothing, when the connection was closed
// already.
func (c *conn) write(p []byte) error {
	_, err := c.writeAt(p)
	return err
}

// writeAt is write, and reports the connection's wire offset after p: p
// is delivered once the peer acknowledged up to there (confirm.go).
func (c *conn) writeAt(p []byte) (end int64, err error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return 0, ErrConnClosed
	}
	_ = c.nc.SetWriteDeadline(c.writeDeadline())
	n, err := c.nc.Write(p)
	c.sent.Add(int64(n))
	if err != nil {
		c.m.writeFailures.Inc()
		c.closeLocked("write failed: " + err.Error())
		return 0, err
	}
	return c.wireSent(), nil
}

// writeDeadline is the write timeout from now, or the shutdown's deadline
// when that comes first.
func (c *conn) writeDeadline() time.Time {
	return c.bySoonest(time.Now().Add(c.writeTimeout))
}

// bySoonest is d, or the shutdown's deadline when that comes first.
func (c *conn) bySoonest(d time.Time) time.Time {
	if c.stopBy == nil {
		return d
	}
	if by := c.stopBy.Load(); by != 0 && by < d.UnixNano() {
		return time.Unix(0, by)
	}
	return d
}

// stop bounds the write in progress, if any, by the shutdown's deadline,
// which the hub set before; later writes read it in writeDeadline. It takes
// no lock: a writer blocked on a full socket buffer holds wmu.
func (c *conn) stop(deadline time.Time) {
	_ = c.nc.SetWriteDeadline(deadline)
}

// closeWith sends a close frame with code and reason (RFC 6455 §5.5.1) and
// ends the connection (closeLocked). The frame is best effort, written
// before deadline: a peer that does not read must not hold up a shutdown.
func (c *conn) closeWith(code ws.StatusCode, reason string, deadline time.Time) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return
	}
	_ = c.nc.SetWriteDeadline(deadline)
	n, _ := c.nc.Write(ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(code, reason))))
	c.sent.Add(int64(n))
	c.closeLocked((&closeErr{code: code, reason: reason}).String())
}

// close closes the socket for good: the end of serveConn, after the reader
// lingered.
func (c *conn) close() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.closed {
		c.markClosedLocked("")
	}
	c.shutLocked()
}

// closeLocked ends the connection once, for the server's reason why: no
// write goes out any more, and the socket is half-closed (FIN after what
// was written) and its reader woken (its goroutine, or the reactor: it
// stops reading), which lingers (endConn) and then closes it.
//
// Closing the socket at once would lose what it still holds for the client.
// A client that stopped reading for a while still has megabytes on their way
// to it in the kernel's send buffer, frames that count as delivered; when it
// reads on, it answers the ping it finds among them, and a frame arriving on
// a closed socket makes the kernel reset the connection, discarding the
// rest. Likewise a client still sending when the server closes it for its
// input would get a reset instead of the close frame. A lingering socket
// takes what the client sends and lets it read what is on its way.
func (c *conn) closeLocked(why string) {
	if c.closed {
		return
	}
	c.markClosedLocked(why)
	if halfClose(c.nc) {
		c.wire.fin.Store(true)
	} else {
		c.shutLocked() // cannot half-close, or broken already: nothing to wait for
	}
	// Wake the reader: its goroutine, or the reactor.
	if c.rx != nil {
		c.rx.stop(c)
	} else {
		_ = c.nc.SetReadDeadline(time.Now())
	}
}

// halfClose sends FIN after what was written: on a TCP socket, or below
// TLS after its close_notify (tls.Conn.CloseWrite does not half-close the
// socket, and SIOCOUTQ counts the FIN only once it is queued: wire.fin).
func halfClose(nc net.Conn) bool {
	if tc, ok := nc.(*tls.Conn); ok {
		if tc.CloseWrite() != nil {
			return false
		}
		nc = tc.NetConn()
	}
	hc, ok := nc.(interface{ CloseWrite() error })
	return ok && hc.CloseWrite() == nil
}

// linger is the reader's part of a close the server decided: it reads and
// drops what the client sends, until the client has taken everything (its
// kernel acknowledged every byte written), or closed its side, or sent a
// megabyte, or -write-timeout (or the shutdown's deadline) passed. The
// caller then closes the socket.
func (c *conn) linger(r io.Reader) {
	end := time.Now().Add(c.writeTimeout)
	left := int64(1 << 20)
	for left > 0 {
		// Read again each pass: a shutdown that begins meanwhile ends
		// the linger by its deadline.
		deadline := c.bySoonest(end)
		if !time.Now().Before(deadline) {
			return
		}
		if unsent(c.nc) == 0 {
			return
		}
		wait := time.Now().Add(20 * time.Millisecond)
		if wait.After(deadline) {
			wait = deadline
		}
		_ = c.nc.SetReadDeadline(wait)
		n, err := io.Copy(io.Discard, io.LimitReader(r, left))
		left -= n
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			return // the client closed, or reset, or sent its megabyte
		}
	}
}

// markClosedLocked makes every write fail from now on and keeps why; the
// socket is the caller's to close.
func (c *conn) markClosedLocked(why string) {
	if p := c.slowWhy.Load(); p != nil {
		why = *p
	}
	c.closed, c.why = true, why
	c.gone.Store(true)
	c.failOutbox()
}

// closedBecause is why the server closed the socket, "" if it did not.
func (c *conn) closedBecause() string {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.why
}
