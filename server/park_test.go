package server_test

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// Messages trickle in at random spacing around the moments consumers park
// and resume: a hint lost between the two would show as a message waiting
// for the 5 s sweep. (The random pauses shape the load; nothing waits on
// them.)
func TestParkingLosesNoHint(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	const users, msgs = 8, 150
	var wg sync.WaitGroup
	var mu sync.Mutex
	var worst time.Duration
	for u := range users {
		user := fmt.Sprint("w", u)
		c := g.dialReady(user)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range msgs {
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
				at := time.Now()
				g.push(user, fmt.Sprint(i))
				got, _, err := c.Read(3 * time.Second)
				if err != nil || got != fmt.Sprint(i) {
					t.Errorf("%s: message %d: %q %v", user, i, got, err)
					return
				}
				mu.Lock()
				worst = max(worst, time.Since(at))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("worst push-to-read latency %v", worst)
	if worst > time.Second {
		t.Errorf("a message waited %v: a hint was lost", worst)
	}
}

// Connections of one user come and go around its consumer's parking: no
// session or task stays behind, and a message pushed meanwhile arrives.
func TestConnectionChurnAroundParkingLeavesNothing(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw})
	var wg sync.WaitGroup
	for u := range 6 {
		user := fmt.Sprint("c", u)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				c := g.dialReady(user)
				if i%4 == 0 {
					g.push(user, fmt.Sprint(i))
					if got, _, err := c.Read(3 * time.Second); err != nil || got != fmt.Sprint(i) {
						t.Errorf("%s: %q %v", user, got, err)
					}
				}
				time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
				if i%2 == 0 {
					c.SendClose()
				} else {
					c.Reset()
				}
			}
		}()
	}
	wg.Wait()
	g.awaitConsumers(0, 10*time.Second)
	if s := g.srv.Snapshot(); s.Users != 0 || s.ConsumerTasks != 0 {
		t.Errorf("left behind: %+v", s)
	}
}

// A shutdown ends every consumer, parked ones too: their users' last
// connections are released after the pool closed, when no task can resume
// them (seen failing: 10 sessions and 10 consumers left after Serve
// returned, hinted; blocking, the control, ended all).
func TestParkedConsumersEndWithTheShutdown(t *testing.T) {
	for _, mode := range []string{server.ConsumerBlocking, server.ConsumerHinted} {
		t.Run(mode, func(t *testing.T) {
			g := startGateway(t, nil, server.Config{Format: server.FormatRaw, Consumer: mode})
			const users = 10
			g.dialUsers("p", users) // and never read again: each lingers
			g.awaitConsumers(users, 10*time.Second)
			if mode == server.ConsumerHinted {
				testutil.Eventually(t, 5*time.Second, func() error {
					if n := g.srv.Snapshot().ConsumerTasks; n != 0 {
						return fmt.Errorf("%d tasks: not all parked", n)
					}
					return nil
				})
			}
			if err := g.shutdown(); err != nil {
				t.Logf("Serve: %v", err)
			}
			if s := g.srv.Snapshot(); s.Users != 0 || s.Consumers != 0 {
				t.Errorf("%d sessions and %d consumers left after Serve returned", s.Users, s.Consumers)
			}
		})
	}
}

// Redis loses an instance's entry in a user's relay set (a restart from an
// older snapshot, a failover to a replica that lagged) without losing the
// instance's heartbeat: the periodic registration puts it back, so other
// instances publish for its connections again (seen failing: only a
// relisted heartbeat registered again).
func TestALostRelayEntryComesBack(t *testing.T) {
	g := startGateway(t, nil, server.Config{Format: server.FormatRaw, InstanceTTL: time.Second})
	g.dialReady("lost")
	key := "{user_lost_messages}:instances"
	testutil.Eventually(t, 5*time.Second, func() error {
		if ok, _ := g.rc.SIsMember(t.Context(), key, "test").Result(); !ok {
			return fmt.Errorf("not in %s yet", key)
		}
		return nil
	})
	g.rc.Del(t.Context(), key)
	testutil.Eventually(t, 10*time.Second, func() error { // every 6 heartbeats of 333 ms
		if ok, _ := g.rc.SIsMember(t.Context(), key, "test").Result(); !ok {
			return fmt.Errorf("still missing from %s", key)
		}
		return nil
	})
}
