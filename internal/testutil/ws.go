package testutil

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Client is a WebSocket client over a real TCP connection.
type Client struct {
	t    testing.TB
	Conn net.Conn
}

// Dial connects to the gateway at addr as user and fails the test if the
// upgrade does not succeed.
func Dial(t testing.TB, addr, user string) *Client {
	return DialBuffer(t, addr, user, 0)
}

// DialBuffer is Dial with the socket's receive buffer set to rcvbuf bytes
// before connecting (0: the system default), so that a client that does
// not read stalls the server's writes after a few kilobytes.
func DialBuffer(t testing.TB, addr, user string, rcvbuf int) *Client {
	t.Helper()
	return DialTLSBuffer(t, addr, user, rcvbuf, nil)
}

// DialTLSBuffer is DialBuffer over TLS (wss://) with cfg; nil: plain ws://.
func DialTLSBuffer(t testing.TB, addr, user string, rcvbuf int, cfg *tls.Config) *Client {
	t.Helper()
	c, err := dial(addr, "/?user_id="+url.QueryEscape(user), rcvbuf, cfg)
	if err != nil {
		t.Fatalf("dial %s as %q: %v", addr, user, err)
	}
	cl := &Client{t: t, Conn: c}
	t.Cleanup(func() { _ = c.Close() })
	return cl
}

// NewClient wraps an upgraded connection, e.g. from TryDial.
func NewClient(t testing.TB, c net.Conn) *Client {
	t.Cleanup(func() { _ = c.Close() })
	return &Client{t: t, Conn: c}
}

// TryDial upgrades path on addr and returns the error of a refused upgrade
// (a ws.StatusError carries the HTTP status).
func TryDial(addr, path string) (net.Conn, error) { return dial(addr, path, 0, nil) }

func dial(addr, path string, rcvbuf int, cfg *tls.Config) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{Timeout: 5 * time.Second, TLSConfig: cfg}
	scheme := "ws://"
	if cfg != nil {
		scheme = "wss://"
	}
	if rcvbuf > 0 {
		d.NetDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			nd := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
				})
				return errors.Join(err, serr)
			}}
			return nd.DialContext(ctx, network, addr)
		}
	}
	c, br, _, err := d.Dial(ctx, scheme+addr+path)
	if err != nil || br == nil {
		return c, err
	}
	// Frames that arrived with the 101 response sit in br.
	return &bufferedConn{Conn: c, r: io.MultiReader(br, c)}, nil
}

type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Read returns the next data message, answering pings on the way.
func (c *Client) Read(timeout time.Duration) (string, ws.OpCode, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(timeout))
	b, op, err := wsutil.ReadServerData(c.Conn)
	return string(b), op, err
}

// MustRead returns the next data message or fails the test.
func (c *Client) MustRead() string {
	c.t.Helper()
	s, _, err := c.Read(10 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return s
}

// Send sends a text message.
func (c *Client) Send(text string) {
	c.t.Helper()
	if err := wsutil.WriteClientText(c.Conn, []byte(text)); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// ReadClose reads until the server's close frame and returns its code. It
// fails the test if a data frame or nothing arrives first.
func (c *Client) ReadClose(timeout time.Duration) ws.StatusCode {
	c.t.Helper()
	code, _ := c.ReadCloseReason(timeout)
	return code
}

// ReadCloseReason is ReadClose, with the close frame's reason.
func (c *Client) ReadCloseReason(timeout time.Duration) (ws.StatusCode, string) {
	c.t.Helper()
	_ = c.Conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		h, err := ws.ReadHeader(c.Conn)
		if err != nil {
			c.t.Fatalf("waiting for close frame: %v", err)
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c.Conn, p); err != nil {
			c.t.Fatalf("reading frame payload: %v", err)
		}
		switch h.OpCode {
		case ws.OpClose:
			return ws.ParseCloseFrameData(p)
		case ws.OpPing, ws.OpPong:
			continue
		default:
			c.t.Fatalf("wanted a close frame, got opcode %v %q", h.OpCode, p)
		}
	}
}

// Status extracts the HTTP status of a refused upgrade.
func Status(err error) (int, error) {
	var se ws.StatusError
	if errors.As(err, &se) {
		return int(se), nil
	}
	return 0, fmt.Errorf("not an HTTP refusal: %v", err)
}

// SendClose sends a normal close frame and closes the socket.
func (c *Client) SendClose() {
	_ = ws.WriteFrame(c.Conn, ws.MaskFrameInPlace(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))))
	_ = c.Conn.Close()
}

// Reset closes the socket abruptly: a TCP RST, no close frame.
func (c *Client) Reset() {
	if tc, ok := unwrap(c.Conn).(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Conn.Close()
}

func unwrap(c net.Conn) net.Conn {
	if b, ok := c.(*bufferedConn); ok {
		return b.Conn
	}
	return c
}

// ReadCloseAfterHellos is ReadClose that tolerates the server's "hello"
// replies to data messages that arrived before the offending frame.
func (c *Client) ReadCloseAfterHellos(timeout time.Duration) ws.StatusCode {
	c.t.Helper()
	_ = c.Conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := ws.ReadFrame(c.Conn)
		if err != nil {
			c.t.Fatalf("waiting for close frame: %v", err)
		}
		switch {
		case f.Header.OpCode == ws.OpClose:
			code, _ := ws.ParseCloseFrameData(f.Payload)
			return code
		case f.Header.OpCode == ws.OpText && string(f.Payload) == "hello":
		default:
			c.t.Fatalf("wanted a close frame, got opcode %v %q", f.Header.OpCode, f.Payload)
		}
	}
}

// DialPath connects to the gateway at addr with the request path and
// query path (e.g. "/?user_id=42&ack=1") and fails the test if the upgrade
// does not succeed.
func DialPath(t testing.TB, addr, path string) *Client {
	t.Helper()
	c, err := dial(addr, path, 0, nil)
	if err != nil {
		t.Fatalf("dial %s%s: %v", addr, path, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &Client{t: t, Conn: c}
}
