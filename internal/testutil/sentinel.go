package testutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// MasterName is the name under which a test's Sentinel monitors its master.
const MasterName = "mymaster"

// Sentinel is a master, one replica and one Sentinel monitoring them
// (quorum 1), owned by one test.
type Sentinel struct {
	t       testing.TB
	Master  *Redis // the master at start; after Failover, the replica
	Replica *Redis
	Port    int // the Sentinel's
	cmd     *exec.Cmd
	exit    chan struct{}
}

// StartSentinel starts the master, its replica and a Sentinel, and waits
// until the Sentinel knows the replica (a failover needs one).
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	s := &Sentinel{t: t, Master: StartRedis(t, "--dir", t.TempDir())}
	// The replica stores the master's snapshot in --dir during a sync.
	s.Replica = StartRedis(t, "--dir", t.TempDir(), "--replicaof", "127.0.0.1", strconv.Itoa(s.Master.Port))
	Eventually(t, 10*time.Second, func() error {
		info, err := s.Master.Client().Info(context.Background(), "replication").Result()
		if err == nil && !strings.Contains(info, "connected_slaves:1") {
			err = fmt.Errorf("replica not connected yet")
		}
		return err
	})
	s.Port = FreePort(t)
	conf := filepath.Join(t.TempDir(), "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\nprotected-mode no\n"+
		"sentinel monitor %s 127.0.0.1 %d 1\n"+
		"sentinel down-after-milliseconds %[2]s 2000\n"+
		"sentinel failover-timeout %[2]s 10000\n", s.Port, MasterName, s.Master.Port)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command("redis-server", conf, "--sentinel")
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting redis-sentinel: %v", err)
	}
	s.exit = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.exit) }()
	t.Cleanup(func() { _ = s.cmd.Process.Kill(); <-s.exit })
	sc := s.client()
	Eventually(t, 20*time.Second, func() error {
		replicas, err := sc.Replicas(context.Background(), MasterName).Result()
		if err == nil && (len(replicas) != 1 || strings.Contains(replicas[0]["flags"], "down")) {
			err = fmt.Errorf("sentinel sees replicas %v", replicas)
		}
		return err
	})
	return s
}

func (s *Sentinel) client() *redis.SentinelClient {
	sc := redis.NewSentinelClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(s.Port)})
	s.t.Cleanup(func() { _ = sc.Close() })
	return sc
}

// URL is the -redis URL in go-redis's failover form.
func (s *Sentinel) URL() string {
	return "redis://127.0.0.1:" + strconv.Itoa(s.Port) + "?master_name=" + MasterName
}

// Client returns a failover client for the test's own commands: it follows
// the master through a failover.
func (s *Sentinel) Client() *redis.Client {
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    MasterName,
		SentinelAddrs: []string{"127.0.0.1:" + strconv.Itoa(s.Port)},
	})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// Failover makes the Sentinel promote the replica (SENTINEL FAILOVER) and
// waits until the replica is master and the Sentinel says so.
func (s *Sentinel) Failover() {
	s.t.Helper()
	sc := s.client()
	if err := sc.Failover(context.Background(), MasterName).Err(); err != nil {
		s.t.Fatalf("SENTINEL FAILOVER: %v", err)
	}
	want := strconv.Itoa(s.Replica.Port)
	rc := s.Replica.Client()
	Eventually(s.t, 30*time.Second, func() error {
		addr, err := sc.GetMasterAddrByName(context.Background(), MasterName).Result()
		if err != nil {
			return err
		}
		if len(addr) != 2 || addr[1] != want {
			return fmt.Errorf("sentinel's master is %v, want port %s", addr, want)
		}
		info, err := rc.Info(context.Background(), "replication").Result()
		if err == nil && !strings.Contains(info, "role:master") {
			err = fmt.Errorf("the replica is not master yet")
		}
		return err
	})
	s.Master, s.Replica = s.Replica, s.Master
}
