package html

import (
	"strings"
	"testing"
)

func TestPage(t *testing.T) {
	for _, demo := range []bool{false, true} {
		p := string(Page(Options{DemoPush: demo}))
		if got := strings.Contains(p, `id="demo-push"`); got != demo {
			t.Errorf("DemoPush=%v: push box present = %v", demo, got)
		}
		// The page must connect to the host it was served from, as the
		// original's hard-coded ws://127.0.0.1:9502 fails behind any proxy:
		// it leaves the address to its client, which takes the page's.
		if !strings.Contains(p, `<script src="/redpush.js">`) || strings.Contains(p, "127.0.0.1") {
			t.Error("the page does not connect through /redpush.js")
		}
		if c := string(Client); !strings.Contains(c, "location.host") || strings.Contains(c, "127.0.0.1") {
			t.Error("redpush.js does not connect to the page's host by default")
		}
	}
}
