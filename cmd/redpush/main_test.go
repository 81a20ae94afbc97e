package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/testutil"
)

// These tests run the real binary, as an operator would.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "redpush-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "redpush")
	if out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building redpush: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running redpush.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string
	stderr *testutil.SyncBuffer
	exited chan struct{}
}

func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startProcAt(t, fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)), env, args...)
}

// startProcAt is startProc on addr.
func startProcAt(t *testing.T, addr string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, addr: addr, stderr: &testutil.SyncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binary, append([]string{"-addr", addr}, args...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("redpush stderr:\n%s", p.stderr.String())
		}
	})
	testutil.Eventually(t, 20*time.Second, func() error {
		select {
		case <-p.exited:
			t.Fatalf("redpush exited at start:\n%s", p.stderr.String())
		default:
		}
		resp, err := probeClient.Get(p.url("/healthz"))
		if err == nil {
			resp.Body.Close()
		}
		return err
	})
	return p
}

// probeClient asks the test's own servers, TLS ones with a self-signed
// certificate too.
var probeClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

// url is path on the process's address, https:// when it serves TLS.
func (p *proc) url(path string) string {
	if slices.Contains(p.cmd.Args, "-tls-cert") {
		return "https://" + p.addr + path
	}
	return "http://" + p.addr + path
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(within time.Duration) int {
	p.t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		p.t.Fatalf("redpush still running after %v", within)
		return -1
	}
}

func runBinary(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runBinaryEnv(t, nil, args...)
}

// runBinaryEnv runs redpush to its end with env added to the environment.
func runBinaryEnv(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	// Every use expects an exit; a server that starts instead must not
	// hang the test.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("redpush %q did not exit within 30s:\n%s", args, errb.String())
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errb.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errb.String()
}

func TestHelpListsEveryFlagWithItsDefault(t *testing.T) {
	code, out, _ := runBinary(t, "-h")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{
		"-addr", "0.0.0.0:9502", "-redis", "redis://127.0.0.1:6379", "embedded", "-workers",
		"-key-pattern", "user_%s_messages", "-format", "swoole", "-instance", "-max-message", "65536",
		"-handshake-timeout", "-idle-timeout", "-write-timeout", "-shutdown-timeout", "10s", "-log-level",
		"-ack-timeout", "30s", "-ack-window", "256",
		"REDPUSH_",
		// The subcommands, and what 0 means where it means the default.
		"redpush token", "redpush healthcheck", "0 means the default",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("-h output lacks %q", want)
		}
	}
	for _, sub := range []string{"token", "healthcheck"} {
		code, out, errOut := runBinary(t, sub, "-h")
		if code != 0 || !strings.Contains(out+errOut, "Usage: redpush "+sub) {
			t.Errorf("redpush %s -h: exit %d, output %q; want 0 and its usage", sub, code, out+errOut)
		}
	}
}

// A subcommand's mistake is one line naming it. The healthcheck fails with
// 1 whatever the cause, as Docker reserves 2, and reads no key file: it
// needs only the address and the scheme.
func TestSubcommandErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"token", "-bogus"}, 2, "redpush token: flag provided but not defined: -bogus (see redpush token -h)"},
		{[]string{"token", "extra"}, 2, `redpush token: unexpected argument "extra"`},
		{[]string{"healthcheck", "-bogus"}, 1, "redpush healthcheck: flag provided but not defined: -bogus"},
		{[]string{"healthcheck", "-addr", "127.0.0.1:1", "-jwt-public-key", "/nonexistent", "-tls-cert", "/nonexistent", "-tls-key", "/nonexistent"},
			1, `redpush healthcheck: Get "https://127.0.0.1:1/readyz"`},
	} {
		code, _, stderr := runBinary(t, tc.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != tc.code || len(lines) != 1 || !strings.HasPrefix(lines[0], tc.want) {
			t.Errorf("redpush %v: exit %d, stderr %q; want %d and one line starting with %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

func TestStartErrorsAreOneLineAndExit2(t *testing.T) {
	port := testutil.FreePort(t)
	down := fmt.Sprintf("redis://127.0.0.1:%d", port) // nothing listens there
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"unknown flag", nil, []string{"-bogus"}, []string{"flag provided but not defined: -bogus"}},
		{"double dash works too", nil, []string{"--bogus"}, []string{"flag provided but not defined"}},
		{"bad duration", nil, []string{"-idle-timeout", "soon"}, []string{"invalid value"}},
		{"malformed url", nil, []string{"-redis", "http://x"}, []string{"bad redis URL"}},
		{"unreachable redis", nil, []string{"-redis", down}, []string{"redis unreachable"}},
		// Every other setting is checked before Redis is dialled: these
		// name the bad flag although Redis is down too.
		{"bad format", nil, []string{"-redis", down, "-format", "xml"}, []string{"-format", `"xml"`, "swoole, raw or json"}},
		{"bad pattern", nil, []string{"-redis", down, "-key-pattern", "bad"}, []string{"-key-pattern", "%s"}},
		{"negative workers", nil, []string{"-redis", down, "-workers", "-5"}, []string{"-workers", "-5", "0 for the default", "1 to"}},
		{"negative max users", nil, []string{"-redis", down, "-max-users", "-1"}, []string{"-max-users", "-1", "0 for the default", "1 to 1000000"}},
		{"absurd instance ttl", nil, []string{"-redis", down, "-instance-ttl", "1ms"}, []string{"-instance-ttl", "1ms", "1s to"}},
		{"absurd ack timeout", nil, []string{"-redis", down, "-ack-timeout", "10ms"}, []string{"-ack-timeout", "10ms", "100ms to 24h"}},
		{"ack window too big", nil, []string{"-redis", down, "-ack-window", "100001"}, []string{"-ack-window", "100001", "1 to 100000"}},
		{"origin without scheme", nil, []string{"-redis", down, "-allowed-origins", "foo"}, []string{"-allowed-origins", `"foo"`, "scheme://host[:port]"}},
		{"origin with a path", nil, []string{"-redis", down, "-allowed-origins", "https://a.example/app"}, []string{"-allowed-origins", "scheme://host[:port]"}},
		{"negative max message", nil, []string{"-redis", down, "-max-message", "-1"}, []string{"-max-message", "0 for the default"}},
		{"negative idle timeout", nil, []string{"-redis", down, "-idle-timeout", "-1s"}, []string{"-idle-timeout", "0 for the default"}},
		{"bad listen address", nil, []string{"-redis", down, "-addr", "9502"}, []string{"-addr", `"9502"`, "host:port"}},
		{"listen port out of range", nil, []string{"-redis", down, "-addr", ":99999"}, []string{"-addr", `":99999"`, "0 to 65535"}},
		{"misspelt variable", []string{"REDPUSH_ALLOWED_ORIGIN=https://a.example"}, []string{"-redis", down}, []string{"REDPUSH_ALLOWED_ORIGIN", "not a setting"}},
		{"bad instance", nil, []string{"-redis", down, "-instance", "a b"}, []string{"-instance", "[A-Za-z0-9_.:-]"}},
		{"duration without unit", nil, []string{"-redis", down, "-idle-timeout", "30"}, []string{"-idle-timeout", "unit", "30s"}},
		{"duration without unit from env", []string{"REDPUSH_IDLE_TIMEOUT=30"}, []string{"-redis", down}, []string{"REDPUSH_IDLE_TIMEOUT", "unit", "30s"}},
		{"port in use", nil, []string{"-redis", "embedded", "-addr", busy.Addr().String()}, []string{busy.Addr().String(), "address already in use"}},
		{"pprof port in use", nil, []string{"-redis", "embedded", "-pprof-addr", busy.Addr().String()}, []string{"-pprof-addr", "address already in use"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if !slices.Contains(args, "-addr") {
				args = append(args, "-addr", "127.0.0.1:0")
			}
			code, _, stderr := runBinaryEnv(t, tc.env, args...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			if code != 2 || len(lines) != 1 || !strings.HasPrefix(last, "redpush: ") {
				t.Fatalf("exit %d, stderr %q; want 2 and one line starting with \"redpush: \"", code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(last, w) {
					t.Errorf("last line %q lacks %q", last, w)
				}
			}
			if strings.Contains(last, "unreachable") && tc.name != "unreachable redis" {
				t.Errorf("Redis was dialled before the settings were checked: %q", last)
			}
			for _, l := range lines {
				if strings.Contains(l, "goroutine ") || strings.Contains(l, "panic") {
					t.Fatalf("stack trace in %q", stderr)
				}
			}
		})
	}
}

func TestEnvironmentSetsFlagsAndFlagsWin(t *testing.T) {
	rds := testutil.StartRedis(t)
	p := startProc(t, []string{"REDPUSH_REDIS=" + rds.URL(), "REDPUSH_FORMAT=raw", "REDPUSH_KEY_PATTERN=env_%s"},
		"-key-pattern", "flag_%s")
	c := testutil.Dial(t, p.addr, "e")
	c.MustRead()
	rc := rds.Client()
	rc.LPush(t.Context(), "flag_e", "flag pattern, raw format")
	if got := c.MustRead(); got != "flag pattern, raw format" {
		t.Fatalf("got %q", got)
	}
}

func TestSIGTERMClosesClientsAndReturnsInFlightMessages(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	p := startProc(t, nil, "-redis", rds.URL(), "-instance", "term", "-shutdown-timeout", "5s")
	idle := testutil.Dial(t, p.addr, "idle")
	idle.MustRead()
	msgs := testutil.BigMessages(100)
	rc.LPush(t.Context(), "user_stalled_messages", testutil.Any(msgs)...)
	testutil.DialBuffer(t, p.addr, "stalled", 4096) // never reads: the batch stays in flight
	awaitLen(t, rc, "user_stalled_messages", 0)
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if got := idle.ReadClose(5 * time.Second); got != ws.StatusGoingAway {
		t.Fatalf("close code %d, want 1001", got)
	}
	if code := p.wait(6 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("exit took %v, want within -shutdown-timeout 5s", took)
	}
	if n := rc.LLen(t.Context(), "user_stalled_messages").Val(); n != 100 {
		t.Fatalf("%d messages back in the queue, want 100", n)
	}
}

// kill -9 gives no chance to requeue: the processing list keeps the batch,
// and the restarted instance returns it before anything else.
func TestKill9ThenRestartLosesNothing(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	args := []string{"-redis", rds.URL(), "-instance", "crashy", "-format", "raw"}
	msgs := testutil.BigMessages(100)
	rc.LPush(t.Context(), "user_k_messages", testutil.Any(msgs)...)
	p := startProc(t, nil, args...)
	testutil.DialBuffer(t, p.addr, "k", 4096).MustRead()
	awaitLen(t, rc, "user_k_messages", 0)
	_ = p.cmd.Process.Kill()
	p.wait(5 * time.Second)
	if n := rc.LLen(t.Context(), "{user_k_messages}:processing:crashy").Val(); n != 100 {
		t.Fatalf("processing list holds %d after kill -9, want 100", n)
	}
	p2 := startProc(t, nil, args...)
	c := testutil.Dial(t, p2.addr, "k")
	c.MustRead()
	for _, want := range msgs {
		if got := c.MustRead(); got != want {
			t.Fatalf("after restart got %.10q…, want %.10q…", got, want)
		}
	}
}

// The same with the crash in the middle of a stream the client reads: the
// crash must find a batch in flight and messages still queued (else the
// test would prove nothing), and then every message arrives, in order, the
// only duplicates being those of the batch in flight at the crash.
func TestKill9MidStreamEveryMessageArrives(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	args := []string{"-redis", rds.URL(), "-instance", "stream", "-format", "raw"}
	p := startProc(t, nil, args...)
	c := testutil.Dial(t, p.addr, "s")
	c.MustRead()
	// 20,000 messages of 1 KB (20 MB, more than the socket buffers hold)
	// read at about 5,000 a second: the stream lasts seconds, and the
	// server is writing it, with more queued, when it is killed.
	const n = 20000
	pad := strings.Repeat(".", 1000)
	sent := make([]string, n)
	index := map[string]int{}
	for i := range sent {
		sent[i] = fmt.Sprintf("s-%05d%s", i, pad)
		index[sent[i]] = i
	}
	var mu sync.Mutex
	var first []int // indexes read by the first connection, in order
	readDone := make(chan struct{})
	go func() { // read until the crash closes the socket
		defer close(readDone)
		for k := 0; ; k++ {
			m, _, err := c.Read(20 * time.Second)
			if err != nil {
				return
			}
			i, ok := index[m]
			if !ok {
				i = -1
			}
			mu.Lock()
			first = append(first, i)
			mu.Unlock()
			if k%5 == 4 {
				time.Sleep(time.Millisecond) // pacing, not synchronisation
			}
		}
	}()
	for i := 0; i < n; i += 500 {
		rc.LPush(t.Context(), "user_s_messages", testutil.Any(sent[i:i+500])...)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(first) < n/4 {
			return fmt.Errorf("only %d delivered", len(first))
		}
		return nil
	})
	_ = p.cmd.Process.Kill()
	p.wait(5 * time.Second)
	<-readDone
	// Nothing touches Redis between the kill and the restart.
	inFlight := rc.LRange(t.Context(), "{user_s_messages}:processing:stream", 0, -1).Val()
	queued := rc.LLen(t.Context(), "user_s_messages").Val()
	if len(inFlight) == 0 || queued == 0 {
		t.Fatalf("at the kill %d messages were in flight and %d queued; the crash must come mid-stream", len(inFlight), queued)
	}
	// The processing list holds its oldest message at the right end.
	oldest, ok := index[inFlight[len(inFlight)-1]]
	if !ok {
		t.Fatalf("unexpected message in the processing list: %.12q", inFlight[len(inFlight)-1])
	}
	// Before the crash: 0, 1, 2, … without a gap, a repeat or a stranger.
	for k, i := range first {
		if i != k {
			t.Fatalf("before the crash, message %d read was %d, want %d (in order, once)", k, i, k)
		}
	}
	k := len(first)
	if oldest > k || k-oldest > len(inFlight) {
		t.Fatalf("the client read 0..%d; the batch in flight starts at %d and holds %d: not the batch being written", k-1, oldest, len(inFlight))
	}
	p2 := startProc(t, nil, args...)
	c2 := testutil.Dial(t, p2.addr, "s")
	c2.MustRead()
	// After the restart: the batch in flight first, then the rest, in
	// order; what repeats is only what the client had of that batch.
	for want := oldest; want < n; want++ {
		m := c2.MustRead()
		if i, ok := index[m]; !ok || i != want {
			t.Fatalf("after the restart got message %d (%.12q), want %d", i, m, want)
		}
	}
	t.Logf("the client read %d before the kill; %d in flight, %d queued; %d duplicates", k, len(inFlight), queued, k-oldest)
}

// The quick start: nothing installed but Go.
func TestEmbeddedQuickStart(t *testing.T) {
	p := startProc(t, nil, "-redis", "embedded")
	m := regexp.MustCompile(`redis-cli -p (\d+) LPUSH`).FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("the embedded Redis address is not logged:\n%s", p.stderr.String())
	}
	resp, err := http.Get("http://" + p.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	page := new(bytes.Buffer)
	page.ReadFrom(resp.Body)
	resp.Body.Close()
	if !strings.Contains(page.String(), `id="demo-push"`) {
		t.Fatal("demo push box missing with -redis embedded")
	}
	c := testutil.Dial(t, p.addr, "42")
	c.MustRead()
	resp, err = http.PostForm("http://"+p.addr+"/demo/push", url.Values{"user": {"42"}, "data": {"from the page"}})
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("demo push: %v %v", resp, err)
	}
	if got := c.MustRead(); !strings.HasSuffix(got, ":from the page") {
		t.Fatalf("got %q", got)
	}
	// What `redis-cli -p PORT LPUSH user_42_messages hi` does.
	rc := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + m[1]})
	defer rc.Close()
	rc.LPush(context.Background(), "user_42_messages", "hi")
	if got := c.MustRead(); got != "redis 的 user_42_messages 队列发送消息:hi" {
		t.Fatalf("got %q", got)
	}
	// Acknowledged delivery works on it too (its ids come from a script):
	// the demo page's switch.
	ac := testutil.DialPath(t, p.addr, "/?user_id=43&ack=1")
	ac.MustRead()
	rc.LPush(context.Background(), "user_43_messages", "acked")
	if got := ac.MustRead(); !strings.HasPrefix(got, `{"id":"`) || !strings.HasSuffix(got, `","data":"acked"}`) {
		t.Fatalf("ack connection got %q", got)
	}
	// The embedded Redis lacks CLIENT ID: consumers fall back to short
	// rounds without reporting an outage.
	if strings.Contains(p.stderr.String(), "unreachable") {
		t.Fatalf("spurious outage in the log:\n%s", p.stderr.String())
	}
}

func awaitLen(t *testing.T, rc *redis.Client, key string, want int64) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := rc.LLen(context.Background(), key).Val(); n != want {
			return fmt.Errorf("%s holds %d, want %d", key, n, want)
		}
		return nil
	})
}

func TestTokenCommandAndJWTSecret(t *testing.T) {
	const secret = "a-secret-of-at-least-16-bytes"
	code, tok, stderr := runBinary(t, "token", "-secret", secret, "-user", "42", "-ttl", "1h")
	if code != 0 || strings.Count(tok, ".") != 2 {
		t.Fatalf("token: exit %d, %q %q", code, tok, stderr)
	}
	if code, _, stderr := runBinary(t, "token", "-secret", "short", "-user", "42"); code != 2 || !strings.Contains(stderr, "16 bytes") {
		t.Fatalf("short secret: exit %d %q", code, stderr)
	}
	rds := testutil.StartRedis(t)
	p := startProc(t, nil, "-redis", rds.URL(), "-jwt-secret", secret, "-format", "raw")
	if strings.Contains(p.stderr.String(), "NO AUTHENTICATION") {
		t.Fatal("warned about missing authentication while -jwt-secret is set")
	}
	if _, err := testutil.TryDial(p.addr, "/?user_id=42"); err == nil {
		t.Fatal("bare user_id accepted while -jwt-secret is set")
	}
	c, err := testutil.TryDial(p.addr, "/?token="+strings.TrimSpace(tok))
	if err != nil {
		t.Fatal(err)
	}
	cl := testutil.NewClient(t, c)
	cl.MustRead()
	rds.Client().LPush(t.Context(), "user_42_messages", "signed")
	if got := cl.MustRead(); got != "signed" {
		t.Fatalf("got %q", got)
	}
}

func TestNoAuthIsLoggedLoudlyOnce(t *testing.T) {
	rds := testutil.StartRedis(t)
	p := startProc(t, nil, "-redis", rds.URL(), "-log-format", "json")
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := strings.Count(p.stderr.String(), "NO AUTHENTICATION"); n != 1 {
			return fmt.Errorf("warning logged %d times", n)
		}
		return nil
	})
	if !strings.Contains(p.stderr.String(), `"level":"WARN"`) {
		t.Fatalf("-log-format json did not log JSON:\n%s", p.stderr.String())
	}
}

func TestHealthcheckCommand(t *testing.T) {
	rds := testutil.StartRedis(t)
	p := startProc(t, nil, "-redis", rds.URL())
	if code, _, stderr := runBinary(t, "healthcheck", "-url", "http://"+p.addr+"/readyz"); code != 0 {
		t.Fatalf("healthy server: exit %d %q", code, stderr)
	}
	rds.Stop()
	if code, _, _ := runBinary(t, "healthcheck", "-url", "http://"+p.addr+"/readyz"); code != 1 {
		t.Fatalf("server without Redis: exit %d, want 1", code)
	}
}

// Two instances on one Redis; one is killed with a batch in flight and never
// comes back. The survivor returns that batch to its queue once the dead
// instance's heartbeat expired, and the user, reconnecting to the survivor,
// gets every message in order.
func TestSurvivorReclaimsAKilledInstancesMessages(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	common := []string{"-redis", rds.URL(), "-format", "raw", "-instance-ttl", "1500ms"}
	a := startProc(t, nil, append(common, "-instance", "a")...)
	b := startProc(t, nil, append(common, "-instance", "b")...)
	msgs := testutil.BigMessages(100)
	rc.LPush(t.Context(), "user_k_messages", testutil.Any(msgs)...)
	testutil.DialBuffer(t, a.addr, "k", 4096).MustRead() // never reads: the batch stays in flight on a
	awaitLen(t, rc, "user_k_messages", 0)
	_ = a.cmd.Process.Kill()
	a.wait(5 * time.Second)
	awaitLen(t, rc, "{user_k_messages}:processing:a", 0) // b found a dead and took its list back
	testutil.Eventually(t, 5*time.Second, func() error { // logged after the Redis call returned
		if !strings.Contains(b.stderr.String(), "dead instance") {
			return fmt.Errorf("the reclaim is not logged:\n%s", b.stderr.String())
		}
		return nil
	})
	c := testutil.Dial(t, b.addr, "k")
	c.MustRead()
	for _, want := range msgs {
		if got := c.MustRead(); got != want {
			t.Fatalf("got %.10q…, want %.10q…", got, want)
		}
	}
}

// One user on two instances (two devices); the instance holding a batch in
// flight is killed. The other connection still gets every message: what a
// delivered, through the relay, what was in flight on a, once b reclaimed it.
func TestUserOnTwoInstancesLosesNothingWhenOneIsKilled(t *testing.T) {
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	common := []string{"-redis", rds.URL(), "-format", "raw", "-instance-ttl", "1500ms"}
	a := startProc(t, nil, append(common, "-instance", "a")...)
	b := startProc(t, nil, append(common, "-instance", "b")...)
	onB := testutil.Dial(t, b.addr, "k")
	onB.MustRead()
	testutil.DialBuffer(t, a.addr, "k", 4096).MustRead() // never reads again: a's batches stall
	testutil.Eventually(t, 5*time.Second, func() error { // both instances serve the user and listen for relays
		if n, err := rc.SCard(t.Context(), "{user_k_messages}:instances").Result(); err != nil || n != 2 {
			return fmt.Errorf("%d instances serve the user (%v)", n, err)
		}
		n, err := rc.PubSubNumSub(t.Context(), "{user_k_messages}:relay").Result()
		if err != nil || n["{user_k_messages}:relay"] != 2 {
			return fmt.Errorf("subscribers %v (%v)", n, err)
		}
		return nil
	})
	got := make(chan string, 1000)
	go func() { // b's client reads all along, as a browser does
		for {
			m, _, err := onB.Read(30 * time.Second)
			if err != nil {
				close(got)
				return
			}
			got <- m
		}
	}()
	msgs := testutil.BigMessages(100)
	for _, m := range msgs {
		rc.LPush(t.Context(), "user_k_messages", m)
	}
	awaitLen(t, rc, "user_k_messages", 0)
	if n := rc.LLen(t.Context(), "{user_k_messages}:processing:a").Val(); n == 0 {
		t.Fatal("a has no batch in flight; the test would prove nothing")
	}
	_ = a.cmd.Process.Kill()
	a.wait(5 * time.Second)
	seen := map[string]bool{}
	for len(seen) < len(msgs) {
		m, ok := <-got
		if !ok {
			t.Fatalf("b's connection ended after %d of %d messages", len(seen), len(msgs))
		}
		seen[m] = true
	}
	for _, m := range msgs {
		if !seen[m] {
			t.Fatalf("message %.10q… never reached the connection on b", m)
		}
	}
}

// A second process with the instance id of a live one exits 2 with one
// line naming the id; the first one serves on.
func TestSecondProcessWithTheSameInstanceIDExits2(t *testing.T) {
	rds := testutil.StartRedis(t)
	first := startProc(t, nil, "-redis", rds.URL(), "-instance", "twin")
	code, _, stderr := runBinary(t, "-redis", rds.URL(), "-instance", "twin", "-addr", "127.0.0.1:0")
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := lines[len(lines)-1]
	if code != 2 || !strings.HasPrefix(last, "redpush: ") || !strings.Contains(last, `"twin"`) {
		t.Fatalf("exit %d, last line %q; want 2 and one line naming the id", code, last)
	}
	select {
	case <-first.exited:
		t.Fatal("the first process stopped")
	default:
	}
}
