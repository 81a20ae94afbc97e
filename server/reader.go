package server

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
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

// readLoop reads the client's frames on the connection's goroutine until
// the connection ends and returns why: the portable model, and the one of
// TLS connections (see reactor for the other). It pings a silent peer
// and closes it when it stays silent; frameReader does the rest.
func (s *Server) readLoop(c *conn, br *bufio.Reader) error {
	r := s.newFrameReader(c, c.write)
	err := r.run(br, s.cfg.IdleTimeout)
	s.readEnded(c, r, err)
	return err
}

// newFrameReader is a frame reader of c, answering through send.
func (s *Server) newFrameReader(c *conn, send func([]byte) error) *frameReader {
	r := readerPool.Get().(*frameReader)
	c.rs.rate.max = s.cfg.MaxMessageRate
	*r = frameReader{c: c, max: s.cfg.MaxMessage, reply: s.greet.reply, send: send, budget: &s.partial,
		rs: &c.rs, state: ws.StateServerSide}
	return r
}

// readerPool keeps frame readers between connections: the reactor lends
// one to a connection only while bytes come (reactor.read), so that an
// idle connection holds none.
var readerPool = sync.Pool{New: func() any { return new(frameReader) }}

// idle reports whether r is between frames and messages: it holds nothing
// that the next bytes need, and may go back to the pool (giveBack).
func (r *frameReader) idle() bool {
	return r.hn == 0 && !r.inPayload && !r.state.Fragmented() && len(r.msg) == 0
}

// giveBack returns r to the pool; the caller drops it.
func (r *frameReader) giveBack() {
	*r = frameReader{}
	readerPool.Put(r)
}

// readState is what of a connection's reading outlives its frame reader:
// the frame rate's window, and when the frame being read began (unix
// nanos, 0 between frames: all of a frame must arrive within the idle
// timeout; the reactor's sweep reads it).
type readState struct {
	rate  frameRate
	since atomic.Int64
}

// readEnded is the reader's part of the end of c: what its partial
// message held goes back to the budget, and a close it decided (or the
// client's, echoed) is sent.
func (s *Server) readEnded(c *conn, r *frameReader, err error) {
	if r != nil {
		r.budget.release(len(r.msg))
		r.giveBack()
	}
	var ce *closeErr
	if errors.As(err, &ce) {
		reason := ce.reason
		if ce.byPeer {
			reason = "" // echo the client's code (§5.5.1), not its words
			// A client that closes saying it cannot take what it got
			// (1009 message too big, 1003 unsupported data, 1007 invalid
			// payload, 1008 policy, or 4000, which a browser may send
			// where it may not send those: /redpush.js does when its
			// handler throws) refused it: its closing is a failed
			// delivery (the dead-letter rule); any other close is not.
			switch ce.code {
			case ws.StatusMessageTooBig, ws.StatusUnsupportedData, ws.StatusInvalidFramePayloadData, ws.StatusPolicyViolation, statusCannotTake:
				c.refused.Store(true)
			}
		}
		c.closeWith(ce.code, reason, time.Now().Add(min(s.cfg.WriteTimeout, time.Second)))
	}
}

// statusCannotTake is the close code of a client that cannot take the
// message it got (an application code: a browser may send only 1000 and
// 3000-4999).
const statusCannotTake ws.StatusCode = 4000

// frameReader is the read side of one connection as a state machine fed
// with bytes (feed), however they are split: between frames, gathering a
// frame's header, or reading its payload. It answers pings and every data
// message (with reply, the original's on-message "hello"), and enforces
// RFC 6455 and the limits: gobwas/ws neither checks nor unmasks frames. It
// never reads by itself, so either a goroutine blocked on the socket
// (readLoop) or a reactor task with the bytes of one readable event can
// drive it.
type frameReader struct {
	c     *conn
	max   int
	reply []byte             // the frame that answers each data message
	send  func([]byte) error // writes an answer (pong, reply)
	state ws.State
	msg   []byte    // the data message being assembled; its length is held in budget
	op    ws.OpCode // its opcode (text or binary)

	budget *partialBudget
	rs     *readState

	// The frame being read: hn bytes of its header so far, then the
	// header h and done bytes of its payload (inPayload). A control
	// frame's payload gathers in ctl (at most 125 bytes).
	hdr       [ws.MaxHeaderSize]byte
	hn        int
	h         ws.Header
	inPayload bool
	done      int64
	ctl       []byte
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

// feed handles the client bytes p: every frame they complete is acted
// on, a frame they leave incomplete is kept for the next call. An error
// ends the connection: a *closeErr says with which close.
func (r *frameReader) feed(p []byte) error {
	for {
		if !r.inPayload {
			if len(p) == 0 {
				return nil
			}
			n, complete, err := r.header(p)
			p = p[n:]
			if err != nil || !complete {
				return err
			}
			if err := r.begin(); err != nil {
				return err
			}
		}
		if r.done < r.h.Length {
			if len(p) == 0 {
				return nil
			}
			k := int(min(int64(len(p)), r.h.Length-r.done))
			if err := r.payload(p[:k]); err != nil {
				return err
			}
			p = p[k:]
			if r.done < r.h.Length {
				return nil
			}
		}
		if err := r.complete(); err != nil {
			return err
		}
	}
}

// mid reports whether a frame has begun and not ended.
func (r *frameReader) mid() bool { return r.hn > 0 }

// header gathers the frame header's bytes from p; once it has all of them
// (complete) it parses it into r.h. n is how many bytes of p it took.
func (r *frameReader) header(p []byte) (n int, complete bool, err error) {
	if r.hn == 0 {
		r.rs.since.Store(time.Now().UnixNano())
	}
	for {
		need := headerSize(r.hdr[:r.hn])
		if r.hn == need {
			break
		}
		if n == len(p) {
			return n, false, nil
		}
		k := copy(r.hdr[r.hn:need], p[n:])
		r.hn += k
		n += k
	}
	b := r.hdr[:r.hn]
	h := ws.Header{Fin: b[0]&0x80 != 0, Rsv: (b[0] & 0x70) >> 4, OpCode: ws.OpCode(b[0] & 0x0f), Masked: b[1]&0x80 != 0}
	rest := b[2:]
	switch l := b[1] & 0x7f; l {
	case 126:
		h.Length, rest = int64(binary.BigEndian.Uint16(rest)), rest[2:]
	case 127:
		if rest[0]&0x80 != 0 {
			// A 64-bit length with its top bit set (2^63 and more): RFC
			// 6455 §5.2 forbids it. Lengths below that but over the limit
			// get 1009.
			return n, false, &closeErr{code: ws.StatusProtocolError, reason: ws.ErrHeaderLengthMSB.Error()}
		}
		h.Length, rest = int64(binary.BigEndian.Uint64(rest)), rest[8:]
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		copy(h.Mask[:], rest)
	}
	r.h = h
	return n, true, nil
}

// headerSize is the size of the header whose first bytes are b: 2 until
// the second byte says more.
func headerSize(b []byte) int {
	if len(b) < 2 {
		return 2
	}
	n := 2
	if b[1]&0x80 != 0 {
		n += 4
	}
	switch b[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	return n
}

// begin checks the header just read against the rate, RFC 6455 and the
// message limit, and starts reading its payload.
func (r *frameReader) begin() error {
	h := r.h
	if !r.rs.rate.allow(time.Now()) {
		return &closeErr{code: ws.StatusPolicyViolation, reason: "too many frames per second (-max-message-rate)"}
	}
	if err := ws.CheckHeader(h, r.state); err != nil {
		return &closeErr{code: ws.StatusProtocolError, reason: err.Error()}
	}
	if !h.OpCode.IsControl() && h.Length > int64(r.max-len(r.msg)) {
		return &closeErr{code: ws.StatusMessageTooBig, reason: "message too big"}
	}
	r.inPayload, r.done = true, 0
	return nil
}

// payload takes p, bytes of the current frame's payload, unmasked: a data
// frame's into the message, from the budget (a buffer grows by what
// arrives, never by what a header declares: 14 bytes declaring 64 KiB pin
// nothing), a control frame's into ctl.
func (r *frameReader) payload(p []byte) error {
	if r.h.OpCode.IsControl() {
		start := len(r.ctl)
		r.ctl = append(r.ctl, p...)
		ws.Cipher(r.ctl[start:], r.h.Mask, int(r.done))
		r.done += int64(len(p))
		return nil
	}
	if !r.budget.take(len(p)) {
		return &closeErr{code: ws.StatusPolicyViolation, reason: "server busy: too many partial messages"}
	}
	start := len(r.msg)
	r.msg = append(r.msg, p...)
	ws.Cipher(r.msg[start:], r.h.Mask, int(r.done)) // §5.3: the mask runs over the frame's payload
	r.done += int64(len(p))
	return nil
}

// complete acts on the frame just read in full.
func (r *frameReader) complete() error {
	h := r.h
	r.inPayload, r.hn = false, 0
	r.rs.since.Store(0)
	if h.OpCode.IsControl() {
		p := r.ctl
		r.ctl = nil // an idle connection keeps no buffer
		return r.control(h, p)
	}
	if h.OpCode != ws.OpContinuation {
		r.op = h.OpCode
	}
	if !h.Fin {
		r.state = r.state.Set(ws.StateFragmented)
		return nil
	}
	r.state = r.state.Clear(ws.StateFragmented)
	msg := r.msg
	valid := r.op != ws.OpText || utf8.Valid(msg)
	r.budget.release(len(msg))
	r.msg = nil // an idle connection keeps no buffer
	if !valid {
		// RFC 6455 §8.1: invalid UTF-8 in a text message fails the connection.
		return &closeErr{code: ws.StatusInvalidFramePayloadData, reason: "invalid UTF-8 in text message"}
	}
	if r.c != nil && r.c.ack != nil && r.op == ws.OpText {
		if isAck, err := r.c.takeAck(msg); isAck {
			return err // an ack gets no reply
		}
	}
	return r.send(r.reply)
}

// control handles ping, pong and close (RFC 6455 §5.5), p the payload.
func (r *frameReader) control(h ws.Header, p []byte) error {
	switch h.OpCode {
	case ws.OpPing:
		return r.send(ws.MustCompileFrame(ws.NewPongFrame(p)))
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

// run drives r from br on the connection's goroutine until the connection
// ends, and returns why. Between frames it waits for the next one's first
// byte without consuming it, so that a deadline there leaves the stream
// intact: after half of idle the peer is pinged (RFC 6455 §5.5.2), after
// all of it closed. A frame that has begun must end within idle.
func (r *frameReader) run(br *bufio.Reader, idle time.Duration) error {
	var buf [512]byte
	for {
		if !r.mid() {
			if err := r.awaitFrame(br, idle); err != nil {
				return err
			}
		}
		deadline := time.Now().Add(idle)
		if since := r.rs.since.Load(); since != 0 {
			deadline = time.Unix(0, since).Add(idle)
		}
		_ = r.c.nc.SetReadDeadline(deadline)
		if r.c.gone.Load() { // closed meanwhile: the deadline above replaced its wake-up
			return ErrConnClosed
		}
		n, err := br.Read(buf[:])
		if ferr := r.feed(buf[:n]); ferr != nil {
			return ferr
		}
		if err != nil {
			if errors.Is(err, io.EOF) && r.mid() {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
}

// awaitFrame waits for the first byte of the next frame (run).
func (r *frameReader) awaitFrame(br *bufio.Reader, idle time.Duration) error {
	pinged := false
	for {
		_ = r.c.nc.SetReadDeadline(time.Now().Add(idle / 2))
		if r.c.gone.Load() { // the server closed it: its wake-up may have been overwritten
			return ErrConnClosed
		}
		_, err := br.Peek(1)
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
