package server_test

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// The demo page in a real browser: headless Chromium (Debian's package,
// installed by `make test`) opens the page, connects as a user, a message is
// LPUSHed into Redis, and the test waits for it in the page's DOM. The
// screenshots are kept in testdata/artifacts/ for a person to look at.
func TestDemoPageInChromium(t *testing.T) {
	g := startGateway(t, nil, server.Config{DemoPush: true})
	ctx := testutil.Browser(t, 60*time.Second)
	must(t, chromedp.Do(ctx,
		chromedp.Navigate("http://"+g.addr+"/?user_id=7"),
		chromedp.WaitVisible(chromedp.CSS("#state.open"))))
	state, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#state")))
	must(t, err)
	if state != "connected as 7" {
		t.Errorf("state %q", state)
	}
	g.push("7", "order shipped")
	content := testutil.PageText(t, ctx, "#content", "order shipped", 15*time.Second)
	for _, want := range []string{"hello;", "user_7_messages", "order shipped"} {
		if !strings.Contains(content, want) {
			t.Errorf("page shows %q, want it to contain %q", content, want)
		}
	}
	testutil.Screenshot(t, ctx, "demo-page.png")
}

// Opened with no query, the page connects as the user of the quick start's
// hint, so `LPUSH user_42_messages hi` shows on it.
func TestDemoPageDefaultsToTheHintsUser(t *testing.T) {
	g := startGateway(t, nil, server.Config{DemoPush: true})
	ctx := testutil.Browser(t, 60*time.Second)
	must(t, chromedp.Do(ctx,
		chromedp.Navigate("http://"+g.addr+"/"),
		chromedp.WaitVisible(chromedp.CSS("#state.open"))))
	g.push(server.DemoUser, "hi")
	testutil.PageText(t, ctx, "#content", "user_42_messages 队列发送消息:hi", 15*time.Second)
}

// A browser reports a refused upgrade as close 1006 and hides the answer;
// the page asks the server why and shows the status and the reason.
func TestDemoPageShowsWhyItWasRefused(t *testing.T) {
	g := startGateway(t, nil, server.Config{MaxUsers: 1})
	g.dialReady("holder") // the only user it admits
	auth, err := server.NewHMACAuth([]byte("a-secret-of-at-least-16-bytes"))
	must(t, err)
	ga := startGateway(t, nil, server.Config{Auth: auth})
	go403 := startGateway(t, nil, server.Config{AllowedOrigins: []string{"https://app.example"}})
	ctx := testutil.Browser(t, 90*time.Second)
	for _, tc := range []struct {
		url, want, shot string
	}{
		{"http://" + g.addr + "/?user_id=bob%20smith", "refused: 400 user_id must be 1-128 characters of [A-Za-z0-9_.:-]", "refused-400.png"},
		{"http://" + g.addr + "/?user_id=other", "refused: 503 server is at capacity", ""},
		{"http://" + ga.addr + "/", "refused: 401 token required", ""},
		{"http://" + go403.addr + "/?user_id=1", "refused: 403 origin \"http://" + go403.addr + "\" not allowed", ""},
	} {
		must(t, chromedp.Do(ctx, chromedp.Navigate(tc.url)))
		testutil.PageText(t, ctx, "#content", tc.want, 15*time.Second)
		if tc.shot != "" {
			testutil.Screenshot(t, ctx, tc.shot)
		}
	}
}

// With authentication on, the page connects with the ?token= of its URL,
// or with one pasted into its token field.
func TestDemoPageConnectsWithAToken(t *testing.T) {
	secret := []byte("a-secret-of-at-least-16-bytes")
	auth, err := server.NewHMACAuth(secret)
	must(t, err)
	tok, err := server.Sign(secret, "42", time.Hour)
	must(t, err)
	g := startGateway(t, nil, server.Config{Auth: auth})
	ctx := testutil.Browser(t, 60*time.Second)
	must(t, chromedp.Do(ctx,
		chromedp.Navigate("http://"+g.addr+"/?token="+tok),
		chromedp.WaitVisible(chromedp.CSS("#state.open"))))
	testutil.PageText(t, ctx, "#state", "connected as 42", 5*time.Second)
	g.push("42", "signed")
	testutil.PageText(t, ctx, "#content", "队列发送消息:signed", 15*time.Second)

	// No token in the URL: refused, then a pasted token connects.
	must(t, chromedp.Do(ctx, chromedp.Navigate("http://"+g.addr+"/")))
	testutil.PageText(t, ctx, "#content", "refused: 401", 15*time.Second)
	must(t, chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS("#token"), tok),
		chromedp.Click(chromedp.CSS("#connect")),
		chromedp.WaitVisible(chromedp.CSS("#state.open"))))
	testutil.PageText(t, ctx, "#state", "connected as 42", 5*time.Second)
	testutil.Screenshot(t, ctx, "token.png")
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Acknowledged delivery in a real browser, through /redpush.js: the page
// acknowledges what it shows; a message whose acknowledgement never
// reached the gateway comes again after a gateway restart, and the page,
// which reconnected by itself, shows it once (the client drops the
// redelivery by its id) and acknowledges it, so it leaves Redis.
func TestDemoPageAckModeAcrossARestart(t *testing.T) {
	rds := testutil.StartRedis(t)
	g := startGateway(t, rds, server.Config{})
	proxy := testutil.StartProxy(t, g.addr) // the browser's path to the gateway
	ctx := testutil.Browser(t, 90*time.Second)
	must(t, chromedp.Do(ctx,
		chromedp.Navigate("http://"+proxy.Addr()+"/?user_id=8&ack=1"),
		chromedp.WaitVisible(chromedp.CSS("#state.open"))))
	testutil.PageText(t, ctx, "#state", "connected as 8 (acknowledged delivery)", 5*time.Second)
	g.push("8", "first")
	testutil.PageText(t, ctx, "#content", "first", 15*time.Second)
	g.awaitProcessing("8", 0) // the page acknowledged it

	// The page's acknowledgement of the second message is lost on its way.
	proxy.MuteClients()
	g.push("8", "second")
	testutil.PageText(t, ctx, "#content", "second", 15*time.Second)
	if n := g.processing("8"); n != 1 {
		t.Fatalf("processing list holds %d, want the unacknowledged message", n)
	}
	// A restart: the message goes back to the queue, with its id.
	must(t, g.shutdown())
	g2 := startGateway(t, rds, server.Config{Addr: g.addr})
	testutil.PageText(t, ctx, "#dropped", "1 duplicate dropped", 30*time.Second)
	g2.awaitProcessing("8", 0)
	g2.awaitQueueEmpty("8")
	content, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#content")))
	must(t, err)
	if n := strings.Count(content, "second"); n != 1 {
		t.Fatalf("the page shows %q %d times, want once:\n%s", "second", n, content)
	}
	if !strings.Contains(content, "reconnecting in") {
		t.Errorf("the page does not say it reconnects:\n%s", content)
	}
	g2.push("8", "third", "\xff\xfe") // the second one is not UTF-8: data_b64
	testutil.PageText(t, ctx, "#content", "third", 15*time.Second)
	testutil.PageText(t, ctx, "#content", "[binary 2 bytes]", 15*time.Second)
	testutil.Screenshot(t, ctx, "ack-mode.png")
}
