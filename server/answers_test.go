package server_test

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// A message, a ping and a close in one segment: the reply and the pong
// come before the close echo, every time. Seen failing (found by review)
// in the reactor, which queues its answers: 43 of 100 got the close alone.
func TestAnswersComeBeforeTheCloseEcho(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	for i := range 100 {
		c := g.dialReady(fmt.Sprint("o", i))
		var b bytes.Buffer
		_ = ws.WriteFrame(&b, ws.MaskFrame(ws.NewTextFrame([]byte("hi"))))
		_ = ws.WriteFrame(&b, ws.MaskFrame(ws.NewPingFrame([]byte("p"))))
		_ = ws.WriteFrame(&b, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))))
		if _, err := c.Conn.Write(b.Bytes()); err != nil {
			t.Fatal(err)
		}
		var ops []ws.OpCode
		_ = c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			f, err := ws.ReadFrame(c.Conn)
			if err != nil {
				break
			}
			ops = append(ops, f.Header.OpCode)
			if f.Header.OpCode == ws.OpClose {
				break
			}
		}
		if want := []ws.OpCode{ws.OpText, ws.OpPong, ws.OpClose}; fmt.Sprint(ops) != fmt.Sprint(want) {
			t.Fatalf("connection %d got %v, want %v", i, ops, want)
		}
	}
}

func heapBytes() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// A client that sends messages and never reads the replies is pushed
// back by TCP: the server stops reading it while its answers wait, rather
// than queue them. 5 million tiny messages (40 MB) do not all go in, and
// the server's heap does not grow by more than a few megabytes. Seen
// failing (found by review) in the reactor: 2.4 GB of queued replies.
func TestAClientThatDoesNotReadIsPushedBack(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, MaxMessageRate: 1_000_000, MaxQueuedBytes: 1 << 30})
	c := testutil.DialBuffer(t, g.addr, "flood", 4096)
	var frames bytes.Buffer
	for range 5_000_000 {
		_ = ws.WriteFrame(&frames, ws.MaskFrame(ws.NewTextFrame([]byte("hi"))))
	}
	before := heapBytes()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Conn.Write(frames.Bytes())
	grew := int64(heapBytes()) - int64(before)
	t.Logf("the client wrote %d of %d bytes (%v); the heap grew by %d KiB", n, frames.Len(), err, grew>>10)
	if n == frames.Len() {
		t.Fatalf("the server read all %d bytes of a client that reads nothing", n)
	}
	if grew > 32<<20 {
		t.Fatalf("the heap grew by %d MiB for one client that does not read", grew>>20)
	}
}
