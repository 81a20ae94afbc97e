package server_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// The README's bad-input table, one row after the other.

func TestBadUserIDIs400BeforeAnyRedisCall(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	// MONITOR, not INFO's global counter: the claim's renewal (every
	// second), the heartbeat and the relay's PING run meanwhile.
	mon := g.rds.StartMonitor()
	from := mon.Mark("before bad handshakes")
	for _, tc := range []struct{ name, path, reason string }{
		{"missing", "/", "missing user_id"},
		{"empty", "/?user_id=", "missing user_id"},
		{"too long", "/?user_id=" + strings.Repeat("1", 129), "user_id must be"},
		{"bad character", "/?user_id=a%20b", "user_id must be"},
		{"brace", "/?user_id=%7Bx%7D", "user_id must be"},
		{"bad query", "/?user_id=%zz", "bad query string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := rawUpgrade(t, g.addr, tc.path)
			if status != 400 || !strings.Contains(body, tc.reason) || strings.Count(strings.TrimSpace(body), "\n") != 0 {
				t.Fatalf("got %d %q, want 400 with a one-line reason containing %q", status, body, tc.reason)
			}
		})
	}
	to := mon.Mark("after bad handshakes")
	for _, line := range mon.Lines()[from+1 : to] {
		if !isBackground(line) {
			t.Errorf("redis ran a command during the bad handshakes: %s", line)
		}
	}
	if s := g.srv.Snapshot(); s.Users != 0 || s.Refused400 != 6 {
		t.Fatalf("snapshot %+v", s)
	}
}

func TestLongestValidUserID(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	user := strings.Repeat("a", 120) + "_.:-AZ09"
	c := g.dialReady(user)
	g.push(user, "ok")
	if got := c.MustRead(); got != "ok" {
		t.Fatalf("got %q", got)
	}
}

// isBackground reports whether a MONITOR line is one of the gateway's
// background commands, which run whatever clients do: the instance claim's
// renewal and heartbeat (and the scan for dead instances' lists that goes
// with it), and the relay connection's keep-alive PING.
func isBackground(line string) bool {
	for _, s := range []string{`"redpush:claim:`, `"redpush:instance:`, `] "ping"`, `] "scan" "0" "match" "{*}:processing:*"`} {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// rawUpgrade sends a WebSocket upgrade request for path and returns the
// HTTP status and body of the answer.
func rawUpgrade(t *testing.T, addr, path string, headers ...string) (int, string) {
	t.Helper()
	resp, body, err := upgradeResponse(addr, path, 10*time.Second, headers...)
	if err != nil {
		t.Fatal(err)
	}
	if ra := resp.Header.Get("Retry-After"); resp.StatusCode == 503 && !retryAfterOK(ra) {
		t.Errorf("503 with Retry-After %q, want 1 to 10 seconds", ra)
	}
	return resp.StatusCode, body
}

// upgradeResponse sends a WebSocket upgrade request for path, with the
// extra header lines, and returns the answer (its body read, empty for a
// 101) if it came within the time given; it fails no test, for goroutines.
func upgradeResponse(addr, path string, within time.Duration, headers ...string) (*http.Response, string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(within))
	extra := ""
	for _, h := range headers {
		extra += h + "\r\n"
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n%s\r\n", path, extra)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, "", nil
	}
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

func TestFullPoolIs503AndSparesExistingUsers(t *testing.T) {
	g := startGateway(t, nil, server.Config{MaxUsers: 1, Format: server.FormatRaw})
	a := g.dialReady("a")
	status, body := rawUpgrade(t, g.addr, "/?user_id=b")
	if status != 503 || !strings.Contains(body, "capacity") {
		t.Fatalf("new user on a full pool: %d %q, want 503", status, body)
	}
	// A second tab of an online user needs no new worker.
	a2 := g.dialReady("a")
	g.push("a", "still served")
	for _, c := range []*testutil.Client{a, a2} {
		if got := c.MustRead(); got != "still served" {
			t.Fatalf("got %q", got)
		}
	}
	// Once a leaves, its worker is free for b.
	a.SendClose()
	a2.SendClose()
	g.awaitConsumers(0, 5*time.Second)
	g.dialReady("b")
}

func TestGarbageAndSlowHandshakesAreClosed(t *testing.T) {
	const timeout = 300 * time.Millisecond
	g := startGateway(t, nil, server.Config{HandshakeTimeout: timeout})
	for _, tc := range []struct{ name, send string }{
		{"silent", ""},
		{"half a request", "GET /?user_id=1 HTTP/1.1\r\nHost: x\r\n"},
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"},
		{"garbage lines", "hello\r\n\r\n"},
		{"endless header", "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 5000)},
		{"bad upgrade", "GET /?user_id=1 HTTP/1.1\r\nHost: x\r\nUpgrade: nope\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", g.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			_, _ = io.WriteString(c, tc.send)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = io.Copy(io.Discard, c)                        // returns when the server closes
			if err != nil && !errors.Is(err, syscall.ECONNRESET) { // RST: it closed with our bytes unread
				t.Fatalf("server did not close the connection: %v", err)
			}
			if took := time.Since(start); took > timeout+time.Second {
				t.Fatalf("closed after %v, want within the handshake timeout %v", took, timeout)
			}
		})
	}
	// The listener still serves.
	g.dialReady("after")
}

func TestFrameErrorsCloseWithTheRightCode(t *testing.T) {
	g := startGateway(t, nil, server.Config{MaxMessage: 1024})
	bystander := g.dialReady("bystander")
	text := func(p []byte) ws.Frame { return ws.MaskFrame(ws.NewTextFrame(p)) }
	for _, tc := range []struct {
		name   string
		frames []ws.Frame
		want   ws.StatusCode
	}{
		{"frame over the limit", []ws.Frame{text(make([]byte, 1025))}, ws.StatusMessageTooBig},
		{"message over the limit in fragments", []ws.Frame{
			ws.MaskFrame(ws.NewFrame(ws.OpText, false, make([]byte, 600))),
			ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, make([]byte, 600))),
		}, ws.StatusMessageTooBig},
		{"invalid UTF-8", []ws.Frame{text([]byte("\xff\xfe"))}, ws.StatusInvalidFramePayloadData},
		{"UTF-8 split across fragments is valid, then a bad one", []ws.Frame{
			ws.MaskFrame(ws.NewFrame(ws.OpText, false, []byte("\xe2\x82"))),
			ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, []byte("\xac"))),
			text([]byte("\xc3")),
		}, ws.StatusInvalidFramePayloadData},
		{"unmasked frame", []ws.Frame{ws.NewTextFrame([]byte("hi"))}, ws.StatusProtocolError},
		{"reserved opcode", []ws.Frame{ws.MaskFrame(ws.NewFrame(ws.OpCode(0x3), true, nil))}, ws.StatusProtocolError},
		{"continuation without start", []ws.Frame{ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, []byte("x")))}, ws.StatusProtocolError},
		{"rsv bit", []ws.Frame{func() ws.Frame { f := text([]byte("x")); f.Header.Rsv = 4; return f }()}, ws.StatusProtocolError},
		{"fragmented ping", []ws.Frame{ws.MaskFrame(ws.NewFrame(ws.OpPing, false, nil))}, ws.StatusProtocolError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := g.dialReady("x")
			for _, f := range tc.frames {
				if err := ws.WriteFrame(c.Conn, f); err != nil {
					t.Fatal(err)
				}
			}
			if got := c.ReadCloseAfterHellos(5 * time.Second); got != tc.want {
				t.Fatalf("close code %d, want %d", got, tc.want)
			}
		})
	}
	g.push("bystander", "unaffected")
	if got := bystander.MustRead(); got != swoole("bystander", "unaffected") {
		t.Fatalf("bystander got %q", got)
	}
}

func TestPingIsAnsweredAndCloseEchoed(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	c := g.dialReady("p")
	if err := ws.WriteFrame(c.Conn, ws.MaskFrame(ws.NewPingFrame([]byte("abc")))); err != nil {
		t.Fatal(err)
	}
	_ = c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := ws.ReadFrame(c.Conn)
	if err != nil || f.Header.OpCode != ws.OpPong || string(f.Payload) != "abc" {
		t.Fatalf("got %+v %q (%v), want pong abc", f.Header, f.Payload, err)
	}
	body := ws.NewCloseFrameBody(4000, "bye")
	if err := ws.WriteFrame(c.Conn, ws.MaskFrame(ws.NewCloseFrame(body))); err != nil {
		t.Fatal(err)
	}
	if got := c.ReadClose(5 * time.Second); got != 4000 {
		t.Fatalf("close echo %d, want 4000", got)
	}
}

func TestSilentPeerIsPingedThenClosed(t *testing.T) {
	const idle = 600 * time.Millisecond
	// quiet's consumer holds a popped message until the test lets it go:
	// it is in flight when the idle timeout closes the connection.
	release := make(chan struct{})
	held := make(chan struct{})
	var once sync.Once
	defer server.SetHook(func(_ context.Context, user, stage string) {
		if user == "quiet" && stage == "deliver" {
			once.Do(func() { close(held); <-release })
		}
	})()
	g := startGateway(t, nil, server.Config{IdleTimeout: idle})
	defer func() {
		select {
		case <-release:
		default:
			close(release) // a failed check must not leave the consumer held
		}
	}()
	// Timed from before the dial: the server's idle clock starts after it,
	// so neither bound below needs slack for a slow machine.
	start := time.Now()
	c := g.dialReady("quiet")
	g.push("quiet", "in flight")
	<-held
	_ = c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := ws.ReadFrame(c.Conn)
	if err != nil || f.Header.OpCode != ws.OpPing {
		t.Fatalf("got %+v (%v), want a ping", f.Header, err)
	}
	if took := time.Since(start); took < idle/2 {
		t.Fatalf("pinged after %v, want after half the idle timeout %v", took, idle/2)
	}
	f, err = ws.ReadFrame(c.Conn) // no pong: the peer stays silent
	if err != nil || f.Header.OpCode != ws.OpClose {
		t.Fatalf("got %+v (%v), want a close", f.Header, err)
	}
	took := time.Since(start)
	if code, reason := ws.ParseCloseFrameData(f.Payload); code != ws.StatusGoingAway || reason != "idle timeout" {
		t.Fatalf("close %d %q, want 1001 \"idle timeout\"", code, reason)
	}
	if took < idle || took > idle+5*time.Second {
		t.Fatalf("closed after %v, want after the idle timeout %v (and not long after)", took, idle)
	}
	close(release) // the consumer finds its user gone: the message goes back
	g.awaitConsumers(0, 5*time.Second)
	if got := g.rc.LRange(t.Context(), "user_quiet_messages", 0, -1).Val(); !slices.Equal(got, []string{"in flight"}) {
		t.Fatalf("quiet's queue holds %q after the idle close, want its in-flight message back", got)
	}
	if s := g.srv.Snapshot(); s.Requeued != 1 || s.Delivered != 0 {
		t.Fatalf("snapshot %+v, want 1 requeued and none delivered", s)
	}
	if line := logLine(g, "user=quiet reason="); !strings.Contains(line, `reason="server sent close 1001 idle timeout"`) {
		t.Errorf("the idle close is logged as %q", line)
	}

	// A peer that answers pings stays connected past the idle timeout:
	// this read answers the pings it meets while it waits for data.
	alive := g.dialReady("alive")
	if got, _, err := alive.Read(3 * idle); err == nil {
		t.Fatalf("unexpected message %q", got)
	}
	g.push("alive", "m")
	if got := alive.MustRead(); got != swoole("alive", "m") {
		t.Fatalf("got %q", got)
	}
}

// A request head over 4 KiB gets 431 and the socket is closed, whether the
// head would have ended or not; a head just under 4 KiB is served.
func TestHeadOver4KiBIs431(t *testing.T) {
	g := startGateway(t, nil, server.Config{HandshakeTimeout: 5 * time.Second})
	upgrade := "GET /?user_id=h HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, tc := range []struct{ name, send string }{
		{"complete head", upgrade + "X-Big: " + strings.Repeat("a", 5000) + "\r\n\r\n"},
		{"endless header", upgrade + "X-Big: " + strings.Repeat("a", 5000)},
		{"plain HTTP", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 5000) + "\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", g.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			_, _ = io.WriteString(c, tc.send)
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no HTTP answer to a %d-byte head: %v", len(tc.send), err)
			}
			resp.Body.Close()
			if resp.StatusCode != 431 {
				t.Fatalf("status %d, want 431", resp.StatusCode)
			}
			// Answered at once, not at the 5 s handshake timeout.
			if took := time.Since(start); took > 2*time.Second {
				t.Fatalf("431 after %v", took)
			}
			_, err = io.Copy(io.Discard, c) // then closed
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("socket not closed after the 431: %v", err)
			}
		})
	}
	// Under the limit: served.
	status, _ := rawUpgrade(t, g.addr, "/?user_id=small", "X-Pad: "+strings.Repeat("a", 3500))
	if status != 101 {
		t.Fatalf("a head under 4 KiB got %d, want 101", status)
	}
}

// A full pool refuses at once and never blocks: 30 new users at the same
// moment each get their 503 promptly, and meanwhile the port still accepts
// and answers (/healthz) and the user already online opens a second tab.
func TestFullPoolNeverBlocksTheAcceptLoop(t *testing.T) {
	g := startGateway(t, nil, server.Config{MaxUsers: 1, Format: server.FormatRaw})
	holder := g.dialReady("holder")
	const newcomers = 30
	errs := make(chan error, newcomers)
	for i := range newcomers {
		go func() {
			resp, _, err := upgradeResponse(g.addr, fmt.Sprintf("/?user_id=new%d", i), 3*time.Second)
			if err != nil {
				errs <- fmt.Errorf("newcomer %d: no answer within 3 s: %v", i, err)
				return
			}
			if resp.StatusCode != 503 || !retryAfterOK(resp.Header.Get("Retry-After")) {
				errs <- fmt.Errorf("newcomer %d: %d Retry-After %q, want 503 and 1 to 10 seconds", i, resp.StatusCode, resp.Header.Get("Retry-After"))
				return
			}
			errs <- nil
		}()
	}
	hc := &http.Client{Timeout: 3 * time.Second}
	resp, err := hc.Get("http://" + g.addr + "/healthz")
	if err != nil {
		t.Fatalf("/healthz during the refusals: %v", err)
	}
	resp.Body.Close()
	tab := g.dialReady("holder")
	for range newcomers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	g.push("holder", "served")
	for _, c := range []*testutil.Client{holder, tab} {
		if got := c.MustRead(); got != "served" {
			t.Fatalf("got %q", got)
		}
	}
	if v := metric(t, g, `redpush_handshakes_refused_total{status="503"}`); v != newcomers {
		t.Fatalf(`redpush_handshakes_refused_total{status="503"} = %v, want %d`, v, newcomers)
	}
}

// retryAfterOK reports whether a 503's Retry-After is what the README
// promises: whole seconds, 1 to 10 (TestRetryAfterIsSpread checks that
// they are spread).
func retryAfterOK(v string) bool {
	n, err := strconv.Atoi(v)
	return err == nil && n >= 1 && n <= 10
}
