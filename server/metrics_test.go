package server_test

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// metric returns the value of one series in GET /metrics.
func metric(t *testing.T, g *gateway, series string) float64 {
	t.Helper()
	_, body := get(t, "http://"+g.addr+"/metrics")
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in /metrics", series)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func TestMetricsFollowAConnectPushDisconnect(t *testing.T) {
	g := startGateway(t, nil, server.Config{Workers: 7, Format: server.FormatRaw})
	if v := metric(t, g, "redpush_pool_capacity"); v != 7 {
		t.Fatalf("pool capacity %v", v)
	}
	c := g.dialReady("m")
	g.awaitConsumers(1, 5*time.Second)
	for series, want := range map[string]float64{"redpush_connections": 1, "redpush_users_online": 1, "redpush_consumers_running": 1, "redpush_redis_up": 1} {
		if v := metric(t, g, series); v != want {
			t.Errorf("%s = %v, want %v", series, v, want)
		}
	}
	g.push("m", "1", "2", "3")
	for range 3 {
		c.MustRead()
	}
	rawUpgrade(t, g.addr, "/?user_id=a%20b")
	c.SendClose()
	g.awaitConsumers(0, 5*time.Second)
	testutil.Eventually(t, 5*time.Second, func() error {
		if v := metric(t, g, "redpush_messages_delivered_total"); v != 3 {
			return fmt.Errorf("delivered %v, want 3", v)
		}
		return nil
	})
	for series, want := range map[string]float64{
		"redpush_connections": 0, "redpush_users_online": 0, "redpush_consumers_running": 0,
		`redpush_handshakes_refused_total{status="400"}`: 1, `redpush_handshakes_refused_total{status="503"}`: 0,
	} {
		if v := metric(t, g, series); v != want {
			t.Errorf("%s = %v, want %v", series, v, want)
		}
	}
	if v := metric(t, g, "redpush_pop_to_write_seconds_count"); v < 1 {
		t.Errorf("pop-to-write histogram has %v observations", v)
	}
}
