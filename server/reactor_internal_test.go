//go:build linux && !redpush_goroutines

package server

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/internal/testutil"
)

// A connection the reactor paused (more than maxAnswers answers wait in
// its outbox: its client reads nothing) is not taken for a silent one:
// however long the pause lasts, the idle sweep neither pings nor closes
// it; once the client reads, it is read again. Seen failing (found by
// review): closed with 1001 "idle timeout" after -idle-timeout.
func TestAPausedConnectionIsNotIdle(t *testing.T) {
	// Long enough for the steps below, on a loaded machine, to end before
	// the client, silent until it pings, would be closed as idle.
	const idle = 3 * time.Second
	srv, _, addr := serveInternal(t, Config{Format: FormatRaw, IdleTimeout: idle, WriteTimeout: 30 * time.Second, MaxQueuedBytes: 1 << 30})
	cl := testutil.DialBuffer(t, addr, "slow", 4096)
	if got := cl.MustRead(); got != "hello;\n" {
		t.Fatalf("greeting %q", got)
	}
	h := srv.hub
	var c *conn
	testutil.Eventually(t, 5*time.Second, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, x := range h.conns {
			if x.user == "slow" {
				c = x
			}
		}
		if c == nil {
			return errors.New("not registered")
		}
		return nil
	})
	// 16 MiB it does not read: the writer blocks in their write, and the
	// answers queued behind pile up.
	big := ws.MustCompileFrame(ws.NewBinaryFrame(bytes.Repeat([]byte("x"), 16<<20)))
	_ = c.post(big)
	testutil.Eventually(t, 5*time.Second, func() error {
		c.out.mu.Lock()
		defer c.out.mu.Unlock()
		if len(c.out.queue) != 0 || !c.out.writing {
			return errors.New("the writer has not taken it")
		}
		return nil
	})
	for range maxAnswers + 8 {
		_ = c.post(framePing)
	}
	var ping bytes.Buffer
	_ = ws.WriteFrame(&ping, ws.MaskFrame(ws.NewPingFrame([]byte("p"))))
	if _, err := cl.Conn.Write(ping.Bytes()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if c.w.state.Load() != watchPaused {
			return errors.New("not paused")
		}
		return nil
	})
	for end := time.Now().Add(2 * idle); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if c.gone.Load() {
			t.Fatalf("a paused connection was closed: %s", c.closedBecause())
		}
	}
	// The client reads on: everything comes, the pong last, and the
	// connection is read again (a second ping is answered).
	go func() {
		_, _ = cl.Conn.Write(ping.Bytes())
	}()
	_ = cl.Conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	pongs := 0
	for pongs < 2 {
		f, err := ws.ReadFrame(cl.Conn)
		if err != nil {
			t.Fatalf("after %d pongs: %v", pongs, err)
		}
		switch f.Header.OpCode {
		case ws.OpPong:
			pongs++
		case ws.OpBinary, ws.OpPing:
		default:
			t.Fatalf("got %v", f.Header.OpCode)
		}
	}
	if c.w.state.Load() == watchPaused {
		t.Fatal("still paused after it read all")
	}
}
