package redisq

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Clients are the two go-redis clients of one gateway. Blocking consumers each
// hold a connection of Blocking for the length of a BLMOVE round, so it is
// sized to the number of consumers; if acks shared that pool they would wait
// behind blocked reads, hence the separate Command client.
type Clients struct {
	Blocking redis.UniversalClient
	Command  redis.UniversalClient
}

// Dial parses url (any go-redis URL: redis://, rediss://, unix://), creates
// the clients for consumers consumers, and checks that Redis answers.
func Dial(ctx context.Context, url string, consumers int) (*Clients, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrBadURL, url, err)
	}
	// RESP2: redpush needs no push notifications, and with RESP3 go-redis
	// checks the socket for them around every command (measured: 16% of
	// the CPU at 2,000 msg/s).
	opt.Protocol = 2
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	cmdOpt := *opt
	blockOpt := *opt
	// One idle consumer holds one connection for its whole life: 32 KiB read
	// and write buffers (the go-redis default) would cost 64 KiB per online
	// user. This client only sends BLMOVE and reads one message per reply;
	// larger replies are still read in full, past the buffer.
	blockOpt.PoolSize = consumers
	blockOpt.ReadBufferSize = 1024
	blockOpt.WriteBufferSize = 512
	blockOpt.PipelinePoolSize = -1
	blockOpt.PoolTimeout = 2 * time.Second
	// Consumers retry with their own capped backoff; go-redis retries would
	// only hide an outage from them for longer.
	blockOpt.MaxRetries = -1

	c := &Clients{Blocking: redis.NewClient(&blockOpt), Command: redis.NewClient(&cmdOpt)}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := c.Command.Ping(pctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w at %s: %v", ErrUnreachable, opt.Addr, err)
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
