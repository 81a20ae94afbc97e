package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

func post(t *testing.T, url, key, body string) (int, string) {
	t.Helper()
	if key == "" {
		return postAuth(t, url, "", body)
	}
	return postAuth(t, url, "Bearer "+key, body)
}

func postAuth(t *testing.T, url, authorization, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestPushAPI(t *testing.T) {
	g := startGateway(t, nil, server.Config{APIKey: "k3y", Format: server.FormatRaw})
	url := "http://" + g.addr + "/api/push"
	c := g.dialReady("42")
	const shape = `body must be {"user":"42","data":"..."} or an array of them: `
	const noData = `data missing (a string; "" for an empty message)`
	for _, tc := range []struct {
		key, body string
		status    int
		answer    string // the whole body, without its final newline
	}{
		{"", `{"user":"42","data":"x"}`, 401, "missing or wrong API key"},
		{"wrong", `{"user":"42","data":"x"}`, 401, "missing or wrong API key"},
		{"k3y", `{"user":"4 2","data":"x"}`, 400, "message 0: user_id must be 1-128 characters of [A-Za-z0-9_.:-]"},
		{"k3y", `not json`, 400, shape + "invalid character 'o' in literal null (expecting 'u')"},
		{"k3y", `[]`, 400, "no messages"},
		{"k3y", `{"user":"42"}`, 400, "message 0: " + noData},                            // not an empty message
		{"k3y", `{"user":"42","data":null}`, 400, "message 0: " + noData},                // the same
		{"k3y", `[{"user":"42","data":"x"},{"user":"42"}]`, 400, "message 1: " + noData}, // nothing of a bad batch
		{"k3y", `{"user":4.2,"data":"x"}`, 400, shape + "user must be a string or an integer"},
		{"k3y", `{"user":"42","data":"one"}`, 200, `{"queued":1}`},
		{"k3y", `[{"user":"42","data":"two"},{"user":"42","data":"three"}]`, 200, `{"queued":2}`},
		{"k3y", `{"user":42,"data":"four"}`, 200, `{"queued":1}`}, // PHP and JavaScript send numbers
		{"k3y", `{"user":"42","data":""}`, 200, `{"queued":1}`},   // an empty message, asked for
	} {
		status, body := post(t, url, tc.key, tc.body)
		if status != tc.status || body != tc.answer+"\n" {
			t.Errorf("key %q body %s: %d %q, want %d %q", tc.key, tc.body, status, body, tc.status, tc.answer+"\n")
		}
	}
	// RFC 7235: the scheme is case-insensitive.
	if status, body := postAuth(t, url, "bearer k3y", `{"user":"42","data":"five"}`); status != 200 || body != "{\"queued\":1}\n" {
		t.Errorf("lower-case bearer: %d %q", status, body)
	}
	// Only what was accepted arrives, in order: nothing of a refusal.
	for _, want := range []string{"one", "two", "three", "four", "", "five"} {
		if got := c.MustRead(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	// Without -api-key there is no push API.
	g2 := startGateway(t, nil, server.Config{})
	if status, body := post(t, "http://"+g2.addr+"/api/push", "k3y", `{"user":"42","data":"x"}`); status != 404 || body != "404 page not found\n" {
		t.Fatalf("push API without an API key: %d %q, want 404", status, body)
	}
	if n := g2.rc.LLen(t.Context(), "user_42_messages").Val(); n != 0 {
		t.Fatal("push API without an API key queued the message")
	}
}

// With Redis down the push API answers 503 within about a second (the
// go-redis retries took 3.35 s before), so a producer can fail over fast.
func TestPushAPIAnswers503FastWhenRedisIsDown(t *testing.T) {
	g := startGateway(t, nil, server.Config{APIKey: "k3y"})
	g.rds.Stop()
	start := time.Now()
	status, body := post(t, "http://"+g.addr+"/api/push", "k3y", `{"user":"42","data":"x"}`)
	took := time.Since(start)
	if status != 503 || !strings.HasPrefix(body, "redis unavailable (the message may or may not have been queued; a retry may queue it twice): ") {
		t.Fatalf("%d %q, want 503 redis unavailable …", status, body)
	}
	// One second of budget; the slack is for a loaded machine.
	if took > 2500*time.Millisecond {
		t.Fatalf("503 after %v, want about a second", took)
	}
	t.Logf("503 after %v: %s", took, strings.TrimSpace(body))
}

// GET /check gives the verdict of a handshake with the same query, without
// upgrading, admitting or counting it as a refusal.
func TestCheckGivesTheHandshakesVerdict(t *testing.T) {
	g := startGateway(t, nil, server.Config{MaxUsers: 1, AllowedOrigins: []string{"https://app.example"}})
	g.dialReady("holder") // the only user it admits
	base := "http://" + g.addr + "/check"
	for _, tc := range []struct {
		query  string
		status int
		body   string
	}{
		{"?user_id=holder", 200, "ok: would connect as user holder"},
		{"?user_id=holder&origin=https://app.example", 200, "ok"},
		{"?user_id=bob%20smith", 400, "user_id must be"},
		{"", 400, "missing user_id"},
		{"?user_id=holder&origin=https://evil.example", 403, "not allowed"},
		{"?user_id=other", 503, "server is at capacity"},
	} {
		if status, body := get(t, base+tc.query); status != tc.status || !strings.Contains(body, tc.body) {
			t.Errorf("check%s: %d %q, want %d with %q", tc.query, status, body, tc.status, tc.body)
		}
	}
	if s := g.srv.Snapshot(); s.Refused400+s.Refused403+s.Refused503 != 0 || s.Users != 1 {
		t.Errorf("checks were counted as handshakes: %+v", s)
	}
	auth, err := server.NewHMACAuth([]byte("a-secret-of-at-least-16-bytes"))
	must(t, err)
	ga := startGateway(t, nil, server.Config{Auth: auth})
	if status, body := get(t, "http://"+ga.addr+"/check?user_id=42"); status != 401 || !strings.Contains(body, "token required") {
		t.Errorf("check without a token: %d %q, want 401", status, body)
	}
	tok, err := server.Sign([]byte("a-secret-of-at-least-16-bytes"), "42", time.Minute)
	must(t, err)
	if status, body := get(t, "http://"+ga.addr+"/check?token="+tok); status != 200 || !strings.Contains(body, "user 42") {
		t.Errorf("check with a token: %d %q, want 200 as user 42", status, body)
	}
}

// A Redis that hangs (stopped, not gone: the connection stays open) gets
// the same bound: the answer comes within about a second (go-redis ignores
// a context's deadline on the socket unless told to). The push was sent, so
// the 503 says it may have been queued; here it was.
func TestPushAPIAnswersFastWhenRedisHangs(t *testing.T) {
	g := startGateway(t, nil, server.Config{APIKey: "k3y"})
	if status, body := post(t, "http://"+g.addr+"/api/push", "k3y", `{"user":"7","data":"warm"}`); status != 200 {
		t.Fatalf("%d %q", status, body) // a pooled connection to Redis exists
	}
	thaw := g.rds.Freeze()
	start := time.Now()
	status, body := post(t, "http://"+g.addr+"/api/push", "k3y", `{"user":"7","data":"during"}`)
	took := time.Since(start)
	thaw()
	if status != 503 || !strings.Contains(body, "may or may not have been queued") {
		t.Fatalf("%d %q, want 503 saying the outcome is unknown", status, body)
	}
	if took > 2500*time.Millisecond {
		t.Fatalf("answered after %v with Redis hung, want about a second", took)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n, _ := g.rc.LLen(context.Background(), "user_7_messages").Result(); n != 2 {
			return fmt.Errorf("queue holds %d", n)
		}
		return nil
	})
}
