package server_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

// Hostile input (README, "What bad input gets"): each answer, and that the
// users beside the hostile client are served meanwhile.

// 5,000 half-open handshakes (slowloris) hold a socket each, and nothing
// else: users keep connecting and receiving while they are all open.
func TestSlowlorisDoesNotStarveUsers(t *testing.T) {
	const half = 5000
	g := startGateway(t, nil, server.Config{HandshakeTimeout: time.Minute, Format: server.FormatRaw})
	slow := make([]net.Conn, 0, half)
	defer func() {
		for _, c := range slow {
			c.Close()
		}
	}()
	for i := range half {
		c, err := net.Dial("tcp", g.addr)
		if err != nil {
			t.Fatalf("half-open connection %d: %v", i, err)
		}
		slow = append(slow, c)
		if _, err := fmt.Fprintf(c, "GET /?user_id=slow%d HTTP/1.1\r\nHost: x\r\n", i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		user := fmt.Sprint("legit", i)
		c := g.dialReady(user)
		g.push(user, "m")
		if got := c.MustRead(); got != "m" {
			t.Fatalf("%s got %q", user, got)
		}
		c.SendClose()
	}
	// They were all still waiting: none was refused or closed meanwhile.
	for i, c := range slow {
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		var ne net.Error
		if _, err := c.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("half-open connection %d ended early: %v", i, err)
		}
	}
}

// Frame headers that lie: a length of 2^63 or more (forbidden), one just
// under it (too big), control frames over 125 bytes.
func TestHostileFrameHeaders(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	mask := []byte{1, 2, 3, 4}
	long := func(first byte, n uint64) []byte {
		b := []byte{first, 0x80 | 127}
		b = append(b, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		return append(b, mask...)
	}
	for _, tc := range []struct {
		name string
		head []byte
		want ws.StatusCode
	}{
		{"2^63 bytes", long(0x81, 1<<63), ws.StatusProtocolError},
		{"2^64-1 bytes", long(0x82, 1<<64-1), ws.StatusProtocolError},
		{"2^63-1 bytes", long(0x81, 1<<63-1), ws.StatusMessageTooBig},
		{"ping of 126 bytes", append([]byte{0x89, 0x80 | 126, 0, 126}, mask...), ws.StatusProtocolError},
		{"close of 200 bytes", append([]byte{0x88, 0x80 | 126, 0, 200}, mask...), ws.StatusProtocolError},
		{"pong of 2^63-1 bytes", long(0x8a, 1<<63-1), ws.StatusProtocolError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := g.dialReady("x")
			if _, err := c.Conn.Write(tc.head); err != nil {
				t.Fatal(err)
			}
			if got := c.ReadClose(5 * time.Second); got != tc.want {
				t.Fatalf("close %d, want %d", got, tc.want)
			}
		})
	}
}

// Every byte value in a user id: the 66 of [A-Za-z0-9_.:-] connect, every
// other gets 400, percent-encoded or raw where HTTP allows it raw.
func TestEveryByteInAUserID(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	for b := range 256 {
		id := "a" + string([]byte{byte(b)}) + "b"
		want := 400
		if redisq.ValidID(id) {
			want = 101
		}
		status, body := rawUpgrade(t, g.addr, "/?user_id="+url.QueryEscape(id))
		if status != want {
			t.Fatalf("byte %#x: %d %q, want %d", b, status, body, want)
		}
	}
	valid := 0
	for b := range 256 {
		if redisq.ValidID(string([]byte{byte(b)})) {
			valid++
		}
	}
	if valid != 66 {
		t.Fatalf("%d byte values make a valid id, want 66", valid)
	}
}

// One user id from 10,000 connections: 16 (-max-conns-per-user) are served,
// every other gets 429 before the upgrade with a one-line reason, and a
// slot that frees is taken again.
func TestConnectionsPerUserAreBounded(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	const max, tries = 16, 10000
	open := make([]*testutil.Client, max)
	for i := range open {
		open[i] = g.dialReady("many")
	}
	var refused, other atomic.Int64
	var firstOther atomic.Value
	var wg sync.WaitGroup
	next := make(chan int)
	for range 32 {
		wg.Go(func() {
			for range next {
				resp, body, err := upgradeResponse(g.addr, "/?user_id=many", 10*time.Second)
				if err == nil && resp.StatusCode == 429 && body == "this user has the most connections allowed (-max-conns-per-user); close one first\n" {
					refused.Add(1)
				} else {
					other.Add(1)
					firstOther.CompareAndSwap(nil, fmt.Sprintf("%v %q (%v)", resp, body, err))
				}
			}
		})
	}
	for i := range tries {
		next <- i
	}
	close(next)
	wg.Wait()
	if refused.Load() != tries {
		t.Fatalf("%d of %d refused with 429 and the reason; another answer: %v", refused.Load(), tries, firstOther.Load())
	}
	if s := g.srv.Snapshot(); s.Refused429 != tries || s.Conns != max {
		t.Fatalf("snapshot %+v, want %d refused with 429 and %d connections", s, tries, max)
	}
	if status, body := get(t, "http://"+g.addr+"/check?user_id=many"); status != 429 {
		t.Fatalf("GET /check: %d %q, want 429", status, body)
	}
	// The 16 are served; once one leaves, another gets in.
	g.push("many", "to all")
	for _, c := range open {
		if got := c.MustRead(); got != "to all" {
			t.Fatalf("got %q", got)
		}
	}
	open[0].SendClose()
	testutil.Eventually(t, 5*time.Second, func() error {
		if resp, body, err := upgradeResponse(g.addr, "/?user_id=many", 5*time.Second); err != nil || resp.StatusCode != 101 {
			return fmt.Errorf("after one left: %v %q (%v)", resp, body, err)
		}
		return nil
	})
}

// A million tiny frames from one client: past -max-message-rate frames in a
// second the client is closed with 1008, long before the million are read,
// and a user beside it is not held up.
func TestMillionTinyFramesAreCut(t *testing.T) {
	const rate = 1000
	g := startGateway(t, nil, server.Config{MaxMessageRate: rate, Format: server.FormatRaw})
	bystander := g.dialReady("bystander")
	c := g.dialReady("flood")
	var one bytes.Buffer
	_ = ws.WriteFrame(&one, ws.MaskFrame(ws.NewTextFrame([]byte("x"))))
	chunk := bytes.Repeat(one.Bytes(), 10000)
	go func() {
		for range 100 { // 100 × 10,000 frames
			if _, err := c.Conn.Write(chunk); err != nil {
				return
			}
		}
	}()
	hellos := 0
	_ = c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := ws.ReadFrame(c.Conn)
		if err != nil {
			t.Fatalf("after %d replies: %v, want a close frame", hellos, err)
		}
		if f.Header.OpCode == ws.OpText {
			hellos++
			continue
		}
		code, reason := ws.ParseCloseFrameData(f.Payload)
		if f.Header.OpCode != ws.OpClose || code != ws.StatusPolicyViolation || !strings.Contains(reason, "-max-message-rate") {
			t.Fatalf("got %v %d %q, want close 1008 naming -max-message-rate", f.Header.OpCode, code, reason)
		}
		break
	}
	if hellos > 2*rate {
		t.Fatalf("%d messages answered before the close, want at most %d", hellos, 2*rate)
	}
	g.push("bystander", "served")
	if got := bystander.MustRead(); got != "served" {
		t.Fatalf("bystander got %q", got)
	}
}

// A token that expires while its connection is open ends the connection at
// its exp (plus the leeway, here 0) with 1008 "token expired".
func TestTokenExpiryClosesTheConnection(t *testing.T) {
	auth, err := server.NewHMACAuth([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	server.SetLeeway(auth, 0)
	g := startGateway(t, nil, server.Config{Auth: auth, Format: server.FormatRaw})
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second) // a NumericDate has whole seconds
	tok := hs256(t, []byte(secret), jwt.RegisteredClaims{Subject: "exp", ExpiresAt: jwt.NewNumericDate(exp)})
	conn, err := testutil.TryDial(g.addr, "/?token="+tok)
	if err != nil {
		t.Fatal(err)
	}
	c := testutil.NewClient(t, conn)
	if got := c.MustRead(); got != "hello;\n" {
		t.Fatalf("greeting %q", got)
	}
	g.push("exp", "before expiry")
	if got := c.MustRead(); got != "before expiry" {
		t.Fatalf("got %q", got)
	}
	_ = c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := ws.ReadFrame(c.Conn)
	closedAt := time.Now()
	if err != nil || f.Header.OpCode != ws.OpClose {
		t.Fatalf("got %+v (%v), want a close frame", f.Header, err)
	}
	if code, reason := ws.ParseCloseFrameData(f.Payload); code != ws.StatusPolicyViolation || reason != "token expired" {
		t.Fatalf("close %d %q, want 1008 \"token expired\"", code, reason)
	}
	if closedAt.Before(exp) {
		t.Fatalf("closed %v before the token's exp", exp.Sub(closedAt))
	}
	if line := logLine(g, "user=exp reason="); !strings.Contains(line, `reason="server sent close 1008 token expired"`) {
		t.Errorf("logged as %q", line)
	}
}

// A reconnect storm after a restart meets a full pool: the 503s tell the
// clients to come back after 1 to 10 seconds, spread, not all after 1.
func TestRetryAfterIsSpread(t *testing.T) {
	g := startGateway(t, nil, server.Config{MaxUsers: 1})
	g.dialReady("holder")
	seen := map[int]int{}
	for i := range 40 {
		resp, _, err := upgradeResponse(g.addr, fmt.Sprintf("/?user_id=storm%d", i), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != 503 || err != nil || secs < 1 || secs > 10 {
			t.Fatalf("%d with Retry-After %q, want 503 and 1 to 10 seconds", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		seen[secs]++
	}
	if len(seen) < 3 { // 40 draws of 1..10 all in two values: about 1e-27
		t.Fatalf("Retry-After values %v: not spread", seen)
	}
	resp, err := http.Get("http://" + g.addr + "/check?user_id=storm")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode != 503 || err != nil || secs < 1 || secs > 10 {
		t.Fatalf("GET /check: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// A connection the server closes while its client keeps sending pongs (a
// one-way heartbeat RFC 6455 allows, which the server never answers)
// still ends: the reader notices the close between two frames.
func TestAClosedConnectionEndsThoughItsClientSendsPongs(t *testing.T) {
	auth, err := server.NewHMACAuth([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	server.SetLeeway(auth, 0)
	g := startGateway(t, nil, server.Config{Auth: auth, Format: server.FormatRaw, WriteTimeout: time.Second, MaxMessageRate: 1_000_000})
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
	tok := hs256(t, []byte(secret), jwt.RegisteredClaims{Subject: "pong", ExpiresAt: jwt.NewNumericDate(exp)})
	conn, err := testutil.TryDial(g.addr, "/?token="+tok)
	if err != nil {
		t.Fatal(err)
	}
	c := testutil.NewClient(t, conn)
	c.MustRead()
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := g.srv.Snapshot().Conns; n != 1 {
			return fmt.Errorf("%d connections, want it registered", n)
		}
		return nil
	})
	var pongs bytes.Buffer
	for range 40 {
		_ = ws.WriteFrame(&pongs, ws.MaskFrame(ws.NewPongFrame(nil)))
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if _, err := c.Conn.Write(pongs.Bytes()); err != nil {
				return
			}
		}
	}()
	// Expiry at exp; then at most -write-timeout of lingering, and a second.
	testutil.Eventually(t, time.Until(exp)+3*time.Second, func() error {
		if n := g.srv.Snapshot().Conns; n != 0 {
			return fmt.Errorf("%d connections", n)
		}
		return nil
	})
	if time.Now().Before(exp) {
		t.Fatal("the connection ended before its token expired: the test proves nothing")
	}
}
