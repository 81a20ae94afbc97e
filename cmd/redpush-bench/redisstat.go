package main

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Redis's share of the cost: the ack script and the relay publication run
// inside Redis, so a server that moves work there would look cheap if only
// its own process were sampled.

// forEachNode runs fn on every node that serves the bench's keys: the one
// server, or each master of a Cluster.
func forEachNode(ctx context.Context, rc redis.UniversalClient, fn func(ctx context.Context, c *redis.Client) error) error {
	switch c := rc.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	}
	return nil
}

// infoField returns one "name:value" line's value from an INFO reply.
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// findRedisPIDs asks every node for its process_id, and keeps the answer
// only when the node listens on a loopback address and that pid is a
// redis-server process here: a Redis in a container or on another host
// reports a pid of another namespace. ok is false when any node's pid is
// unknown (the Redis figures are then reported as unknown).
func findRedisPIDs(ctx context.Context, rc redis.UniversalClient) (pids []int, ok bool) {
	var mu sync.Mutex
	ok = true
	err := forEachNode(ctx, rc, func(ctx context.Context, c *redis.Client) error {
		pid := 0
		if o := c.Options(); o.Network == "unix" || isLoopback(o.Addr) {
			info, err := c.Info(ctx, "server").Result()
			if err != nil {
				return err
			}
			pid, _ = strconv.Atoi(infoField(info, "process_id"))
		}
		mu.Lock()
		defer mu.Unlock()
		if pid > 0 && isRedisServer(pid) {
			pids = append(pids, pid)
		} else {
			ok = false
		}
		return nil
	})
	return pids, ok && err == nil && len(pids) > 0
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func isRedisServer(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), "redis-server")
}

// clientCounts is Redis's INFO clients, summed over the nodes.
type clientCounts struct {
	connected, blocked int64
}

func sampleClients(ctx context.Context, rc redis.UniversalClient) (clientCounts, bool) {
	var mu sync.Mutex
	var cc clientCounts
	err := forEachNode(ctx, rc, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "clients").Result()
		if err != nil {
			return err
		}
		conn, _ := strconv.ParseInt(infoField(info, "connected_clients"), 10, 64)
		blocked, _ := strconv.ParseInt(infoField(info, "blocked_clients"), 10, 64)
		mu.Lock()
		cc.connected += conn
		cc.blocked += blocked
		mu.Unlock()
		return nil
	})
	return cc, err == nil
}
