package server_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// A refused handshake is logged at info with its status, reason and the
// client's address, so an operator sees why clients cannot connect.
func TestRefusedHandshakesAreLoggedWithReasonAndAddress(t *testing.T) {
	g := startGateway(t, nil, server.Config{MaxUsers: 1, AllowedOrigins: []string{"https://app.example"}})
	auth, err := server.NewHMACAuth([]byte("a-secret-of-at-least-16-bytes"))
	if err != nil {
		t.Fatal(err)
	}
	ga := startGateway(t, nil, server.Config{Auth: auth})
	g.dialReady("holder") // the only user it admits
	for _, tc := range []struct {
		g       *gateway
		path    string
		headers []string
		status  int
		reason  string
	}{
		{g, "/?user_id=bob%20smith", nil, 400, "user_id must be"},
		{g, "/?user_id=x", []string{"Origin: https://evil.example"}, 403, `origin \"https://evil.example\" not allowed`},
		{g, "/?user_id=second", nil, 503, "server is at capacity"},
		{ga, "/?user_id=42", nil, 401, "token required"},
	} {
		if status, body := rawUpgrade(t, tc.g.addr, tc.path, tc.headers...); status != tc.status {
			t.Fatalf("%s: %d %q, want %d", tc.path, status, body, tc.status)
		}
		line := logLine(tc.g, fmt.Sprintf(`msg="handshake refused" status=%d`, tc.status))
		if !strings.Contains(line, "level=INFO") || !strings.Contains(line, tc.reason) ||
			!regexp.MustCompile(`remote=127\.0\.0\.1:\d+`).MatchString(line) {
			t.Errorf("log line %q lacks the level, the reason %q or the remote address", line, tc.reason)
		}
	}
}

// A flood of bad handshakes is counted in full but logged at a bounded
// rate; the next line says how many were left out.
func TestRefusedHandshakeLogIsRateLimited(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	const flood = 200
	for range flood {
		rawUpgrade(t, g.addr, "/?user_id=a%20b")
	}
	if n := g.srv.Snapshot().Refused400; n != flood {
		t.Fatalf("counted %d refusals, want %d", n, flood)
	}
	// At most 10 lines a second: the flood must take 10 s to log half.
	if n := strings.Count(g.logs.String(), `msg="handshake refused"`); n > flood/2 {
		t.Fatalf("%d of %d refusals logged: not rate-limited", n, flood)
	}
	// Once the second is over, the next refusal is logged with the count
	// of those left out.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(g.logs.String(), "not_logged_before=") {
		if time.Now().After(deadline) {
			t.Fatalf("no line reports the refusals left out:\n%s", g.logs.String())
		}
		rawUpgrade(t, g.addr, "/?user_id=a%20b")
		time.Sleep(50 * time.Millisecond) // pacing a probe, not synchronising
	}
}

// Why a connection closed, in words: who sent which close code, without
// trailing blanks, and no "use of closed network connection" at shutdown.
func TestCloseReasonsAreReadable(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	c := g.dialReady("leaver")
	_ = ws.WriteFrame(c.Conn, ws.MaskFrameInPlace(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, ""))))
	line := logLine(g, `user=leaver reason=`)
	if !strings.Contains(line, `reason="client sent close 1001"`) {
		t.Errorf("client close logged as %q", line)
	}
	g.dialReady("stayer")
	if err := g.shutdown(); err != nil {
		t.Fatal(err)
	}
	line = logLine(g, `user=stayer reason=`)
	if !strings.Contains(line, `reason="server sent close 1001 server shutting down"`) {
		t.Errorf("shutdown close logged as %q", line)
	}
	if line := logLine(g, `msg=stopped`); strings.Contains(line, "err=") {
		t.Errorf("stop line %q mentions an error that did not happen", line)
	}
	if strings.Contains(g.logs.String(), "use of closed network connection") {
		t.Errorf("log shows a socket error for a close the server made:\n%s", g.logs.String())
	}
}

// logLine waits for the log line that contains part and returns it.
func logLine(g *gateway, part string) string {
	g.t.Helper()
	var line string
	testutil.Eventually(g.t, 10*time.Second, func() error {
		for _, l := range strings.Split(g.logs.String(), "\n") {
			if strings.Contains(l, part) {
				line = l
				return nil
			}
		}
		return fmt.Errorf("no log line with %q:\n%s", part, g.logs.String())
	})
	return line
}
