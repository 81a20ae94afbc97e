package redisq

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Clients are the two go-redis clients of one gateway. Blocking consumers each
// hold a connection of Blocking for the length of a BLMOVE round, so it is
// sized to the number of consumers; if acks shared that pool they would wait
// behind blocked reads, hence the separate Command client.
type Clients struct {
	Blocking redis.UniversalClient
	Command  redis.UniversalClient
	// Topology is what the URL named: "server", "sentinel" or "cluster".
	Topology string
}

// Dial parses url (see [ParseEndpoint]), creates the clients for consumers
// consumers, and checks that Redis answers. A plain redis:// URL that turns
// out to point at a Redis Cluster node is served as the cluster, with that
// node as the seed.
func Dial(ctx context.Context, url string, consumers int) (*Clients, error) {
	ep, err := ParseEndpoint(url)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := ep.dial(pctx, consumers)
	if err != nil || ep.single == nil {
		return c, err
	}
	info, err := c.Command.Info(pctx, "cluster").Result()
	if err != nil || !strings.Contains(info, "cluster_enabled:1") {
		return c, nil // not a cluster node (or a server without INFO cluster)
	}
	c.Close()
	o, err := redis.ParseClusterURL(url)
	if err != nil {
		return nil, fmt.Errorf("%w %q: a Redis Cluster node, but not a cluster URL: %v", ErrBadURL, url, err)
	}
	return Endpoint{cluster: o}.dial(pctx, consumers)
}

// dial creates the two clients of the endpoint and PINGs Redis.
func (e Endpoint) dial(ctx context.Context, consumers int) (*Clients, error) {
	c := &Clients{
		Topology: e.Topology(),
		// Deadlines hold on the command client: the push API answers
		// within a second when Redis hangs. BLMOVE's client must not:
		// its reads are meant to block.
		Command: e.client(tuning{ctxTimeout: true, capped: true}),
		// One idle consumer holds one connection for its whole life: 32
		// KiB read and write buffers (the go-redis default) would cost 64
		// KiB per online user. This client only sends BLMOVE and reads one
		// message per reply; larger replies are still read in full, past
		// the buffer. Consumers retry with their own capped backoff;
		// go-redis retries would only hide an outage from them for longer.
		Blocking: e.client(tuning{poolSize: consumers, readBuf: 1024, writeBuf: 512,
			pipelinePool: -1, poolTimeout: 2 * time.Second, maxRetries: -1}),
	}
	if err := c.Command.Ping(ctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w at %s: %v", ErrUnreachable, e.addrs(), err)
	}
	return c, nil
}

// Close closes both clients.
func (c *Clients) Close() error {
	err := c.Blocking.Close()
	if err2 := c.Command.Close(); err == nil {
		err = err2
	}
	return err
}

// SetLogger sends go-redis's own log lines (pool dial failures and the like)
// to log at debug level: during an outage every consumer's dial would print
// one, and the gateway already logs the outage once.
func SetLogger(log *slog.Logger) { redis.SetLogger(slogLogger{log}) }

type slogLogger struct{ log *slog.Logger }

func (l slogLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "go-redis: "+fmt.Sprintf(format, v...))
}
