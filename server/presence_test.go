package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// getPresence asks g's presence API about user.
func getPresence(t *testing.T, g *gateway, key, user string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+g.addr+"/api/presence?user="+user, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// onlineIn counts the instances that vouch for user now: the one read
// command business code runs.
func onlineIn(t *testing.T, rc redis.UniversalClient, user string) int64 {
	t.Helper()
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	n, err := rc.ZCount(t.Context(), "{user_"+user+"_messages}:presence", now, "+inf").Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// presenceEvents subscribes to the presence channel and returns what
// arrives.
func presenceEvents(t *testing.T, rc redis.UniversalClient, channel string) <-chan string {
	t.Helper()
	ps := rc.Subscribe(t.Context(), channel)
	if _, err := ps.Receive(t.Context()); err != nil { // the subscription is in place
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ps.Close() })
	out := make(chan string, 100)
	go func() {
		for m := range ps.Channel() {
			out <- m.Payload
		}
	}()
	return out
}

func nextEvent(t *testing.T, events <-chan string) string {
	t.Helper()
	select {
	case e := <-events:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no presence event within 5 s")
		return ""
	}
}

// noMoreEvents fails if an event other than a marker it publishes itself
// comes before that marker: pub/sub keeps order, so whatever was published
// before it has arrived by then.
func noMoreEvents(t *testing.T, rc redis.UniversalClient, channel string, events <-chan string) {
	t.Helper()
	if err := rc.Publish(t.Context(), channel, "marker").Err(); err != nil {
		t.Fatal(err)
	}
	if e := nextEvent(t, events); e != "marker" {
		t.Fatalf("an extra presence event: %s", e)
	}
}

// A user with tabs on two instances: one "online" event, the presence API
// of either instance counts every connection, Redis answers the one read
// command, and after the last tab closes, one "offline" event.
func TestPresenceAcrossInstances(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	events := presenceEvents(t, rc, "redpush:presence")
	a := startGateway(t, rds, server.Config{Instance: "pa", APIKey: "k", Format: server.FormatRaw})
	b := startGateway(t, rds, server.Config{Instance: "pb", APIKey: "k", Format: server.FormatRaw})

	a1 := a.dialReady("42")
	if got := nextEvent(t, events); got != `{"user":"42","event":"online"}` {
		t.Fatalf("event %s", got)
	}
	a2 := a.dialReady("42")
	b1 := b.dialReady("42")
	testutil.Eventually(t, 5*time.Second, func() error {
		for _, g := range []*gateway{a, b} {
			if code, body := getPresence(t, g, "k", "42"); code != 200 || body != `{"user":"42","online":true,"connections":3}` {
				return fmt.Errorf("%d %s", code, body)
			}
		}
		if n := onlineIn(t, rc, "42"); n != 2 {
			return fmt.Errorf("ZCOUNT: %d instances, want 2", n)
		}
		return nil
	})
	noMoreEvents(t, rc, "redpush:presence", events) // three tabs, two instances: one event

	a1.SendClose()
	b1.SendClose()
	testutil.Eventually(t, 5*time.Second, func() error {
		if code, body := getPresence(t, b, "k", "42"); body != `{"user":"42","online":true,"connections":1}` {
			return fmt.Errorf("%d %s", code, body)
		}
		return onlineIs(t, rc, "42", 1)
	})
	noMoreEvents(t, rc, "redpush:presence", events)

	closed := time.Now()
	a2.SendClose()
	if got := nextEvent(t, events); got != `{"user":"42","event":"offline"}` {
		t.Fatalf("event %s", got)
	}
	if took := time.Since(closed); took > time.Second {
		t.Errorf("offline %v after the last tab closed, want within a second", took)
	} else {
		t.Logf("offline %v after the last tab closed", took)
	}
	if code, body := getPresence(t, a, "k", "42"); body != `{"user":"42","online":false,"connections":0}` {
		t.Fatalf("after the last close: %d %s", code, body)
	}
	if n := onlineIn(t, rc, "42"); n != 0 {
		t.Fatalf("ZCOUNT after the last close: %d", n)
	}
	noMoreEvents(t, rc, "redpush:presence", events)
}

func onlineIs(t *testing.T, rc redis.UniversalClient, user string, want int64) error {
	if n := onlineIn(t, rc, user); n != want {
		return fmt.Errorf("ZCOUNT: %d instances, want %d", n, want)
	}
	return nil
}

// The presence API's answers to bad requests, and its batch form.
func TestPresenceAPI(t *testing.T) {
	g := startGateway(t, nil, server.Config{APIKey: "k", Format: server.FormatRaw})
	g.dialReady("42")
	g.dialReady("42")
	url := "http://" + g.addr + "/api/presence"
	testutil.Eventually(t, 5*time.Second, func() error {
		if _, body := getPresence(t, g, "k", "42"); body != `{"user":"42","online":true,"connections":2}` {
			return fmt.Errorf("%s", body)
		}
		return nil
	})
	if code, body := getPresence(t, g, "", "42"); code != 401 || body != "missing or wrong API key" {
		t.Errorf("no key: %d %s", code, body)
	}
	if code, body := getPresence(t, g, "k", "4%202"); code != 400 || !strings.Contains(body, "user_id must be") {
		t.Errorf("bad id: %d %s", code, body)
	}
	if code, body := getPresence(t, g, "k", "43"); code != 200 || body != `{"user":"43","online":false,"connections":0}` {
		t.Errorf("offline user: %d %s", code, body)
	}

	code, body := post(t, url, "k", `["42","43",44]`)
	var got struct {
		Users map[string]struct {
			Online      bool `json:"online"`
			Connections int  `json:"connections"`
		} `json:"users"`
	}
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil {
		t.Fatalf("batch: %d %s (%v)", code, body, err)
	}
	if len(got.Users) != 3 || !got.Users["42"].Online || got.Users["42"].Connections != 2 || got.Users["43"].Online || got.Users["44"].Online {
		t.Errorf("batch: %s", body)
	}
	many := make([]string, 1001)
	for i := range many {
		many[i] = strconv.Quote(strconv.Itoa(i))
	}
	for _, tc := range []struct {
		key, body string
		status    int
		answer    string
	}{
		{"", `["42"]`, 401, "missing or wrong API key"},
		{"k", `{"user":"42"}`, 400, `body must be a JSON array of user ids, such as ["42","43"]: json: cannot unmarshal object into Go value of type []server.pushUser`},
		{"k", `["4 2"]`, 400, "user 0: user_id must be 1-128 characters of [A-Za-z0-9_.:-]"},
		{"k", "[" + strings.Join(many, ",") + "]", 400, "1001 user ids; at most 1000 per request"},
		{"k", `[]`, 200, `{"users":{}}`},
	} {
		code, body := post(t, url, tc.key, tc.body)
		if code != tc.status || strings.TrimSpace(body) != tc.answer {
			t.Errorf("%.40s: %d %q, want %d %q", tc.body, code, strings.TrimSpace(body), tc.status, tc.answer)
		}
	}
}

// Without -api-key there is no presence API, as there is no push API.
func TestNoPresenceAPIWithoutAKey(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	if code, _ := getPresence(t, g, "", "42"); code != 404 {
		t.Errorf("GET: %d, want 404", code)
	}
	if code, _ := post(t, "http://"+g.addr+"/api/presence", "", `["42"]`); code != 404 {
		t.Errorf("POST: %d, want 404", code)
	}
}

// A shutdown takes the instance's users offline, with their events.
func TestAShutdownTakesItsUsersOffline(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	events := presenceEvents(t, rc, "custom:presence")
	g := startGateway(t, rds, server.Config{Instance: "sd", Format: server.FormatRaw, PresenceChannel: "custom:presence"})
	g.dialReady("s1")
	g.dialReady("s2")
	got := map[string]bool{nextEvent(t, events): true, nextEvent(t, events): true}
	if !got[`{"user":"s1","event":"online"}`] || !got[`{"user":"s2","event":"online"}`] {
		t.Fatalf("events %v", got)
	}
	if err := g.shutdown(); err != nil {
		t.Fatal(err)
	}
	got = map[string]bool{nextEvent(t, events): true, nextEvent(t, events): true}
	if !got[`{"user":"s1","event":"offline"}`] || !got[`{"user":"s2","event":"offline"}`] {
		t.Fatalf("events %v", got)
	}
	if n := onlineIn(t, rc, "s1") + onlineIn(t, rc, "s2"); n != 0 {
		t.Fatalf("%d entries left after the shutdown", n)
	}
}

// PresenceOff: presence is still recorded, but no event is published.
func TestPresenceEventsOff(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	def := presenceEvents(t, rc, server.DefaultPresenceChannel)
	off := presenceEvents(t, rc, server.PresenceOff)
	g := startGateway(t, rds, server.Config{APIKey: "k", Format: server.FormatRaw, PresenceChannel: server.PresenceOff})
	c := g.dialReady("q")
	testutil.Eventually(t, 5*time.Second, func() error { return onlineIs(t, rc, "q", 1) })
	c.SendClose()
	testutil.Eventually(t, 5*time.Second, func() error { return onlineIs(t, rc, "q", 0) })
	noMoreEvents(t, rc, server.DefaultPresenceChannel, def)
	noMoreEvents(t, rc, server.PresenceOff, off)
}
