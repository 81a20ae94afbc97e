package testutil

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Monitor is a MONITOR connection to a redis-server: every command the
// server runs from then on, as one line each, e.g.
// `1700000000.123456 [0 127.0.0.1:5555] "BLMOVE" "user_42_messages" … "10"`.
// Unlike INFO's global counters it says which command ran, so a test can
// tell its subject's commands from background ones (heartbeats, PINGs).
type Monitor struct {
	t     testing.TB
	rds   *Redis
	mu    sync.Mutex
	lines []string
	done  chan struct{}
	echo  net.Conn // for Mark
	echoR *bufio.Reader
}

// StartMonitor connects to r and starts MONITOR; it ends with the test.
func (r *Redis) StartMonitor() *Monitor {
	r.t.Helper()
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		r.t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if _, err := c.Write([]byte("MONITOR\r\n")); err != nil {
		r.t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, err := br.ReadString('\n'); err != nil || l != "+OK\r\n" {
		r.t.Fatalf("MONITOR: %q %v", l, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	echo, err := net.Dial("tcp", r.Addr())
	if err != nil {
		r.t.Fatal(err)
	}
	m := &Monitor{t: r.t, rds: r, done: make(chan struct{}), echo: echo, echoR: bufio.NewReader(echo)}
	go func() {
		defer close(m.done)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			m.mu.Lock()
			m.lines = append(m.lines, strings.TrimSuffix(strings.TrimPrefix(l, "+"), "\r\n"))
			m.mu.Unlock()
		}
	}()
	r.t.Cleanup(func() { _ = c.Close(); _ = echo.Close(); <-m.done })
	return m
}

// Mark runs `ECHO <marker>` on the monitor's own plain connection (one
// that sends nothing else) and waits until the monitor saw it: every
// command the server ran before it is then in Lines. It returns the index
// of the marker's line.
func (m *Monitor) Mark(marker string) int {
	m.t.Helper()
	fmt.Fprintf(m.echo, "*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n", len(marker), marker)
	_ = m.echo.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range 2 { // $len, then the marker
		if _, err := m.echoR.ReadString('\n'); err != nil {
			m.t.Fatalf("ECHO: %v", err)
		}
	}
	idx := -1
	Eventually(m.t, 10*time.Second, func() error {
		for i, l := range m.Lines() {
			if strings.Contains(strings.ToLower(l), strings.ToLower(`"ECHO" "`+marker+`"`)) {
				idx = i
				return nil
			}
		}
		return fmt.Errorf("the monitor has not seen the marker %q", marker)
	})
	return idx
}

// Lines returns the commands seen so far.
func (m *Monitor) Lines() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.lines...)
}
