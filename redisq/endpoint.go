package redisq

import (
	"fmt"
	"net/url"
	"runtime"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Endpoint is a parsed -redis URL: the options of one of go-redis's three
// clients, chosen the way go-redis's UniversalClient chooses (a master name
// means Sentinel, several addresses mean Cluster), with go-redis's own URL
// parsers for each:
//
//	redis://host:6379/0                                   one server (redis.ParseURL; also rediss://, unix://)
//	redis://s1:26379?master_name=mymaster&addr=s2:26379   Sentinel (redis.ParseFailoverURL): the host and each addr are sentinels
//	redis://n1:7000?addr=n2:7000&addr=n3:7000             Cluster (redis.ParseClusterURL): seed nodes
type Endpoint struct {
	single   *redis.Options
	failover *redis.FailoverOptions
	cluster  *redis.ClusterOptions
}

// ParseEndpoint parses a -redis URL; errors wrap ErrBadURL.
func ParseEndpoint(raw string) (Endpoint, error) {
	var e Endpoint
	u, err := url.Parse(raw)
	if err == nil {
		q := u.Query()
		switch {
		case q.Has("master_name"):
			e.failover, err = redis.ParseFailoverURL(raw)
		case q.Has("addr"):
			e.cluster, err = redis.ParseClusterURL(raw)
		default:
			e.single, err = redis.ParseURL(raw)
		}
	}
	if err != nil {
		return Endpoint{}, fmt.Errorf("%w %q: %v", ErrBadURL, raw, err)
	}
	return e, nil
}

// Topology names what the endpoint points at: server, sentinel or cluster.
func (e Endpoint) Topology() string {
	switch {
	case e.failover != nil:
		return "sentinel"
	case e.cluster != nil:
		return "cluster"
	}
	return "server"
}

func (e Endpoint) addrs() string {
	switch {
	case e.failover != nil:
		return "sentinels " + strings.Join(e.failover.SentinelAddrs, ",") + " (master " + e.failover.MasterName + ")"
	case e.cluster != nil:
		return "cluster " + strings.Join(e.cluster.Addrs, ",")
	}
	return e.single.Addr
}

// NewClient returns a go-redis client for the endpoint with poolSize
// connections (per node, on a cluster), for tools such as redpush-bench. It
// never re-sends a command after a network error (MaxRetries -1, and on a
// cluster MaxRedirects -1: go-redis re-sends a cluster pipeline on a
// redirect or a broken connection up to MaxRedirects times): a caller that
// must know how often an LPUSH ran cannot have go-redis repeat it.
func (e Endpoint) NewClient(poolSize int) redis.UniversalClient {
	return e.client(tuning{poolSize: poolSize, maxRetries: -1, noRedirects: true})
}

// tuning overrides pool options; zero fields keep the URL's (or go-redis's)
// value.
type tuning struct {
	poolSize, readBuf, writeBuf, pipelinePool, maxRetries int
	poolTimeout                                           time.Duration
	// ctxTimeout makes go-redis honour a context's deadline on the socket
	// (ContextTimeoutEnabled): without it a hung Redis holds a command for
	// the read timeout whatever the caller's deadline.
	ctxTimeout bool
	// noRedirects sets a cluster client's MaxRedirects to -1.
	noRedirects bool
	// capped makes the pool size a hard bound (MaxActiveConns; per node
	// on a cluster), pipelines included: go-redis gives pipelines a pool
	// of their own (10 connections with 128 KiB buffers) and spills them
	// to the main pool when it is busy, and at 100,000 users six processes
	// held up to 85 connections each where 37 were expected. (A PubSub,
	// the relay's, has a connection of its own outside the pool.)
	capped bool
}

// apply sets the fields; defaultPool is go-redis's pool size for this kind
// of client (10 per CPU, 5 per CPU and node on a cluster), which capped
// makes explicit.
func (t tuning) apply(defaultPool int, poolSize, readBuf, writeBuf, pipelinePool, maxRetries, maxActive *int, poolTimeout *time.Duration) {
	for _, f := range []struct {
		dst *int
		v   int
	}{
		{poolSize, t.poolSize}, {readBuf, t.readBuf}, {writeBuf, t.writeBuf},
		{pipelinePool, t.pipelinePool}, {maxRetries, t.maxRetries},
	} {
		if f.v != 0 {
			*f.dst = f.v
		}
	}
	if t.poolTimeout != 0 {
		*poolTimeout = t.poolTimeout
	}
	if t.capped {
		if *poolSize <= 0 {
			*poolSize = defaultPool
		}
		if *maxActive == 0 { // max_active_conns= in the URL wins
			*maxActive = *poolSize
		}
		if *pipelinePool == 0 { // so does pipeline_pool_size=
			*pipelinePool = -1
		}
	}
}

// client builds a new client for the endpoint. Every client speaks RESP2:
// redpush needs no push notifications, and with RESP3 go-redis checks the
// socket for them around every command (measured: 16% of the CPU at 2,000
// msg/s).
func (e Endpoint) client(t tuning) redis.UniversalClient {
	off := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	switch {
	case e.failover != nil:
		o := *e.failover
		o.Protocol, o.ContextTimeoutEnabled = 2, t.ctxTimeout
		t.apply(10*runtime.GOMAXPROCS(0), &o.PoolSize, &o.ReadBufferSize, &o.WriteBufferSize, &o.PipelinePoolSize, &o.MaxRetries, &o.MaxActiveConns, &o.PoolTimeout)
		return redis.NewFailoverClient(&o)
	case e.cluster != nil:
		o := *e.cluster
		o.Protocol, o.MaintNotificationsConfig, o.ContextTimeoutEnabled = 2, off, t.ctxTimeout
		t.apply(5*runtime.GOMAXPROCS(0), &o.PoolSize, &o.ReadBufferSize, &o.WriteBufferSize, &o.PipelinePoolSize, &o.MaxRetries, &o.MaxActiveConns, &o.PoolTimeout)
		if t.noRedirects {
			o.MaxRedirects = -1
		}
		return redis.NewClusterClient(&o)
	}
	o := *e.single
	o.Protocol, o.MaintNotificationsConfig, o.ContextTimeoutEnabled = 2, off, t.ctxTimeout
	t.apply(10*runtime.GOMAXPROCS(0), &o.PoolSize, &o.ReadBufferSize, &o.WriteBufferSize, &o.PipelinePoolSize, &o.MaxRetries, &o.MaxActiveConns, &o.PoolTimeout)
	return redis.NewClient(&o)
}
