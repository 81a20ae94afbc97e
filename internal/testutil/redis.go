package testutil

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a redis-server process owned by one test.
type Redis struct {
	t    testing.TB
	Port int
	args []string // extra redis-server arguments, kept for Restart
	cmd  *exec.Cmd
	exit chan struct{}
}

// StartRedis starts redis-server on a free loopback port, without
// persistence, and stops it when the test ends.
func StartRedis(t testing.TB, extraArgs ...string) *Redis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found (run `make test`, which installs it): %v", err)
	}
	return startRedisWith(t, func() []string { return extraArgs })
}

// startRedisWith starts redis-server with the arguments args returns. A port
// found free a moment ago may be taken by a parallel test before the server
// binds it (the server then exits at once): it tries again, on new ports
// and with new arguments, up to three times.
func startRedisWith(t testing.TB, args func() []string) *Redis {
	t.Helper()
	r := &Redis{t: t}
	var err error
	for range 3 {
		r.Port, r.args = FreePort(t), args()
		if err = r.launch(); err == nil {
			t.Cleanup(r.Stop)
			return r
		}
	}
	t.Fatalf("starting redis-server: %v", err)
	return nil
}

// Addr is host:port of the server.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.Port) }

// URL is the go-redis URL of the server.
func (r *Redis) URL() string { return "redis://" + r.Addr() }

// UserURL creates the ACL user name, who may use every key and channel and
// run every command but those rules take away (e.g. "-client"), and
// returns a URL that logs in as that user.
func (r *Redis) UserURL(name string, rules ...string) string {
	r.t.Helper()
	args := append([]any{"ACL", "SETUSER", name, "on", ">pw", "~*", "&*", "+@all"}, Any(rules)...)
	if err := r.Client().Do(context.Background(), args...).Err(); err != nil {
		r.t.Fatal(err)
	}
	return "redis://" + name + ":pw@" + r.Addr()
}

// Client returns a go-redis client for the test's own commands.
func (r *Redis) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	r.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (r *Redis) start() {
	r.t.Helper()
	if err := r.launch(); err != nil {
		r.t.Fatalf("starting redis-server: %v", err)
	}
}

// launch starts the server and waits until it answers, or reports why not.
func (r *Redis) launch() error {
	args := append([]string{
		"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no",
		"--maxclients", "20000", "--loglevel", "warning",
	}, r.args...)
	r.cmd = exec.Command("redis-server", args...)
	out := &SyncBuffer{}
	r.cmd.Stdout, r.cmd.Stderr = out, out
	if err := r.cmd.Start(); err != nil {
		return err
	}
	r.exit = make(chan struct{})
	go func(cmd *exec.Cmd, exit chan struct{}) { _ = cmd.Wait(); close(exit) }(r.cmd, r.exit)
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		select {
		case <-r.exit:
			r.cmd = nil
			return fmt.Errorf("redis-server on port %d exited at start: %s", r.Port, strings.TrimSpace(out.String()))
		default:
		}
		err := c.Ping(context.Background()).Err()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			r.Stop()
			return fmt.Errorf("redis-server on port %d does not answer: %v", r.Port, err)
		}
		time.Sleep(10 * time.Millisecond) // polling a process that announces nothing
	}
}

// Stop kills the server and waits for it to exit.
func (r *Redis) Stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exit
	r.cmd = nil
}

// Restart stops the server and starts a new one on the same port, with the
// same arguments: empty, unless the test turned persistence on.
func (r *Redis) Restart() {
	r.Stop()
	r.start()
}

// Down kills the server, keeps it down for d (the length of the injected
// outage), and starts it again on the same port with the same arguments.
func (r *Redis) Down(d time.Duration) {
	r.Stop()
	time.Sleep(d)
	r.start()
}

// Pause stops the server's process (SIGSTOP) for d, then resumes it: a
// stall that clients see as a server that neither answers nor hangs up.
func (r *Redis) Pause(d time.Duration) {
	r.t.Helper()
	thaw := r.Freeze()
	time.Sleep(d)
	thaw()
}

// Freeze stops the server's process (SIGSTOP) until the returned function
// resumes it (SIGCONT).
func (r *Redis) Freeze() (thaw func()) {
	r.t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		r.t.Fatalf("SIGSTOP redis-server: %v", err)
	}
	p := r.cmd.Process
	return func() { _ = p.Signal(syscall.SIGCONT) }
}

// PID is the redis-server's process id.
func (r *Redis) PID() int { return r.cmd.Process.Pid }

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Eventually polls cond until it returns nil or timeout passes, then fails
// the test with cond's last error. Use it to await a state that no event
// announces (a process being ready, a counter reaching a value).
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
