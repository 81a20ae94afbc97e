package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/redis/go-redis/v9"
)

// faultyServer is a small Swoole-compatible push server for the bench's
// own tests: it greets each connection, moves each message of the user's
// queue into a processing list (BLMOVE), writes it, and removes it from
// the processing list — except where its plan injects a fault. The bench
// is then run against it and must report exactly the faults injected.
//
// It runs in the test process, or as a child process of its own (see
// TestMain) where a test needs the server's CPU apart from the bench's.
type faultyServer struct {
	plan  plan
	held  sync.Map // user → frame held back by Reorder
	rc    *redis.Client
	ln    net.Listener
	wrote atomic.Int64 // bench frames written

	mu     sync.Mutex
	conns  map[string]net.Conn // the latest connection of each user
	wmu    sync.Mutex          // one writer at a time, whatever the socket
	burnMu sync.Mutex
}

// plan is what to do to which message; a message is "user/seq".
type plan struct {
	Drop       []string      `json:"drop"`       // popped, never written, removed from Redis: lost
	Dup        []string      `json:"dup"`        // written twice
	Misdeliver []string      `json:"misdeliver"` // written to another user's connection instead
	Garbage    []string      `json:"garbage"`    // written, then a frame that is no bench payload
	Leftover   []string      `json:"leftover"`   // written, and a copy left in the processing list
	Stall      []string      `json:"stall"`      // written after StallFor
	Reorder    []string      `json:"reorder"`    // held back and written after the user's next message
	StallFor   time.Duration `json:"stall_for"`
	AckDelay   time.Duration `json:"ack_delay"`    // leave each message in the processing list this long after writing it
	BurnOnOpen time.Duration `json:"burn_on_open"` // CPU to spend on each new connection
}

func (p plan) has(list []string, user string, seq int64) bool {
	id := fmt.Sprintf("%s/%d", user, seq)
	for _, m := range list {
		if m == id {
			return true
		}
	}
	return false
}

// startFaulty runs a faulty server in the test process.
func startFaulty(t *testing.T, redisAddr string, p plan) (*faultyServer, string) {
	t.Helper()
	s, err := newFaulty(redisAddr, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s, "ws://" + s.ln.Addr().String() + "/"
}

func newFaulty(redisAddr string, p plan) (*faultyServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &faultyServer{plan: p, ln: ln, conns: map[string]net.Conn{},
		rc: redis.NewClient(&redis.Options{Addr: redisAddr, PoolSize: 256, ReadTimeout: 5 * time.Second})}
	go s.serve()
	return s, nil
}

func (s *faultyServer) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	_ = s.rc.Close()
}

func (s *faultyServer) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

func (s *faultyServer) handle(c net.Conn) {
	var user string
	u := ws.Upgrader{OnRequest: func(uri []byte) error {
		q, err := url.ParseRequestURI(string(uri))
		if err == nil {
			user = q.Query().Get("user_id")
		}
		return err
	}}
	if _, err := u.Upgrade(c); err != nil {
		_ = c.Close()
		return
	}
	s.burnMu.Lock() // one at a time: burn counts the whole process's CPU
	burn(s.plan.BurnOnOpen)
	s.burnMu.Unlock()
	s.mu.Lock()
	s.conns[user] = c
	s.mu.Unlock()
	s.write(c, "hello;\n")
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // read until the client goes: pings are answered by no one, fine here
		defer cancel()
		for {
			if _, _, err := wsutil.ReadClientData(c); err != nil {
				return
			}
		}
	}()
	s.consume(ctx, c, user)
}

// consume is one user's loop, as the original's task: pop, push, forever
// (until the connection goes).
func (s *faultyServer) consume(ctx context.Context, c net.Conn, user string) {
	key := "user_" + user + "_messages"
	proc := "{" + key + "}:processing:fake"
	for ctx.Err() == nil {
		msg, err := s.rc.BLMove(ctx, key, proc, "RIGHT", "LEFT", time.Second).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			time.Sleep(20 * time.Millisecond) // Redis down: retry
			continue
		}
		st, err := parsePayload([]byte(msg))
		if err != nil {
			continue
		}
		s.apply(c, user, st.seq, key, proc, msg)
	}
}

func (s *faultyServer) apply(c net.Conn, user string, seq int64, key, proc, msg string) {
	p := s.plan
	frame := "redis 的 " + key + " 队列发送消息:" + msg
	ack := func() {
		if p.AckDelay > 0 {
			time.AfterFunc(p.AckDelay, func() { s.rc.LRem(context.Background(), proc, 1, msg) })
			return
		}
		s.rc.LRem(context.Background(), proc, 1, msg)
	}
	switch {
	case p.has(p.Drop, user, seq):
		ack()
		return
	case p.has(p.Misdeliver, user, seq):
		s.write(s.otherThan(user), frame)
		ack()
		return
	case p.has(p.Stall, user, seq):
		time.Sleep(p.StallFor)
	case p.has(p.Reorder, user, seq):
		s.held.Store(user, frame)
		ack()
		return
	}
	s.write(c, frame)
	if h, ok := s.held.LoadAndDelete(user); ok {
		s.write(c, h.(string))
	}
	switch {
	case p.has(p.Dup, user, seq):
		s.write(c, frame)
	case p.has(p.Garbage, user, seq):
		s.write(c, "not a bench payload")
	case p.has(p.Leftover, user, seq):
		return // not acknowledged: it stays in the processing list
	}
	ack()
}

func (s *faultyServer) otherThan(user string) net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	for u, c := range s.conns {
		if u != user {
			return c
		}
	}
	return nil
}

func (s *faultyServer) write(c net.Conn, text string) {
	if c == nil {
		return
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if wsutil.WriteServerText(c, []byte(text)) == nil && strings.Contains(text, "队列") {
		s.wrote.Add(1)
	}
}

// burn spends d of the process's CPU time (not wall time).
func burn(d time.Duration) {
	if d <= 0 {
		return
	}
	start := cpuNow()
	for x := 0; cpuNow()-start < d.Seconds(); x++ {
		for i := 0; i < 100000; i++ {
			x ^= i
		}
	}
}

// cpuNow is this process's CPU seconds.
func cpuNow() float64 {
	st, _ := readStat(os.Getpid())
	return st.cpu
}

// The faulty server as a process of its own: the test binary re-executes
// itself with BENCH_FAULTY_SERVER set to "redisAddr plan-JSON"; the child
// prints its address and serves until its stdin closes.
func TestMain(m *testing.M) {
	if v := os.Getenv("BENCH_FAULTY_SERVER"); v != "" {
		addr, js, _ := strings.Cut(v, " ")
		var p plan
		if err := json.Unmarshal([]byte(js), &p); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		s, err := newFaulty(addr, p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println(s.ln.Addr().String())
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // until the test closes stdin
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startFaultyProcess runs a faulty server as a child process and returns
// its pid and URL.
func startFaultyProcess(t *testing.T, redisAddr string, p plan) (int, string) {
	t.Helper()
	js, _ := json.Marshal(p)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BENCH_FAULTY_SERVER="+redisAddr+" "+string(js))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("faulty server: %v", err)
	}
	return cmd.Process.Pid, "ws://" + strings.TrimSpace(line) + "/"
}

func errorf(f string, a ...any) error { return fmt.Errorf(f, a...) }
func atoi64(s string) int64           { n, _ := strconv.ParseInt(s, 10, 64); return n }
func itoa(n int) string               { return strconv.Itoa(n) }
