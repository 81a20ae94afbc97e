package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// A write returns once the kernel holds the bytes; a client that stopped
// reading leaves them there, and when the server closes it (here for its
// silence, then its writes time out) and the client never reads them, they
// are gone. Delivery counts only what the client's TCP acknowledged: every
// message the stalled client did not take reaches the user's next
// connection. Over TLS the acknowledged offset is counted below TLS.
func TestMessagesStuckInAClosedSocketGoToTheNextConnection(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"plain", false}, {"tls", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := server.Config{Format: server.FormatRaw, IdleTimeout: 2 * time.Second, WriteTimeout: time.Second}
			var ccfg *tls.Config
			if tc.tls {
				cfg.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
				ccfg = &tls.Config{InsecureSkipVerify: true} // the test's own certificate
			}
			g := startGateway(t, nil, cfg)
			stalled := testutil.DialTLSBuffer(t, g.addr, "st", 4096, ccfg)
			if got := stalled.MustRead(); got != "hello;\n" {
				t.Fatalf("greeting %q", got)
			}
			const n = 40 // 640 KiB: a part stays in the server's queue, a part in the socket
			msgs := make([]string, n)
			for i := range msgs {
				msgs[i] = fmt.Sprintf("%04d", i) + strings.Repeat("x", 16<<10)
			}
			g.push("st", msgs...)
			testutil.Eventually(t, 10*time.Second, func() error { // closed for its silence
				if n := g.srv.Snapshot().Conns; n != 0 {
					return fmt.Errorf("%d connections", n)
				}
				return nil
			})
			stalled.Reset() // it never read: what its socket held is lost
			next := testutil.DialTLSBuffer(t, g.addr, "st", 0, ccfg)
			if got := next.MustRead(); got != "hello;\n" {
				t.Fatalf("greeting %q", got)
			}
			got := map[string]bool{}
			for len(got) < n {
				m, _, err := next.Read(5 * time.Second)
				if err != nil {
					t.Fatalf("the next connection got %d of %d messages, then %v: the rest was counted delivered into the closed socket", len(got), n, err)
				}
				got[m[:4]] = true
			}
			// The reading connection's deliveries are confirmed, and leave
			// the processing list, without waiting for another message.
			g.awaitProcessingEmpty("st")
		})
	}
}

// A reading client acknowledges what it gets: the processing list empties
// after each delivery, with no further message to carry the ack.
func TestAReadingClientsDeliveriesAreAcknowledged(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	c := g.dialReady("rd")
	for i := range 3 {
		m := fmt.Sprint("m", i)
		g.push("rd", m)
		if got := c.MustRead(); got != m {
			t.Fatalf("got %q, want %q", got, m)
		}
		g.awaitProcessingEmpty("rd")
	}
	testutil.Eventually(t, 5*time.Second, func() error { // counted once the ack's reply came
		if d := g.srv.Snapshot().Delivered; d != 3 {
			return fmt.Errorf("Delivered = %d, want 3", d)
		}
		return nil
	})
}

// awaitProcessingEmpty waits until nothing of user is held in flight.
func (g *gateway) awaitProcessingEmpty(user string) {
	g.t.Helper()
	key := "{user_" + user + "_messages}:processing:test"
	testutil.Eventually(g.t, 10*time.Second, func() error {
		n, err := g.rc.LLen(context.Background(), key).Result()
		if err == nil && n != 0 {
			err = fmt.Errorf("%d messages held in %s", n, key)
		}
		return err
	})
}
