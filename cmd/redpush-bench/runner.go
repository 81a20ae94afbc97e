package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/redis/go-redis/v9"
)

// The runner behind suite and compare: each run gets a fresh redis-server
// and a fresh server process, and the bench runs as a child process of its
// own against them, sampling the server's whole process tree and Redis.

// serverSpec is a server command to measure.
type serverSpec struct {
	name string
	// cmd is run with sh -c, after {addr} and {redis} are replaced by the
	// listen address and the Redis URL of the run.
	cmd string
	// addr and redisAddr fix where a server that cannot take {addr} and
	// {redis} listens and looks for Redis; empty: a free loopback port.
	addr, redisAddr string
}

// runEnv is what every run shares.
type runEnv struct {
	self      string   // this binary
	dir       string   // scratch: JSON files and server logs
	benchArgs []string // the scenario's flags
	redisArgs []string // extra redis-server flags
	procs     int      // server processes the command starts (sharing the port); 0 or 1: one
}

// runOnce measures srv once. A run whose bench exits 1 (a failed verdict)
// is a run made; anything else that goes wrong is an error.
func (e runEnv) runOnce(ctx context.Context, srv serverSpec, tag string) (*result, error) {
	redisAddr := srv.redisAddr
	if redisAddr == "" {
		redisAddr = freeAddr()
	}
	rs, err := startRedis(ctx, redisAddr, e.redisArgs)
	if err != nil {
		return nil, err
	}
	defer rs.stop()
	addr := srv.addr
	if addr == "" {
		addr = freeAddr()
	} else if err := portFree(addr); err != nil {
		return nil, err
	}
	redisURL := "redis://" + redisAddr
	cmdline := strings.NewReplacer("{addr}", addr, "{redis}", redisURL).Replace(srv.cmd)
	logPath := filepath.Join(e.dir, tag+".log")
	sp, err := startServer(ctx, cmdline, logPath)
	if err != nil {
		return nil, err
	}
	defer sp.stop()
	if err := waitGreeting(ctx, connectAddr(addr), sp); err != nil {
		return nil, fmt.Errorf("%s (%s) did not come up: %v; its log: %s", srv.name, cmdline, err, tail(logPath))
	}
	if e.procs > 1 {
		// One greeting proves one process; the RSS baseline and the
		// kernel's spreading of connections need all of them.
		if err := waitInstances(ctx, redisAddr, e.procs, sp); err != nil {
			return nil, fmt.Errorf("%s (%s): %v; its log: %s", srv.name, cmdline, err, tail(logPath))
		}
	}
	out := filepath.Join(e.dir, tag+".json")
	args := append([]string{"-url", "ws://" + connectAddr(addr) + "/", "-redis", redisURL,
		"-server-pid", strconv.Itoa(sp.cmd.Process.Pid), "-redis-pid", strconv.Itoa(rs.cmd.Process.Pid),
		"-json", out}, e.benchArgs...)
	b := exec.CommandContext(ctx, e.self, args...)
	b.Stdout, b.Stderr = os.Stderr, os.Stderr
	err = b.Run()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		return nil, fmt.Errorf("bench against %s: %v", srv.name, err)
	}
	return readResult(out)
}

// waitInstances waits until n redpush instances have a heartbeat in the
// Redis at addr (redisq's redpush:instances; a process beats once its
// listener is open), for at most 30 s.
func waitInstances(ctx context.Context, addr string, n int, sp *proc) error {
	rc := redis.NewClient(&redis.Options{Addr: addr})
	defer rc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		have, _ := rc.SCard(ctx, "redpush:instances").Result()
		if have >= int64(n) {
			return nil
		}
		select {
		case <-t.C:
		case <-sp.done:
			return fmt.Errorf("exited with %d of %d instances up", have, n)
		case <-ctx.Done():
			return fmt.Errorf("%d of %d instances up after 30 s", have, n)
		}
	}
}

// proc is a process started in its own process group, so that stopping it
// stops what it forked (a Swoole master forks a manager and workers).
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(ctx context.Context, cmd *exec.Cmd) (*proc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// stop sends SIGTERM to the group, and SIGKILL after 10 s.
func (p *proc) stop() {
	pg := -p.cmd.Process.Pid
	_ = syscall.Kill(pg, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
	_ = syscall.Kill(pg, syscall.SIGKILL) // whatever the group left behind
	<-p.done
}

// startServer runs cmdline with sh -c, its output appended to logPath.
func startServer(ctx context.Context, cmdline, logPath string) (*proc, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close() // the child holds its own copy
	cmd := exec.Command("sh", "-c", cmdline)
	cmd.Stdout, cmd.Stderr = log, log
	return startProc(ctx, cmd)
}

func startRedis(ctx context.Context, addr string, extra []string) (*proc, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("redis address %q: %v", addr, err)
	}
	if err := portFree(addr); err != nil {
		return nil, err
	}
	args := append([]string{"--port", port, "--bind", host, "--save", "", "--appendonly", "no", "--loglevel", "warning"}, extra...)
	cmd := exec.Command("redis-server", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	p, err := startProc(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("redis-server: %v (install it: apt-get install redis-server)", err)
	}
	if err := waitFor(func() error {
		select {
		case <-p.done:
			return nil
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		p.stop()
		return nil, fmt.Errorf("redis-server on %s: %v", addr, err)
	}
	select {
	case <-p.done:
		return nil, fmt.Errorf("redis-server on %s exited: %s", addr, strings.TrimSpace(stderr.String()))
	default:
	}
	return p, nil
}

// waitGreeting waits up to 20 s until the server upgrades a WebSocket and
// sends its greeting: listening alone does not mean it serves.
func waitGreeting(ctx context.Context, addr string, sp *proc) error {
	return waitForUntil(20*time.Second, func() error {
		select {
		case <-sp.done:
			return errors.New("it exited")
		default:
		}
		c, br, _, err := ws.Dialer{Timeout: time.Second}.Dial(ctx, "ws://"+addr+"/?user_id=bench-probe")
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		var r io.Reader = c
		if br != nil { // the greeting may have come with the handshake's answer
			r = br
		}
		_, err = ws.ReadHeader(r)
		return err
	}, sp.done)
}

// connectAddr turns a listen address into one to dial: 0.0.0.0:9502 and
// :9502 listen on every address, loopback included.
func connectAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || host == "0.0.0.0" || host == "::" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

// portFree refuses an address someone already listens on.
func portFree(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s is taken: %v", addr, err)
	}
	return ln.Close()
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitFor polls a readiness check for up to 10 s.
func waitFor(check func() error) error { return waitForUntil(10*time.Second, check, nil) }

func waitForUntil(d time.Duration, check func() error, abort <-chan struct{}) error {
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-abort:
			return check()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tail returns the last lines of a log file, for an error message.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], " | ")
}
