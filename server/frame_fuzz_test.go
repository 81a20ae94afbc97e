package server

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/redisq"
)

// FuzzFrameReader feeds arbitrary client bytes to the frame reader of an
// open connection. Whatever arrives, the reader must end (at the end of the
// input at the latest), hold no more than the message limit, give back
// every byte it took from the shared partial-message budget, and close
// only with a code RFC 6455 allows a server to send.
func FuzzFrameReader(f *testing.F) {
	frame, cat := clientFrame, catFrames
	for _, seed := range [][]byte{
		frame(true, ws.OpText, "hi"),
		cat(frame(false, ws.OpText, "a"), frame(true, ws.OpContinuation, "b")),
		frame(true, ws.OpPing, "p"),
		frame(true, ws.OpClose, "\x03\xe8bye"),
		frame(true, ws.OpText, "\xff"),
		{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, // 2^63 bytes declared
		{0x81, 0xfe, 0xff, 0xff, 1, 2, 3, 4, 'x'},           // 65535 declared, 1 sent
		{0x89, 0xfe, 0, 126, 1, 2, 3, 4},                    // a ping of 126 bytes
		{0x81, 0x02, 'h', 'i'},                              // unmasked
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		server, client := net.Pipe()
		defer server.Close()
		go func() {
			_, _ = client.Write(in)
			_ = client.Close()
		}()
		budget := &partialBudget{max: 1 << 12}
		c := &conn{nc: server, writeTimeout: time.Second, m: newMetrics()}
		r := &frameReader{c: c, max: 1 << 10, reply: framePing, send: c.write, budget: budget,
			rs: &readState{rate: frameRate{max: 1 << 20}}, state: ws.StateServerSide}
		err := r.run(bufio.NewReaderSize(server, 256), 10*time.Second)
		if len(r.msg) > r.max {
			t.Fatalf("holds %d bytes of message, limit %d", len(r.msg), r.max)
		}
		budget.release(len(r.msg))
		if held := budget.held.Load(); held != 0 {
			t.Fatalf("%d bytes of the partial budget never given back", held)
		}
		var ce *closeErr
		if errors.As(err, &ce) && !ce.byPeer && !serverCloseCodes[ce.code] {
			t.Fatalf("closes with %d (%s)", ce.code, ce.reason)
		}
		if err == nil {
			t.Fatal("the reader ended without a reason")
		}
	})
}

// clientFrame is a masked frame as a client sends it.
func clientFrame(fin bool, op ws.OpCode, p string) []byte {
	var b bytes.Buffer
	_ = ws.WriteFrame(&b, ws.MaskFrame(ws.NewFrame(op, fin, []byte(p))))
	return b.Bytes()
}

func catFrames(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// serverCloseCodes are the codes the reader sends for a client's fault.
var serverCloseCodes = map[ws.StatusCode]bool{
	ws.StatusGoingAway: true, ws.StatusProtocolError: true, ws.StatusInvalidFramePayloadData: true,
	ws.StatusPolicyViolation: true, ws.StatusMessageTooBig: true,
}

// FuzzHandshake runs the whole upgrade (gobwas/ws's parser with the
// server's checks) over an arbitrary request. An upgrade happens only for a
// valid user id, after the admission, and answers 101; a refusal is an
// HTTP response whose body is one line.
func FuzzHandshake(f *testing.F) {
	const valid = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, seed := range []string{
		"GET /?user_id=42 HTTP/1.1\r\n" + valid + "\r\n",
		"GET /?user_id=a%20b HTTP/1.1\r\n" + valid + "\r\n",
		"GET /?user_id=42 HTTP/1.1\r\n" + valid + "Origin: https://evil.example\r\n\r\n",
		"GET /?user_id=42 HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"POST /?user_id=1 HTTP/1.0\r\n" + valid + "\r\n",
		"GET /?user_id=%zz HTTP/1.1\r\n" + valid + "\r\n",
	} {
		f.Add(seed)
	}
	s := &Server{log: slog.New(slog.DiscardHandler)}
	s.cfg.AllowedOrigins = []string{"https://app.example"}
	f.Fuzz(func(t *testing.T, req string) {
		var id identity
		admitted := false
		u := s.upgrader(&net.TCPAddr{}, &id, func() error { admitted = true; return nil })
		var out bytes.Buffer
		_, err := u.Upgrade(struct {
			io.Reader
			io.Writer
		}{strings.NewReader(req), &out})
		resp := out.String()
		if err == nil {
			if !admitted || !redisq.ValidID(id.user) || !strings.HasPrefix(resp, "HTTP/1.1 101 ") {
				t.Fatalf("upgraded (admitted %v) user %q with %q", admitted, id.user, resp)
			}
			return
		}
		if admitted && strings.HasPrefix(resp, "HTTP/1.1 101 ") {
			t.Fatalf("101 after an error %v", err)
		}
		if head, body, ok := strings.Cut(resp, "\r\n\r\n"); ok && strings.Contains(strings.TrimSuffix(body, "\n"), "\n") {
			t.Fatalf("refusal %q has a body of several lines: %q", head, body)
		}
	})
}
