package server_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/redpush/redpush/server"
)

// The demo page in a real browser: headless Chromium (Debian's package,
// installed by `make test`) opens the page, connects as a user, a message is
// LPUSHed into Redis, and the test waits for it in the page's DOM. The
// screenshot is kept in testdata/artifacts/ for a person to look at.
func TestDemoPageInChromium(t *testing.T) {
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (run `make test`, which installs it): %v", err)
	}
	g := startGateway(t, nil, server.Config{DemoPush: true})
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(900, 700),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	defer cancelTimeout()

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(chromedp.Do(ctx,
		chromedp.Navigate("http://"+g.addr+"/?user_id=42"),
		chromedp.WaitVisible(chromedp.CSS("#state.open"))))
	state, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#state")))
	must(err)
	g.push("42", "order shipped")
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](
		`document.getElementById("content").innerText.includes("order shipped")`,
		chromedp.WithPollingTimeout(15*time.Second)))
	must(err)
	content, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#content")))
	must(err)
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	must(err)
	if state != "connected as 42" {
		t.Errorf("state %q", state)
	}
	for _, want := range []string{"hello;", "user_42_messages", "order shipped"} {
		if !strings.Contains(content, want) {
			t.Errorf("page shows %q, want it to contain %q", content, want)
		}
	}
	dir := filepath.Join("testdata", "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "demo-page.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: server/%s", shot)
}
