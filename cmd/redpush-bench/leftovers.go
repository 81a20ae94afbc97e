package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// What is left in Redis of the bench's users: their queues and the
// server's processing lists ({<queue>}:processing:<instance>, redpush's
// layout), read on every master of a Cluster.

// redisKeys lists the keys that hold the bench's users' messages.
type redisKeys struct {
	queues     []string
	processing []string
}

// findKeys returns the users' queue keys and every processing list of
// theirs that exists now.
func findKeys(ctx context.Context, cfg *config, rc redis.UniversalClient) (redisKeys, error) {
	var k redisKeys
	want := map[string]bool{}
	for u := range cfg.users {
		q := keyOf(cfg, cfg.firstUser+u)
		k.queues = append(k.queues, q)
		want[q] = true
	}
	pattern := "{" + cfg.keyPrefix + "*" + cfg.keySuffix + "}:processing:*"
	found, err := scanAll(ctx, rc, pattern)
	for _, key := range found {
		if q, _, ok := strings.Cut(strings.TrimPrefix(key, "{"), "}"); ok && want[q] {
			k.processing = append(k.processing, key)
		}
	}
	slices.Sort(k.processing)
	return k, err
}

// scanAll SCANs every master (one node, or each master of a Cluster).
func scanAll(ctx context.Context, rc redis.UniversalClient, pattern string) ([]string, error) {
	var mu sync.Mutex
	var keys []string
	scan := func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for it.Next(ctx) {
			mu.Lock()
			keys = append(keys, it.Val())
			mu.Unlock()
		}
		return it.Err()
	}
	switch c := rc.(type) {
	case *redis.ClusterClient:
		err := c.ForEachMaster(ctx, scan)
		return keys, err
	case *redis.Client:
		return keys, scan(ctx, c)
	}
	return nil, fmt.Errorf("unsupported Redis client %T", rc)
}

// lengths returns LLEN of each key, in order.
func lengths(ctx context.Context, rc redis.UniversalClient, keys []string) ([]int64, error) {
	pl := rc.Pipeline()
	cmds := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pl.LLen(ctx, k)
	}
	if len(keys) > 0 {
		if _, err := pl.Exec(ctx); err != nil {
			return nil, err
		}
	}
	out := make([]int64, len(keys))
	for i, c := range cmds {
		out[i] = c.Val()
	}
	return out, nil
}

// occupancy is how many messages the users' queues and processing lists
// hold, and the first non-empty queue (for the refusal to start).
type occupancy struct {
	queued, processing int64
	firstKey           string
	firstLen           int64
	sig                string // the lengths of every key, to tell when they stop changing
}

func occupancyOf(ctx context.Context, cfg *config, rc redis.UniversalClient) (occupancy, error) {
	var o occupancy
	k, err := findKeys(ctx, cfg, rc)
	if err != nil {
		return o, err
	}
	keys := append(slices.Clone(k.queues), k.processing...)
	ns, err := lengths(ctx, rc, keys)
	if err != nil {
		return o, err
	}
	var sig strings.Builder
	for i, n := range ns {
		if n == 0 {
			continue
		}
		if o.firstKey == "" {
			o.firstKey, o.firstLen = keys[i], n
		}
		if i < len(k.queues) {
			o.queued += n
		} else {
			o.processing += n
		}
		fmt.Fprintf(&sig, "%s=%d;", keys[i], n)
	}
	o.sig = sig.String()
	return o, nil
}

// settle waits until the users' lists are empty or stop changing (a batch
// whose acknowledgement is still on its way is not a leftover), polling
// every 100 ms until deadline. Lists count as settled when they held the
// same lengths for quiet. While Redis cannot be read (a chaos run's last
// restart: refused, or loading its AOF) nothing is settled: the servers
// have yet to get back to what it holds.
func settle(ctx context.Context, cfg *config, rc redis.UniversalClient, deadline time.Time, quiet time.Duration) {
	const poll = 100 * time.Millisecond
	var last string
	var since time.Time
	for ctx.Err() == nil {
		o, err := occupancyOf(ctx, cfg, rc)
		if err == nil && o.queued+o.processing == 0 {
			return
		}
		now := time.Now()
		switch {
		case err != nil:
			last = "" // the stillness counts from the first reading after it
		case o.sig != last:
			last, since = o.sig, now
		case now.Sub(since) >= quiet:
			return
		}
		if !now.Before(deadline) {
			return
		}
		sleepCtx(ctx, poll)
	}
}

// leftovers is what the users' lists still hold at the end.
type leftovers struct {
	queued, processing int64
	seqs               map[string]*bitset // user → seqs of bench payloads still in Redis
	unparsed           int64              // entries that are not bench payloads
}

// readLeftovers reads every message left in the users' lists.
func readLeftovers(ctx context.Context, cfg *config, rc redis.UniversalClient) (leftovers, error) {
	l := leftovers{seqs: map[string]*bitset{}}
	k, err := findKeys(ctx, cfg, rc)
	if err != nil {
		return l, err
	}
	keys := append(slices.Clone(k.queues), k.processing...)
	pl := rc.Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(keys))
	for i, key := range keys {
		cmds[i] = pl.LRange(ctx, key, 0, -1)
	}
	if len(keys) > 0 {
		if _, err := pl.Exec(ctx); err != nil {
			return l, err
		}
	}
	for i, c := range cmds {
		for _, v := range c.Val() {
			if i < len(k.queues) {
				l.queued++
			} else {
				l.processing++
			}
			s, err := parsePayload([]byte(v))
			if err != nil {
				l.unparsed++
				continue
			}
			b := l.seqs[string(s.user)]
			if b == nil {
				b = &bitset{}
				l.seqs[string(s.user)] = b
			}
			b.testAndSet(s.seq)
		}
	}
	return l, nil
}

// checkUnused refuses to run on queues that already hold messages: the
// bench would consume them, and they may be someone's real messages.
// With wipe it deletes them instead.
func checkUnused(ctx context.Context, cfg *config, rc redis.UniversalClient, wipe bool) error {
	if wipe {
		k, err := findKeys(ctx, cfg, rc)
		if err != nil {
			return err
		}
		pl := rc.Pipeline()
		for _, key := range append(k.queues, k.processing...) {
			pl.Del(ctx, key)
		}
		_, err = pl.Exec(ctx)
		return err
	}
	o, err := occupancyOf(ctx, cfg, rc)
	if err != nil {
		return err
	}
	if o.firstKey != "" {
		return fmt.Errorf("%s already holds %d message(s) (users %d…%d hold %s in all): the bench would consume them; "+
			"pick unused ids with -first-user, or pass -wipe to delete them", o.firstKey, o.firstLen,
			cfg.firstUser, cfg.firstUser+cfg.users-1, strconv.FormatInt(o.queued+o.processing, 10))
	}
	return nil
}
