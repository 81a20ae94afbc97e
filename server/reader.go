package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// closeErr is why the reader ended a connection with a close frame: the
// client's own close (echoed), or one the server sends.
type closeErr struct {
	code   ws.StatusCode
	reason string
	byPeer bool
}

func (e *closeErr) Error() string { return e.reason }

// String is the close in words for the log, e.g. "client sent close 1001"
// or "server sent close 1009 message too big".
func (e *closeErr) String() string {
	who := "server"
	if e.byPeer {
		who = "client"
	}
	return strings.TrimSpace(fmt.Sprintf("%s sent close %d %s", who, e.code, e.reason))
}

// readLoop reads the client's frames until the connection ends and returns
// why. It answers pings, answers every data message with "hello" (the
// original's on-message reply), pings a silent peer and closes it when it
// stays silent, and enforces RFC 6455 and the message size limit: gobwas/ws
// neither checks nor unmasks what ws.ReadHeader returns.
func (s *Server) readLoop(c *conn, br *bufio.Reader) error {
	r := frameReader{c: c, br: br, max: s.cfg.MaxMessage, idle: s.cfg.IdleTimeout, reply: s.greet.reply, budget: &s.partial,
		rate: frameRate{max: s.cfg.MaxMessageRate}}
	err := r.run()
	r.budget.release(len(r.msg))
	var ce *closeErr
	if errors.As(err, &ce) {
		reason := ce.reason
		if ce.byPeer {
			reason = "" // echo the client's code (§5.5.1), not its words
			// A client that closes saying it cannot take what it got
			// (1009 message too big, 1003 unsupported data, 1007 invalid
			// payload, 1008 policy) refused it: its closing is a failed
			// delivery (the dead-letter rule); any other close is not.
			switch ce.code {
			case ws.StatusMessageTooBig, ws.StatusUnsupportedData, ws.StatusInvalidFramePayloadData, ws.StatusPolicyViolation:
				c.refused.Store(true)
			}
		}
		c.closeWith(ce.code, reason, time.Now().Add(min(s.cfg.WriteTimeout, time.Second)))
	}
	return err
}

type frameReader struct {
	c     *conn
	br    *bufio.Reader
	max   int
	idle  time.Duration
	reply []byte // the frame that answers each data message
	state ws.State
	msg   []byte    // the data message being assembled; its length is held in budget
	op    ws.OpCode // its opcode (text or binary)

	budget *partialBudget
	rate   frameRate
}

// frameRate bounds the frames a client sends per second
// (Config.MaxMessageRate), in fixed one-second windows: each frame costs the
// server a read and most an answer, so a client sending a million tiny ones
// is closed rather than served.
type frameRate struct {
	max    int
	window time.Time // start of the current second
	n      int       // frames in it
}

// allow counts one frame read at now and reports whether it is within the
// bound.
func (f *frameRate) allow(now time.Time) bool {
	if now.Sub(f.window) >= time.Second {
		f.window, f.n = now, 0
	}
	f.n++
	return f.n <= f.max
}

// partialBudget bounds the bytes that all connections' partial messages
// hold together (Config.MaxPendingBytes): a message buffer grows as its
// bytes arrive, never by what a header declares, and the connection whose
// bytes would pass the bound is closed with 1008.
type partialBudget struct {
	max  int64
	held atomic.Int64
}

func (b *partialBudget) take(n int) bool {
	if b.held.Add(int64(n)) > b.max {
		b.held.Add(-int64(n))
		return false
	}
	return true
}

func (b *partialBudget) release(n int) { b.held.Add(-int64(n)) }

// readChunk is the most a message buffer grows ahead of the bytes that
// arrive.
const readChunk = 4096

func (r *frameReader) run() error {
	r.state = ws.StateServerSide
	for {
		if err := r.awaitFrame(); err != nil {
			return err
		}
		// The frame has begun: all of it must arrive within the idle timeout.
		_ = r.c.nc.SetReadDeadline(time.Now().Add(r.idle))
		if r.c.gone.Load() { // closed meanwhile: the deadline above replaced its wake-up
			return ErrConnClosed
		}
		if err := r.readFrame(); err != nil {
			return err
		}
	}
}

// awaitFrame waits for the first byte of the next frame without consuming
// it, so that a deadline here leaves the stream intact: after half the idle
// timeout the peer is pinged (RFC 6455 §5.5.2), after all of it closed.
func (r *frameReader) awaitFrame() error {
	pinged := false
	for {
		wait := r.idle / 2
		_ = r.c.nc.SetReadDeadline(time.Now().Add(wait))
		if r.c.gone.Load() { // the server closed it: its wake-up may have been overwritten
			return ErrConnClosed
		}
		_, err := r.br.Peek(1)
		if err == nil {
			return nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || r.c.gone.Load() {
			return err // broken, or woken because the server closed it
		}
		if pinged {
			return &closeErr{code: ws.StatusGoingAway, reason: "idle timeout"}
		}
		if err := r.c.write(framePing); err != nil {
			return err
		}
		pinged = true
	}
}

func (r *frameReader) readFrame() error {
	h, err := ws.ReadHeader(r.br)
	if errors.Is(err, ws.ErrHeaderLengthMSB) {
		// A 64-bit length with its top bit set (2^63 and more): RFC 6455
		// §5.2 forbids it. Lengths below that but over the limit get 1009.
		return &closeErr{code: ws.StatusProtocolError, reason: err.Error()}
	}
	if err != nil {
		return err
	}
	if !r.rate.allow(time.Now()) {
		return &closeErr{code: ws.StatusPolicyViolation, reason: "too many frames per second (-max-message-rate)"}
	}
	if err := ws.CheckHeader(h, r.state); err != nil {
		return &closeErr{code: ws.StatusProtocolError, reason: err.Error()}
	}
	if h.OpCode.IsControl() {
		return r.control(h)
	}
	if h.Length > int64(r.max-len(r.msg)) {
		return &closeErr{code: ws.StatusMessageTooBig, reason: "message too big"}
	}
	if err := r.readPayload(h); err != nil {
		return err
	}
	if h.OpCode != ws.OpContinuation {
		r.op = h.OpCode
	}
	if !h.Fin {
		r.state = r.state.Set(ws.StateFragmented)
		return nil
	}
	r.state = r.state.Clear(ws.StateFragmented)
	valid := r.op != ws.OpText || utf8.Valid(r.msg)
	r.budget.release(len(r.msg))
	r.msg = r.msg[:0]
	if cap(r.msg) > 4096 { // idle connections should not keep a big buffer
		r.msg = nil
	}
	if !valid {
		// RFC 6455 §8.1: invalid UTF-8 in a text message fails the connection.
		return &closeErr{code: ws.StatusInvalidFramePayloadData, reason: "invalid UTF-8 in text message"}
	}
	return r.c.write(r.reply)
}

// readPayload appends the frame's payload to the message as it arrives, a
// read at a time, taking each read's bytes from the budget: a header alone
// (14 bytes declaring 64 KiB) pins no more than one chunk of capacity.
func (r *frameReader) readPayload(h ws.Header) error {
	for done := 0; done < int(h.Length); {
		start := len(r.msg)
		want := min(int(h.Length)-done, readChunk)
		r.msg = slices.Grow(r.msg, want)
		n, err := r.br.Read(r.msg[start : start+want])
		if n > 0 {
			if !r.budget.take(n) {
				r.msg = r.msg[:start]
				return &closeErr{code: ws.StatusPolicyViolation, reason: "server busy: too many partial messages"}
			}
			r.msg = r.msg[:start+n]
			ws.Cipher(r.msg[start:], h.Mask, done) // §5.3: the mask runs over the frame's payload
			done += n
		}
		if err != nil {
			if errors.Is(err, io.EOF) && done < int(h.Length) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// control handles ping, pong and close (RFC 6455 §5.5).
func (r *frameReader) control(h ws.Header) error {
	var arr [ws.MaxControlFramePayloadSize]byte
	p := arr[:h.Length]
	if _, err := io.ReadFull(r.br, p); err != nil {
		return err
	}
	ws.Cipher(p, h.Mask, 0)
	switch h.OpCode {
	case ws.OpPing:
		return r.c.write(ws.MustCompileFrame(ws.NewPongFrame(p)))
	case ws.OpPong:
		return nil
	}
	// Close: echo the peer's status code (§5.5.1), after checking it (§7.4).
	if len(p) == 0 {
		return &closeErr{code: ws.StatusNormalClosure, byPeer: true}
	}
	if len(p) == 1 {
		return &closeErr{code: ws.StatusProtocolError, reason: "close payload of one byte"}
	}
	code, reason := ws.ParseCloseFrameData(p)
	if err := ws.CheckCloseFrameData(code, reason); err != nil {
		if errors.Is(err, ws.ErrProtocolInvalidUTF8) {
			return &closeErr{code: ws.StatusInvalidFramePayloadData, reason: err.Error()}
		}
		return &closeErr{code: ws.StatusProtocolError, reason: err.Error()}
	}
	return &closeErr{code: code, reason: reason, byPeer: true}
}
