package server_test

import (
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// The wire behaviour of the PHP original (the README's compatibility table).
func TestCompatibility(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	c := g.dial("42")
	if got := c.MustRead(); got != "hello;\n" {
		t.Fatalf("first frame = %q, want greeting", got)
	}
	c.Send("anything")
	if got := c.MustRead(); got != "hello" {
		t.Fatalf("reply to a client message = %q, want hello", got)
	}
	g.push("42", "m")
	if got, want := c.MustRead(), swoole("42", "m"); got != want {
		t.Fatalf("pushed frame = %q, want %q", got, want)
	}
}

func TestFIFOForLPUSHProducers(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	c := g.dialReady("7")
	msgs := testutil.Seq("m", 500)
	for _, m := range msgs { // one LPUSH each, as producers do
		g.push("7", m)
	}
	for _, m := range msgs {
		if got := c.MustRead(); got != swoole("7", m) {
			t.Fatalf("got %q, want %q", got, swoole("7", m))
		}
	}
}

func TestOfflineBacklogArrivesInOrderOnConnect(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	msgs := testutil.Seq("offline", 300)
	g.push("9", msgs...) // one LPUSH with many values: the first is oldest
	c := g.dialReady("9")
	for _, m := range msgs {
		if got := c.MustRead(); got != swoole("9", m) {
			t.Fatalf("got %q, want %q", got, swoole("9", m))
		}
	}
}

func TestFormats(t *testing.T) {
	for _, tc := range []struct {
		format, msg, want string
		op                ws.OpCode
	}{
		{server.FormatRaw, "order shipped", "order shipped", ws.OpText},
		{server.FormatJSON, "a\"b", `{"user":"5","queue":"user_5_messages","data":"a\"b"}`, ws.OpText},
		// data is the payload as a string, even when the payload is JSON.
		{server.FormatJSON, `{"n":1}`, `{"user":"5","queue":"user_5_messages","data":"{\"n\":1}"}`, ws.OpText},
		// Not UTF-8: carried intact in base64, not turned into U+FFFD.
		{server.FormatJSON, "\xff\xfe", `{"user":"5","queue":"user_5_messages","data_b64":"//4="}`, ws.OpText},
		{server.FormatSwoole, "ok", swoole("5", "ok"), ws.OpText},
		// Not UTF-8: a text frame would make browsers fail the connection.
		{server.FormatRaw, "\xff\xfe", "\xff\xfe", ws.OpBinary},
	} {
		t.Run(tc.format, func(t *testing.T) {
			g := startGateway(t, nil, server.Config{Format: tc.format})
			c := g.dial("5")
			c.MustRead() // the greeting
			g.push("5", tc.msg)
			got, op, err := c.Read(10 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || op != tc.op {
				t.Fatalf("got %q (op %v), want %q (op %v)", got, op, tc.want, tc.op)
			}
		})
	}
}

func TestKeyPattern(t *testing.T) {
	g := startGateway(t, nil, server.Config{KeyPattern: "inbox:%s", Format: server.FormatRaw})
	c := g.dialReady("u1")
	if err := g.rc.LPush(t.Context(), "inbox:u1", "via pattern").Err(); err != nil {
		t.Fatal(err)
	}
	if got := c.MustRead(); got != "via pattern" {
		t.Fatalf("got %q", got)
	}
}

// In json format every frame is JSON, the greeting and the echo reply too,
// so a client that parses every frame does not break on them.
func TestJSONFormatGreetingAndReplyAreJSON(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatJSON})
	c := g.dial("5")
	if got := c.MustRead(); got != `{"event":"hello"}` {
		t.Fatalf("greeting %q", got)
	}
	c.Send("anything")
	if got := c.MustRead(); got != `{"event":"reply","data":"hello"}` {
		t.Fatalf("reply %q", got)
	}
}
