package testutil

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of three masters, no replicas, owned by one
// test.
type Cluster struct {
	t     testing.TB
	Nodes []*Redis
}

// StartCluster starts three cluster-enabled redis-servers on free loopback
// ports, joins them with `redis-cli --cluster create`, and waits until every
// node reports cluster_state:ok. Each node also gets the redis-server
// arguments extra.
func StartCluster(t testing.TB, extra ...string) *Cluster {
	t.Helper()
	dir := t.TempDir()
	c := &Cluster{t: t}
	addrs := make([]string, 3)
	for i := range addrs {
		n := startRedisWith(t, func() []string {
			bus := strconv.Itoa(FreePort(t))
			return append([]string{"--cluster-enabled", "yes", "--cluster-port", bus,
				"--cluster-config-file", filepath.Join(dir, "nodes-"+bus+".conf"),
				"--dir", dir, "--cluster-node-timeout", "5000"}, extra...)
		})
		c.Nodes = append(c.Nodes, n)
		addrs[i] = n.Addr()
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	out, err := exec.Command("redis-cli", append(args, "--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, n := range c.Nodes {
		rc := n.Client()
		Eventually(t, 20*time.Second, func() error {
			info, err := rc.ClusterInfo(context.Background()).Result()
			if err == nil && !strings.Contains(info, "cluster_state:ok") {
				err = fmt.Errorf("node %s: cluster not ok yet", n.Addr())
			}
			if err != nil {
				return err
			}
			nodes, err := rc.ClusterNodes(context.Background()).Result()
			if err == nil && strings.Count(nodes, " connected") != 3 {
				err = fmt.Errorf("node %s: links not all up:\n%s", n.Addr(), nodes)
			}
			return err
		})
	}
	return c
}

// URL is the -redis URL of the cluster in go-redis's cluster form: the
// first node, the others as addr parameters.
func (c *Cluster) URL() string {
	return "redis://" + c.Nodes[0].Addr() + "?addr=" + c.Nodes[1].Addr() + "&addr=" + c.Nodes[2].Addr()
}

// Client returns a cluster client for the test's own commands.
func (c *Cluster) Client() *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: []string{c.Nodes[0].Addr(), c.Nodes[1].Addr(), c.Nodes[2].Addr()},
	})
	c.t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// MasterOf returns the address of the node that serves key.
func (c *Cluster) MasterOf(key string) string {
	c.t.Helper()
	rc := c.Nodes[0].Client()
	slot, err := rc.ClusterKeySlot(context.Background(), key).Result()
	if err != nil {
		c.t.Fatal(err)
	}
	slots, err := rc.ClusterSlots(context.Background()).Result()
	if err != nil {
		c.t.Fatal(err)
	}
	for _, s := range slots {
		if int64(s.Start) <= slot && slot <= int64(s.End) {
			return s.Nodes[0].Addr
		}
	}
	c.t.Fatalf("no node serves slot %d", slot)
	return ""
}

// UsersOnEachMaster returns three user ids whose queues, named by key, live
// on the three different masters.
func (c *Cluster) UsersOnEachMaster(prefix string, key func(user string) string) []string {
	c.t.Helper()
	var users []string
	masters := map[string]bool{}
	for i := 0; len(users) < len(c.Nodes) && i < 1000; i++ {
		u := prefix + strconv.Itoa(i)
		if m := c.MasterOf(key(u)); !masters[m] {
			masters[m] = true
			users = append(users, u)
		}
	}
	if len(users) != len(c.Nodes) {
		c.t.Fatalf("found users on %d masters, want %d", len(users), len(c.Nodes))
	}
	return users
}

// MoveSlotOf migrates the slot of key to another master, keys and all, the
// way redis-cli --cluster reshard does: IMPORTING on the target, MIGRATING
// on the source, MIGRATE of every key in the slot, then SETSLOT NODE on
// every node. It returns the new master's address; failures fail t.
func (c *Cluster) MoveSlotOf(t testing.TB, key string) string {
	t.Helper()
	ctx := context.Background()
	from := c.MasterOf(key)
	var src, dst *Redis
	for _, n := range c.Nodes {
		if n.Addr() == from {
			src = n
		} else if dst == nil {
			dst = n
		}
	}
	sc, dc := src.Client(), dst.Client()
	slot := sc.ClusterKeySlot(ctx, key).Val()
	srcID, dstID := sc.Do(ctx, "CLUSTER", "MYID").Val(), dc.Do(ctx, "CLUSTER", "MYID").Val()
	must := func(err error) {
		if err != nil {
			t.Fatalf("moving slot %d: %v", slot, err)
		}
	}
	must(dc.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err())
	must(sc.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err())
	for {
		keys, err := sc.ClusterGetKeysInSlot(ctx, int(slot), 100).Result()
		must(err)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", dst.Port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		must(sc.Do(ctx, args...).Err())
	}
	for _, n := range c.Nodes {
		must(n.Client().Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
	}
	return dst.Addr()
}
