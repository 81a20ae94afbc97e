package server_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/redpush/redpush/server"
)

func post(t *testing.T, url, key, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
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
	for _, tc := range []struct {
		key, body string
		status    int
	}{
		{"", `{"user":"42","data":"x"}`, 401},
		{"wrong", `{"user":"42","data":"x"}`, 401},
		{"k3y", `{"user":"4 2","data":"x"}`, 400},
		{"k3y", `not json`, 400},
		{"k3y", `[]`, 400},
		{"k3y", `{"user":"42","data":"one"}`, 200},
		{"k3y", `[{"user":"42","data":"two"},{"user":"42","data":"three"}]`, 200},
	} {
		if status, body := post(t, url, tc.key, tc.body); status != tc.status {
			t.Errorf("key %q body %s: %d %q, want %d", tc.key, tc.body, status, body, tc.status)
		}
	}
	for _, want := range []string{"one", "two", "three"} { // same delivery path, same order
		if got := c.MustRead(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	// Without -api-key there is no push API.
	g2 := startGateway(t, nil, server.Config{})
	if status, _ := post(t, "http://"+g2.addr+"/api/push", "k3y", `{"user":"42","data":"x"}`); status == 200 {
		t.Fatal("push API enabled without an API key")
	}
}
