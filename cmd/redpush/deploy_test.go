package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
)

// The files of the container setup, tested without a Docker engine (`make
// test` also validates docker-compose.yml with docker-compose config).

const root = "../.."

// The compose stack's producer pushes only to the page's user and caps the
// queue, so a stack left running for days holds a bounded backlog.
func TestDemoProducerPushesToThePagesUserAndCapsTheQueue(t *testing.T) {
	compose, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(compose), "./deploy/producer.sh:/producer.sh") {
		t.Fatal("docker-compose.yml does not run deploy/producer.sh")
	}
	rds := testutil.StartRedis(t)
	rc := rds.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", filepath.Join(root, "deploy", "producer.sh"))
	cmd.Env = append(os.Environ(), "REDIS_HOST=127.0.0.1", fmt.Sprintf("REDIS_PORT=%d", rds.Port), "KEEP=5", "EVERY=0.01")
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	// Twenty ticks: four times the cap.
	testutil.Eventually(t, 30*time.Second, func() error {
		newest, err := rc.LIndex(ctx, "user_42_messages", 0).Result()
		var tick int
		if err == nil {
			_, err = fmt.Sscanf(newest, "tick %d", &tick)
		}
		if err != nil || tick < 20 {
			return fmt.Errorf("newest %q (%v); producer output %q", newest, err, out.String())
		}
		return nil
	})
	if n := rc.LLen(ctx, "user_42_messages").Val(); n > 5 {
		t.Fatalf("queue holds %d ticks, want at most KEEP=5", n)
	}
	if keys := rc.Keys(ctx, "*").Val(); !slices.Equal(keys, []string{"user_42_messages"}) {
		t.Fatalf("producer wrote %v, want only the page's user_42_messages", keys)
	}
}

// The build context leaves out the repository's history and what a build
// or a test left here, and keeps what the Dockerfile builds from.
func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	ignored := func(p string) bool {
		for _, pat := range patterns {
			if ok, _ := path.Match(pat, p); ok {
				return true
			}
			if rest, ok := strings.CutPrefix(pat, "**/"); ok { // any depth
				for d := p; d != "."; d = path.Dir(d) {
					if ok, _ := path.Match(rest, strings.TrimPrefix(p, path.Dir(d)+"/")); ok {
						return true
					}
				}
			}
		}
		return false
	}
	for _, p := range []string{".git", "redpush", "redpush-bench", "x.test", "server/testdata/artifacts"} {
		if !ignored(p) {
			t.Errorf("%s goes into the build context", p)
		}
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/redpush/main.go", "html/index.html", "server/server.go"} {
		if ignored(p) {
			t.Errorf("%s is left out of the build context, but the build needs it", p)
		}
	}
}

// The image's HEALTHCHECK lets redpush healthcheck find the server (see
// TestHealthcheckFollowsTheServersAddressAndTLS) rather than naming a fixed
// address that -addr or TLS would make wrong.
func TestDockerfileHealthcheckFollowsTheServer(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `CMD ["/redpush", "healthcheck"]`) || strings.Contains(string(b), "-url") {
		t.Fatalf("the HEALTHCHECK does not leave the address to redpush healthcheck:\n%s", b)
	}
}

// go.mod asks for no newer Go than the code and its dependencies need: a
// toolchain of that minor version must not have to download another.
func TestGoModRequiresOnlyWhatTheDependenciesNeed(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{if .Main}}main {{end}}{{.GoVersion}}", "all").Output()
	if err != nil {
		t.Fatal(err)
	}
	var own, need [3]int
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		v, main := strings.CutPrefix(l, "main ")
		var n [3]int
		fmt.Sscanf(v, "%d.%d.%d", &n[0], &n[1], &n[2])
		switch {
		case main:
			own = n
		case slices.Compare(n[:], need[:]) > 0:
			need = n
		}
	}
	if own != need {
		t.Fatalf("go.mod says go %v; the dependencies need %v", own, need)
	}
}
