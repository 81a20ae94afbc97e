package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

// ackFrame is a pushed message as an ack connection gets it.
type ackFrame struct {
	ID          string `json:"id"`
	Data        string `json:"data"`
	DataB64     []byte `json:"data_b64"`
	Redelivered bool   `json:"redelivered"`
}

// dialAck connects user with ?ack=1 and consumes the greeting.
func (g *gateway) dialAck(user string) *testutil.Client {
	g.t.Helper()
	c := testutil.DialPath(g.t, g.addr, "/?ack=1&user_id="+user)
	if got := c.MustRead(); got != "hello;\n" {
		g.t.Fatalf("greeting = %q, want %q", got, "hello;\n")
	}
	return c
}

// readAck reads one pushed message of an ack connection.
func readAck(t *testing.T, c *testutil.Client) ackFrame {
	t.Helper()
	s, op, err := c.Read(10 * time.Second)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var f ackFrame
	if op != ws.OpText || json.Unmarshal([]byte(s), &f) != nil || f.ID == "" {
		t.Fatalf("want an ack frame, got %v %q", op, s)
	}
	return f
}

// readAcks reads n pushed messages and returns them with their data.
func readAcks(t *testing.T, c *testutil.Client, n int) (frames []ackFrame, data []string) {
	t.Helper()
	for range n {
		f := readAck(t, c)
		frames = append(frames, f)
		data = append(data, f.Data)
	}
	return frames, data
}

func ack(c *testutil.Client, id string) { c.Send(`{"ack":"` + id + `"}`) }

// processing is how many messages user's processing list holds.
func (g *gateway) processing(user string) int64 {
	g.t.Helper()
	n, err := g.rc.LLen(context.Background(), "{user_"+user+"_messages}:processing:test").Result()
	if err != nil {
		g.t.Fatal(err)
	}
	return n
}

// awaitProcessing waits until user's processing list holds n messages.
func (g *gateway) awaitProcessing(user string, n int64) {
	g.t.Helper()
	testutil.Eventually(g.t, 10*time.Second, func() error {
		if got := g.processing(user); got != n {
			return fmt.Errorf("processing list holds %d, want %d", got, n)
		}
		return nil
	})
}

// assertSilent checks that c gets no message within d.
func assertSilent(t *testing.T, c *testutil.Client, d time.Duration) {
	t.Helper()
	if s, _, err := c.Read(d); err == nil {
		t.Fatalf("got %q, want nothing", s)
	}
	_ = c.Conn.SetReadDeadline(time.Time{})
}

func TestAckedDelivery(t *testing.T) {
	t.Run("messages stay in Redis until acknowledged, cumulatively", func(t *testing.T) {
		g := startGateway(t, nil, server.Config{})
		c := g.dialAck("1")
		g.push("1", "a", "b", "c") // LPUSH: a is the oldest
		frames, data := readAcks(t, c, 3)
		if strings.Join(data, ",") != "a,b,c" {
			t.Fatalf("data = %q", data)
		}
		for _, f := range frames {
			if f.Redelivered {
				t.Fatalf("first delivery marked redelivered: %+v", f)
			}
		}
		if frames[0].ID == frames[1].ID || frames[1].ID == frames[2].ID {
			t.Fatalf("ids not distinct: %+v", frames)
		}
		// Written and TCP-acknowledged, but not acknowledged by the client.
		assertSilent(t, c, 300*time.Millisecond)
		if n := g.processing("1"); n != 3 {
			t.Fatalf("processing list holds %d before the ack, want 3", n)
		}
		ack(c, frames[1].ID) // the first two
		g.awaitProcessing("1", 1)
		ack(c, frames[1].ID) // again: ignored
		ack(c, frames[2].ID)
		g.awaitProcessing("1", 0)
		// An ack gets no reply; a client message still does.
		c.Send("ping")
		if got := c.MustRead(); got != "hello" {
			t.Fatalf("reply = %q, want hello", got)
		}
	})

	t.Run("closed unacknowledged: redelivered with the same ids", func(t *testing.T) {
		g := startGateway(t, nil, server.Config{})
		c := g.dialAck("2")
		g.push("2", "x", "y")
		first, _ := readAcks(t, c, 2)
		ack(c, first[0].ID)
		g.awaitProcessing("2", 1)
		c.SendClose()
		d := g.dialAck("2")
		again := readAck(t, d)
		if again.ID != first[1].ID || again.Data != first[1].Data || !again.Redelivered {
			t.Fatalf("redelivery = %+v, want id %s data %q redelivered", again, first[1].ID, first[1].Data)
		}
		ack(d, again.ID)
		g.awaitProcessing("2", 0)
		g.awaitQueueEmpty("2")
	})

	t.Run("timed out: sent again on the same open connection", func(t *testing.T) {
		g := startGateway(t, nil, server.Config{AckTimeout: 300 * time.Millisecond})
		c := g.dialAck("3")
		g.push("3", "m")
		first := readAck(t, c)
		again := readAck(t, c) // after -ack-timeout, same connection
		if again.ID != first.ID || again.Data != "m" || !again.Redelivered {
			t.Fatalf("after the timeout got %+v, want id %s redelivered", again, first.ID)
		}
		ack(c, again.ID)
		g.awaitProcessing("3", 0)
		assertSilent(t, c, 800*time.Millisecond) // acknowledged: not sent again
	})

	t.Run("a full window stops the consumer, plain connections too", func(t *testing.T) {
		g := startGateway(t, nil, server.Config{AckWindow: 2})
		c := g.dialAck("4")
		p := g.dialReady("4")
		for i := range 5 {
			g.push("4", fmt.Sprint(i))
		}
		frames, data := readAcks(t, c, 2)
		if strings.Join(data, ",") != "0,1" {
			t.Fatalf("data = %q, want 0,1", data)
		}
		for _, want := range []string{"0", "1"} {
			if got := p.MustRead(); got != swoole("4", want) {
				t.Fatalf("plain got %q, want %q", got, swoole("4", want))
			}
		}
		assertSilent(t, c, 300*time.Millisecond)
		assertSilent(t, p, 100*time.Millisecond)
		g.awaitQueueLen("4", 3)
		ack(c, frames[1].ID)
		_, data = readAcks(t, c, 2)
		if strings.Join(data, ",") != "2,3" {
			t.Fatalf("after the ack: %q, want 2,3", data)
		}
	})

	t.Run("plain and ack connections: the ack decides", func(t *testing.T) {
		g := startGateway(t, nil, server.Config{})
		p := g.dialReady("5")
		c := g.dialAck("5")
		g.push("5", "hi")
		if got := p.MustRead(); got != swoole("5", "hi") {
			t.Fatalf("plain got %q", got)
		}
		f := readAck(t, c)
		// The plain connection's TCP acknowledged it long ago: still held.
		assertSilent(t, c, 300*time.Millisecond)
		if n := g.processing("5"); n != 1 {
			t.Fatalf("processing list holds %d before the ack, want 1", n)
		}
		ack(c, f.ID)
		g.awaitProcessing("5", 0)
	})

	t.Run("a redelivered message reaches plain connections as its payload", func(t *testing.T) {
		g := startGateway(t, nil, server.Config{})
		c := g.dialAck("6")
		g.push("6", "payload")
		readAck(t, c)
		c.SendClose() // unacknowledged: back to the queue as an envelope
		g.awaitQueueLen("6", 1)
		raw, err := g.rc.LIndex(context.Background(), "user_6_messages", 0).Result()
		if err != nil || !strings.HasPrefix(raw, redisq.EnvelopeMarker) {
			t.Fatalf("requeued message = %q, %v: want an envelope", raw, err)
		}
		p := g.dialReady("6")
		if got := p.MustRead(); got != swoole("6", "payload") {
			t.Fatalf("plain got %q, want the payload alone", got)
		}
	})

	t.Run("a payload that is not UTF-8 goes as data_b64", func(t *testing.T) {
		g := startGateway(t, nil, server.Config{})
		c := g.dialAck("7")
		g.push("7", "\xff\xfe")
		f := readAck(t, c)
		if string(f.DataB64) != "\xff\xfe" || f.Data != "" {
			t.Fatalf("got %+v", f)
		}
	})
}

func TestAckRefusals(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	for _, tc := range []struct{ name, msg, reason string }{
		{"unknown id", `{"ack":"12345"}`, "never sent"},
		{"not a string", `{"ack":12345}`, "malformed ack"},
		{"null", `{"ack":null}`, "malformed ack"},
		{"not a number", `{"ack":"abc"}`, "malformed ack"},
		{"not JSON", `{"ack": "1`, "malformed ack"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := g.dialAck("r")
			c.Send(tc.msg)
			code, reason := c.ReadCloseReason(5 * time.Second)
			if code != ws.StatusPolicyViolation || !strings.Contains(reason, tc.reason) {
				t.Fatalf("close = %d %q, want 1008 with %q", code, reason, tc.reason)
			}
		})
	}
	t.Run("JSON of the client's own is a client message", func(t *testing.T) {
		c := g.dialAck("r")
		c.Send(`{"say":"the word ack is \"ack\""}`)
		if got := c.MustRead(); got != "hello" {
			t.Fatalf("reply = %q, want hello", got)
		}
	})
	t.Run("bad ack parameter", func(t *testing.T) {
		_, err := testutil.TryDial(g.addr, "/?user_id=r&ack=yes")
		if st, _ := testutil.Status(err); st != 400 {
			t.Fatalf("ack=yes: %v, want 400", err)
		}
	})
}

func TestAckedDeliveryAcrossInstances(t *testing.T) {
	rds := testutil.StartRedis(t)
	a := startGateway(t, rds, server.Config{Instance: "a"})
	b := startGateway(t, rds, server.Config{Instance: "b"})
	p := b.dialReady("9") // plain, on b
	c := a.dialAck("9")   // ack, on a
	testutil.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(b.logs.String(), "popping left to it") {
			return fmt.Errorf("b does not defer to a yet")
		}
		return nil
	})
	g := a
	g.push("9", "one", "two")
	frames, data := readAcks(t, c, 2)
	if strings.Join(data, ",") != "one,two" {
		t.Fatalf("ack connection got %q", data)
	}
	// b popped nothing: its plain connection gets the messages only as
	// relayed copies, once the ack connection acknowledged them.
	assertSilent(t, p, 300*time.Millisecond)
	ack(c, frames[1].ID)
	for _, want := range []string{"one", "two"} {
		if got := p.MustRead(); got != swoole("9", want) {
			t.Fatalf("plain on b got %q, want %q", got, swoole("9", want))
		}
	}
	// The ack connection leaves: b pops again for its plain connection.
	c.SendClose()
	testutil.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(b.logs.String(), "popping here") {
			return fmt.Errorf("b still defers to a")
		}
		return nil
	})
	g.push("9", "three")
	if got := p.MustRead(); got != swoole("9", "three") {
		t.Fatalf("plain on b got %q", got)
	}
}

// A raw payload that starts with the envelope's marker but is no envelope
// (no id): it is wrapped like any raw payload, and the user's messages go
// on. (Review finding: the wrap script took it for an envelope, Go did
// not, and the consumer retried it forever: seen failing, a timeout.)
func TestAMarkerThatIsNoEnvelopeIsAPayload(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	c := g.dialAck("p1")
	bogus := redisq.EnvelopeMarker + "not-an-id"
	g.push("p1", bogus, "after")
	if f := readAck(t, c); string(f.DataB64) != bogus {
		t.Fatalf("got %+v, want the bogus payload intact", f)
	}
	if f := readAck(t, c); f.Data != "after" {
		t.Fatalf("got %+v", f)
	}
}

// Blocking consumers block in BLMOVE for seconds: an ack connection that
// comes meanwhile gets the message that ends the block, with an id, and
// the message stays in Redis until it acknowledges it, whatever the plain
// connection's TCP says. (Review finding: it went to the plain connection
// alone and left Redis: seen failing.)
func TestAnAckConnectionJoiningABlockedConsumer(t *testing.T) {
	g := startGateway(t, nil, server.Config{Consumer: server.ConsumerBlocking})
	p := g.dialReady("b1")
	awaitBlocked(t, g, 1)
	c := g.dialAck("b1")
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := g.srv.Snapshot().Conns; n != 2 {
			return fmt.Errorf("%d connections registered", n)
		}
		return nil
	})
	g.push("b1", "m")
	if got := p.MustRead(); got != swoole("b1", "m") {
		t.Fatalf("plain got %q", got)
	}
	f := readAck(t, c)
	if f.Data != "m" {
		t.Fatalf("ack connection got %+v", f)
	}
	assertSilent(t, c, 300*time.Millisecond)
	if n := g.processing("b1"); n != 1 {
		t.Fatalf("processing list holds %d before the ack, want 1", n)
	}
	ack(c, f.ID)
	g.awaitProcessing("b1", 0)
}

// An instance that gets relayed a batch for a user who has ack
// connections on it says so again on the relay channel: the instance that
// popped missed the announcement, and learns it this way. Unless that
// instance holds ack connections of the user too: both pop, rightly, and
// a relay between them gets no answer (second review: they announced to
// each other every second).
func TestARelayToAnAckUserIsAnsweredWithAnAnnouncement(t *testing.T) {
	g := startGateway(t, nil, server.Config{Instance: "a"})
	subscribed := func(user string) *redis.PubSub {
		channel := "{user_" + user + "_messages}:relay"
		testutil.Eventually(t, 5*time.Second, func() error { // a listens on the user's relay channel
			n, err := g.rc.PubSubNumSub(t.Context(), channel).Result()
			if err != nil || n[channel] != 1 {
				return fmt.Errorf("subscribers %v (%v)", n, err)
			}
			return nil
		})
		ps := g.rc.Subscribe(t.Context(), channel)
		if _, err := ps.Receive(t.Context()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ps.Close() })
		return ps
	}

	// b holds ack connections of r0 too: its relays get no answer.
	g.dialAck("r0")
	subscribed("r0")
	must(t, g.rc.HSet(t.Context(), "{user_r0_messages}:connections", "b/ack", 1).Err())
	must(t, g.rc.Publish(t.Context(), "{user_r0_messages}:relay", "b\n2:hi").Err())
	testutil.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(g.logs.String(), "holds ack connections of the user too: not announcing") {
			return fmt.Errorf("the relay from b was not looked at")
		}
		return nil
	})

	// b has none for r1: what its ack script publishes when it
	// acknowledged "hi" for its plain connections is answered.
	c := g.dialAck("r1")
	ps := subscribed("r1")
	must(t, g.rc.Publish(t.Context(), "{user_r1_messages}:relay", "b\n2:hi").Err())
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-ps.Channel():
			if m.Payload == redisq.AckersChanged+"\n" {
				assertSilent(t, c, 200*time.Millisecond) // relayed copies are for plain connections
				return
			}
		case <-deadline:
			t.Fatal("no announcement after a relay to a user with an ack connection here")
		}
	}
}

// A batch sent again whole after the timeout is acknowledged by an ack of
// its last message (cumulative), as the first time. (Second review:
// seen failing, the batch came back every -ack-timeout.)
func TestACumulativeAckAfterARedeliveryCounts(t *testing.T) {
	g := startGateway(t, nil, server.Config{AckTimeout: 300 * time.Millisecond})
	c := g.dialAck("cl")
	g.push("cl", "a", "b", "c")
	readAcks(t, c, 3) // not acknowledged: they come again
	frames, _ := readAcks(t, c, 3)
	if !frames[0].Redelivered {
		t.Fatalf("second copy not marked redelivered: %+v", frames[0])
	}
	ack(c, frames[2].ID)
	g.awaitProcessing("cl", 0)
}

// A page whose handler throws on a message closes with 4000 without
// acknowledging it (/redpush.js does; a browser may not send 1003): that
// counts as a refusal, so the message goes alone and then to the
// dead-letter list, and the user's queue gets past it. (Second review:
// seen failing, the message came back for ever, the queue stuck behind it.)
func TestAMessageThePageCannotTakeIsSetAside(t *testing.T) {
	g := startGateway(t, nil, server.Config{})
	g.push("pz", "poison", "next")
	for round := 1; round <= 20; round++ {
		c := g.dialAck("pz")
		f := readAck(t, c)
		if f.Data == "next" {
			if dead := g.llen("{user_pz_messages}:dead"); dead != 1 {
				t.Fatalf("got past it after %d rounds, dead-lettered %d", round, dead)
			}
			return
		}
		_ = ws.WriteFrame(c.Conn, ws.MaskFrameInPlace(ws.NewCloseFrame(ws.NewCloseFrameBody(4000, "onMessage failed"))))
		for { // the rest of the batch may be on its way: until the server's close
			fr, err := ws.ReadFrame(c.Conn)
			if err != nil || fr.Header.OpCode == ws.OpClose {
				break
			}
		}
		_ = c.Conn.Close()
	}
	t.Fatal("after 20 refusals the message still comes: the queue is stuck behind it")
}

// ack=1 beside a token, in json format: the greeting and the reply to a
// client message stay json's; pushed messages are ack frames.
func TestAckedDeliveryWithATokenInJSONFormat(t *testing.T) {
	secret := []byte("a-secret-of-at-least-16-bytes")
	auth, err := server.NewHMACAuth(secret)
	must(t, err)
	tok, err := server.Sign(secret, "j1", time.Hour)
	must(t, err)
	g := startGateway(t, nil, server.Config{Auth: auth, Format: server.FormatJSON})
	c := testutil.DialPath(t, g.addr, "/?ack=1&token="+tok)
	if got := c.MustRead(); got != `{"event":"hello"}` {
		t.Fatalf("greeting %q", got)
	}
	g.push("j1", "m")
	f := readAck(t, c)
	if f.Data != "m" {
		t.Fatalf("got %+v", f)
	}
	c.Send("hi")
	if got := c.MustRead(); got != `{"event":"reply","data":"hello"}` {
		t.Fatalf("reply %q", got)
	}
	ack(c, f.ID)
	g.awaitProcessing("j1", 0)
}

// A user with an ack connection on each of two instances: both pop, each
// connection gets what its instance popped, and every message leaves
// Redis once one of them acknowledged it.
func TestAckConnectionsOnTwoInstances(t *testing.T) {
	rds := testutil.StartRedis(t)
	a := startGateway(t, rds, server.Config{Instance: "a"})
	b := startGateway(t, rds, server.Config{Instance: "b"})
	ca, cb := a.dialAck("2i"), b.dialAck("2i")
	got := make(chan string, 100)
	for _, c := range []*testutil.Client{ca, cb} {
		go func() {
			for {
				s, _, err := c.Read(20 * time.Second)
				var f ackFrame
				if err != nil || json.Unmarshal([]byte(s), &f) != nil {
					return
				}
				got <- f.Data
				c.Send(`{"ack":"` + f.ID + `"}`)
			}
		}()
	}
	const n = 40
	for i := range n {
		a.push("2i", fmt.Sprint(i))
	}
	seen := map[string]bool{}
	for len(seen) < n {
		select {
		case m := <-got:
			seen[m] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d messages reached an ack connection", len(seen), n)
		}
	}
	a.awaitQueueEmpty("2i")
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, inst := range []string{"a", "b"} {
			if k := a.rc.LLen(t.Context(), "{user_2i_messages}:processing:"+inst).Val(); k != 0 {
				return fmt.Errorf("%s holds %d", inst, k)
			}
		}
		return nil
	})
}

// The consumer of an instance that defers to another's ack connections
// ends when the user's last connection here closes. (Senior review: it
// looped, a goroutine and a Redis read a second, for as long as the ack
// connection elsewhere lived.)
func TestADeferringConsumerEndsWithItsUser(t *testing.T) {
	rds := testutil.StartRedis(t)
	a := startGateway(t, rds, server.Config{Instance: "a"})
	b := startGateway(t, rds, server.Config{Instance: "b"})
	b.dialAck("dz")
	p := a.dialReady("dz")
	logLine(a, "popping left to it")
	a.push("dz", "m") // a's consumer wakes, and defers
	p.SendClose()
	a.awaitConsumers(0, 5*time.Second)
}
