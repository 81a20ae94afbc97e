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
		// original's hard-coded ws://127.0.0.1:9502 fails behind any proxy.
		if !strings.Contains(p, "location.host") || strings.Contains(p, "127.0.0.1") {
			t.Error("the page does not connect to its own host")
		}
	}
}
