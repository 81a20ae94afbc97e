package server

import (
	"encoding/binary"
	"encoding/json"
	"sync"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/redisq"
)

// encoder turns popped messages into ready-to-write WebSocket frames. A batch
// is encoded once into one buffer and that buffer is written, in one write
// call, to every connection of the user: server frames are unmasked
// (RFC 6455 §5.1), so the bytes are the same for each connection.
type encoder struct{ format string }

// appendFrames appends one frame per message to dst. A message popped
// for an ack connection carries its id (redisq.Wrap): a plain connection
// gets the payload alone.
func (e encoder) appendFrames(dst []byte, user, queue string, msgs []string) []byte {
	for _, m := range msgs {
		dst = e.appendFrame(dst, user, queue, redisq.Unwrap(m))
	}
	return dst
}

func (e encoder) appendFrame(dst []byte, user, queue, msg string) []byte {
	switch e.format {
	case FormatJSON:
		return appendFrame(dst, ws.OpText, jsonMessage(user, queue, msg))
	case FormatRaw:
		return append(appendHeader(dst, opFor(msg), len(msg)), msg...)
	default: // swoole: the exact text of the PHP original.
		const pre, mid = "redis 的 ", " 队列发送消息:"
		n := len(pre) + len(queue) + len(mid) + len(msg)
		dst = appendHeader(dst, opFor(msg), n)
		dst = append(dst, pre...)
		dst = append(dst, queue...)
		dst = append(dst, mid...)
		return append(dst, msg...)
	}
}

// jsonMessage is {"user","queue","data"}: data is the payload as a string,
// even when the payload is JSON itself. A payload that is not UTF-8 would
// become U+FFFD in a JSON string, so it goes intact as data_b64 instead.
func jsonMessage(user, queue, msg string) []byte {
	if utf8.ValidString(msg) {
		body, _ := json.Marshal(struct {
			User  string `json:"user"`
			Queue string `json:"queue"`
			Data  string `json:"data"`
		}{user, queue, msg})
		return body
	}
	body, _ := json.Marshal(struct {
		User    string `json:"user"`
		Queue   string `json:"queue"`
		DataB64 []byte `json:"data_b64"` // base64, as encoding/json writes []byte
	}{user, queue, []byte(msg)})
	return body
}

// opFor sends a payload that is not UTF-8 as a binary frame: in a text frame
// it would make every browser fail the connection with 1007 (RFC 6455 §8.1),
// which the PHP original does, losing the connection and the message.
func opFor(msg string) ws.OpCode {
	if utf8.ValidString(msg) {
		return ws.OpText
	}
	return ws.OpBinary
}

func appendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	return append(appendHeader(dst, op, len(payload)), payload...)
}

// appendHeader appends an unmasked, final frame header (RFC 6455 §5.2):
// FIN and opcode, then the payload length in 7, 7+16 or 7+64 bits. Written
// by hand because ws.WriteHeader takes an io.Writer, which costs an
// allocation per frame on the hot path.
func appendHeader(dst []byte, op ws.OpCode, n int) []byte {
	dst = append(dst, 0x80|byte(op))
	switch {
	case n < 126:
		return append(dst, byte(n))
	case n <= 0xFFFF:
		return binary.BigEndian.AppendUint16(append(dst, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(dst, 127), uint64(n))
	}
}

// framePing is compiled once.
var framePing = ws.MustCompileFrame(ws.NewPingFrame(nil))

// greetings are the frames a connection gets besides pushed messages,
// compiled once per format: the greeting on open and the reply to each
// client message. The original's are bare text; in json format every frame
// is JSON, so that a client can parse each one.
type greetings struct{ hello, reply []byte }

func greetingsFor(format string) greetings {
	text := func(s string) []byte { return ws.MustCompileFrame(ws.NewTextFrame([]byte(s))) }
	if format == FormatJSON {
		return greetings{hello: text(`{"event":"hello"}`), reply: text(`{"event":"reply","data":"hello"}`)}
	}
	return greetings{hello: text("hello;\n"), reply: text("hello")}
}

// bufPool holds frame buffers for consumers: one batch is encoded once and
// written to every connection of its user.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) <= 1<<20 { // let a rare huge batch go to the GC
		bufPool.Put(b)
	}
}
