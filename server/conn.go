package server

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// conn is one upgraded WebSocket connection. Its reader goroutine owns the
// read side; writes from any goroutine go through write, which holds wmu, so
// one frame sequence is on the wire at a time (gobwas/ws does no locking).
type conn struct {
	fd    uint64 // per-process, never reused
	user  string
	until time.Time // when its token expires (with leeway); zero without authentication
	nc    net.Conn
	sess  *session

	writeTimeout time.Duration
	maxQueued    int                    // Config.MaxQueuedBytes
	m            *metrics               // write failures
	out          outbox                 // batches for this connection (writer.go)
	slowWhy      atomic.Pointer[string] // set when the outbox closes the connection: the reason wins
	// stopBy, when not zero, is the unix-nanos deadline of a shutdown: no
	// write may block past it, whenever it starts.
	stopBy atomic.Int64

	// gone mirrors closed for readers that do not take wmu: a consumer
	// hands no batch to, and does not wait on, a connection that is
	// closing but not yet unregistered (its reader may linger a second).
	gone atomic.Bool

	wmu    sync.Mutex
	closed bool   // under wmu: the socket is closed, writes fail
	why    string // under wmu: why the server closed it, for the log
}

// write sends p, which holds whole frames, under the write deadline. A failed
// write closes the socket: a partial frame cannot be continued, and the
// reader goroutine then sees the error and unregisters the connection.
func (c *conn) write(p []byte) error {
	_, err := c.writeFrames(p)
	return err
}

// writeDeadline is the write timeout from now, or the shutdown's deadline
// when that comes first.
func (c *conn) writeDeadline() time.Time {
	d := time.Now().Add(c.writeTimeout)
	if by := c.stopBy.Load(); by != 0 && by < d.UnixNano() {
		return time.Unix(0, by)
	}
	return d
}

// stop bounds every write of c, the one in progress included, by deadline.
// It takes no lock: a writer blocked on a full socket buffer holds wmu.
func (c *conn) stop(deadline time.Time) {
	c.stopBy.Store(deadline.UnixNano())
	_ = c.nc.SetWriteDeadline(deadline)
}

// closeWith sends a close frame with code and reason (RFC 6455 §5.5.1) and
// closes the socket. The frame is best effort, written before deadline: a
// peer that does not read must not hold up a shutdown.
func (c *conn) closeWith(code ws.StatusCode, reason string, deadline time.Time) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return
	}
	_ = c.nc.SetWriteDeadline(deadline)
	_, _ = c.nc.Write(ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(code, reason))))
	c.closeLocked((&closeErr{code: code, reason: reason}).String())
}

// closeLingering is closeWith for a close the reader decides, while the
// client may still be sending: a socket closed with unread input is reset
// by the kernel, which discards what it still had to send, the close frame
// included, so the client would see only a reset. It half-closes instead
// (the close frame, then FIN), reads and discards what the client still
// sends until it closes too, linger passes or a megabyte was read, and
// then closes. Writes fail from the start, as after closeWith.
func (c *conn) closeLingering(code ws.StatusCode, reason string, deadline time.Time, linger time.Duration, r io.Reader) {
	c.wmu.Lock()
	if c.closed {
		c.wmu.Unlock()
		return
	}
	_ = c.nc.SetWriteDeadline(deadline)
	_, _ = c.nc.Write(ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(code, reason))))
	c.markClosedLocked((&closeErr{code: code, reason: reason}).String())
	c.wmu.Unlock()
	if hc, ok := c.nc.(interface{ CloseWrite() error }); ok && hc.CloseWrite() == nil {
		_ = c.nc.SetReadDeadline(time.Now().Add(linger))
		_, _ = io.Copy(io.Discard, io.LimitReader(r, 1<<20))
	}
	_ = c.nc.Close()
}

// close closes the socket without a close frame.
func (c *conn) close() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.closeLocked("")
}

// closeLocked closes the socket once and keeps why the server did: the
// reader then fails with "use of closed network connection", which says
// nothing.
func (c *conn) closeLocked(why string) {
	if !c.closed {
		c.markClosedLocked(why)
		_ = c.nc.Close()
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
