package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// A seat is one browser tab of the chaos run: a user on one instance, that
// reconnects whenever its connection ends, for the whole run. Its
// connState lives across reconnects, so a message it gets twice (requeued
// after a crash) is a duplicate, and an older one after a newer a
// reordering.

type seatKind int

func (k seatKind) String() string {
	return [...]string{"normal reader", "slow reader", "stopper"}[k]
}

const (
	seatNormal  seatKind = iota
	seatSlow             // reads a few frames a second
	seatStopper          // stops reading for a while, then reads on
)

type seat struct {
	user    string
	inst    int
	kind    seatKind
	st      *connState
	stopAt  time.Duration // stoppers: when to stop reading, from the start
	stopFor time.Duration
	// ack: it connects with ?ack=1 and acknowledges what it processed;
	// ids are the ids it processed, across its connections (a client's
	// de-duplication), redeliveries the frames it dropped for that.
	ack          bool
	ids          map[string]bool
	redeliveries atomic.Int64

	mu        sync.Mutex
	conn      net.Conn
	inFrame   bool // the reader is inside a frame: a drop waits for its end
	connected atomic.Bool
	stopping  atomic.Bool  // a stopper that is not reading now
	dropReq   atomic.Int32 // dropClose or dropReset, for the reader
	dials     atomic.Int64
	// closedWhileStopped counts connections that ended while this stopper
	// did not read, on instance 0, which the run never restarts: only the
	// server's push-back (outbox full, write timeout) closes them there.
	closedWhileStopped atomic.Int64
	// drops are when the run dropped this seat's connections, for the
	// report of a user who lost messages; under mu.
	drops []drop
}

// drop is one connection the run ended: when, since the start, and how.
type drop struct {
	at    time.Duration
	reset bool
}

// runSeat connects, reads, and reconnects until ctx ends. addr returns the
// seat's instance's address.
func (s *seat) run(ctx context.Context, t0 time.Time, addr func(int) string, format string, tr *tracker, rng *rand.Rand) {
	backoff := 50 * time.Millisecond
	stopped := false
	for ctx.Err() == nil {
		c, r, err := s.dial(ctx, addr(s.inst))
		if err != nil {
			sleepCtx(ctx, backoff+time.Duration(rng.Int64N(int64(backoff))))
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		s.read(ctx, c, r, t0, format, tr, &stopped)
		s.connected.Store(false)
		_ = c.Close()
	}
}

func (s *seat) dial(ctx context.Context, addr string) (net.Conn, *bufio.Reader, error) {
	d := ws.Dialer{Timeout: 5 * time.Second}
	if s.kind == seatStopper {
		// A small receive buffer: the server's writes to a stopped reader
		// block after a few kilobytes, and its outbox takes the rest.
		d.NetDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			nd := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
				return errors.Join(err, serr)
			}}
			return nd.DialContext(ctx, network, addr)
		}
	}
	u := "ws://" + addr + "/?user_id=" + url.QueryEscape(s.user)
	if s.ack {
		u += "&ack=1"
	}
	c, br, _, err := d.Dial(ctx, u)
	if err != nil {
		return nil, nil, err
	}
	r := bufio.NewReaderSize(c, 4<<10)
	if br != nil {
		r = bufio.NewReaderSize(io.MultiReader(br, c), 4<<10)
	}
	s.mu.Lock()
	s.conn = c
	s.mu.Unlock()
	s.dials.Add(1)
	s.connected.Store(true)
	return c, r, nil
}

// read parses frames until the connection ends. A stopper, once its time
// comes, stops reading for stopFor (the server may close it meanwhile),
// then reads what its socket holds and carries on.
//
// A drop is carried out here, between two frames, so that nothing that
// reached this socket goes unread: the chaos run breaks connections, it
// does not stage TCP's own hole (a frame written into a socket whose peer
// has just gone away, which no server can see).
func (s *seat) read(ctx context.Context, c net.Conn, r *bufio.Reader, t0 time.Time, format string, tr *tracker, stopped *bool) {
	f := frameReader{c: c, r: r, format: format, tr: tr, st: s.st}
	if s.ack {
		f.ack = s
	}
	stoppedHere, dropped := false, false // this connection lived through the stop; the run dropped it
	defer func() {
		if stoppedHere && !dropped && s.inst == 0 && ctx.Err() == nil {
			s.closedWhileStopped.Add(1)
		}
	}()
	for ctx.Err() == nil {
		if req := s.dropReq.Swap(0); req != 0 {
			dropped = true
			s.finishDrop(&f, req == dropReset)
			s.mu.Lock()
			s.drops = append(s.drops, drop{at: time.Since(t0), reset: req == dropReset})
			s.mu.Unlock()
			return
		}
		if s.kind == seatStopper && !*stopped && time.Since(t0) >= s.stopAt {
			*stopped = true
			s.stopping.Store(true)
			s.dropReq.Store(0) // one asked for just before the stop is not carried out after it
			sleepCtx(ctx, s.stopFor)
			s.mu.Lock()
			_ = c.SetReadDeadline(time.Time{}) // the cancelled drop's wake-up
			s.mu.Unlock()
			s.stopping.Store(false)
			stoppedHere = true
		}
		if _, err := r.Peek(1); err != nil { // a safe point: no frame begun
			if isTimeout(err) && s.dropReq.Load() != 0 {
				_ = c.SetReadDeadline(time.Time{})
				continue
			}
			return
		}
		s.mu.Lock()
		s.inFrame = true
		_ = c.SetReadDeadline(time.Time{})
		s.mu.Unlock()
		more := f.next()
		s.mu.Lock()
		s.inFrame = false
		s.mu.Unlock()
		if !more {
			return
		}
		if s.kind == seatSlow {
			sleepCtx(ctx, 300*time.Millisecond)
		}
	}
}

// frameReader reads one connection's frames into the tracker.
type frameReader struct {
	c       net.Conn
	r       *bufio.Reader
	format  string
	tr      *tracker
	st      *connState
	greeted bool
	closed  bool  // the server's close frame arrived
	ack     *seat // acknowledged delivery: the seat whose ids it checks
}

// next reads one frame; false when the connection is done.
func (f *frameReader) next() bool {
	h, err := ws.ReadHeader(f.r)
	if err != nil {
		return false
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(f.r, p); err != nil {
		return false
	}
	switch h.OpCode {
	case ws.OpPing:
		_ = ws.WriteFrame(f.c, ws.MaskFrameInPlace(ws.NewPongFrame(p)))
		return true
	case ws.OpClose:
		f.closed = true
		return false
	case ws.OpText, ws.OpBinary:
	default:
		return true
	}
	if !f.greeted {
		f.greeted = true
		return true
	}
	if f.ack != nil {
		return f.takeAcked(p)
	}
	st, err := parseFrame(f.format, p)
	if err != nil {
		f.tr.garbage.Add(1)
		return true
	}
	f.tr.record(f.st, st, time.Now())
	return true
}

// takeAcked processes a pushed frame of acknowledged delivery as a client
// does: an id it processed before is dropped, any other is processed (the
// tracker books it: a message booked twice was processed twice), and
// either is acknowledged, which acknowledges everything before it on this
// connection too.
func (f *frameReader) takeAcked(p []byte) bool {
	id, data, _, ok := parseAckFrame(p)
	if !ok {
		f.tr.garbage.Add(1)
		return true
	}
	if f.ack.ids[string(id)] {
		f.ack.redeliveries.Add(1)
	} else {
		st, err := parsePayload(data)
		if err != nil {
			f.tr.garbage.Add(1)
			return true
		}
		f.ack.ids[string(id)] = true
		f.tr.record(f.st, st, time.Now())
	}
	frame := ackFrame(id)
	return ws.WriteFrame(f.c, ws.MaskFrameInPlace(frame)) == nil
}

const (
	dropClose = 1
	dropReset = 2
)

// drop asks the seat's reader to end its connection as a tab or a network
// would: with a close frame, or with a TCP reset. The seat reconnects. A
// stopper that is not reading is left alone: what it has not read would be
// lost by the client, not by the server.
func (s *seat) drop(reset bool) bool {
	if !s.connected.Load() || s.stopping.Load() {
		return false
	}
	req := int32(dropClose)
	if reset {
		req = dropReset
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return false
	}
	s.dropReq.Store(req)
	if !s.inFrame {
		_ = s.conn.SetReadDeadline(time.Now()) // wake the reader at its safe point
	}
	return true
}

// finishDrop closes the connection. A close is the closing handshake of
// RFC 6455 §5.5.1: send a close frame, read on until the server's. A reset
// is a tab that vanishes when nothing is on its way to it: a reset discards
// what the sockets hold, and a frame the server wrote would be lost by TCP,
// which no server can see (only an application-level ack could). Nothing
// unread on this side is not enough: behind a small receive window (a
// stopper catching up) megabytes wait in the server's send buffer. So it
// reads until nothing has arrived for quietFor and the socket holds nothing
// unread, then closes at once with SO_LINGER 0; a connection that does not
// fall quiet within a few seconds gets the closing handshake instead.
func (s *seat) finishDrop(f *frameReader, reset bool) {
	if reset {
		tc, ok := f.c.(*net.TCPConn)
		const quietFor = 200 * time.Millisecond
		quiet := false
		for deadline := time.Now().Add(5 * time.Second); ok && time.Now().Before(deadline); {
			// The deadline only ever waits for a frame to begin: one that
			// fired inside a frame would leave it half read.
			_ = f.c.SetReadDeadline(time.Now().Add(quietFor))
			if _, err := f.r.Peek(1); err != nil {
				quiet = !isTimeout(err) || unread(tc) == 0 // ended, or quiet
				break
			}
			_ = f.c.SetReadDeadline(time.Time{})
			if !f.next() {
				quiet = true // the connection ended: nothing is on its way
				break
			}
		}
		if quiet {
			_ = tc.SetLinger(0)
			_ = f.c.Close()
			return
		}
	}
	_ = f.c.SetDeadline(time.Now().Add(2 * time.Second))
	_ = ws.WriteFrame(f.c, ws.MaskFrameInPlace(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, "chaos"))))
	for !f.closed && f.next() {
	}
}

// unread is how many bytes the kernel holds for tc that were not read.
func unread(tc *net.TCPConn) int {
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	_ = rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// close ends the seat for good (the run is over).
func (s *seat) close() {
	s.mu.Lock()
	if s.conn != nil {
		_ = s.conn.Close()
	}
	s.mu.Unlock()
}
