package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/taskpool"
)

// Server is a redpush gateway.
type Server struct {
	cfg     Config
	log     *slog.Logger
	clients *redisq.Clients
	q       *redisq.Queue
	pool    *taskpool.Pool
	hub     *hub
	httpLn  *connListener
	nextFD  atomic.Uint64
	conns   sync.WaitGroup // connection goroutines, and connections the reactor reads
	stats   counters
	served  atomic.Bool
	// stopping is set when a shutdown begins: /readyz answers 503 from
	// then on, so a load balancer sends no new clients while the
	// connections drain.
	stopping atomic.Bool
	refusals refusalLog
	greet    greetings
	partial  partialBudget // the bytes of all partial messages
	// rx reads plain TCP connections without a goroutine each (Linux;
	// nil elsewhere, and with -tags redpush_goroutines).
	rx *reactor
}

// DemoUser is the user of the README's examples and of the quick start's
// hint (LPUSH user_42_messages): the demo page connects as this user when
// its URL names none, so the hint's message shows on the page.
const DemoUser = "42"

// counters count refused handshakes by HTTP status.
type counters struct {
	refused400, refused401, refused403, refused429, refused503 atomic.Int64
}

func (c *counters) refused(status int) {
	switch status {
	case 400:
		c.refused400.Add(1)
	case 401:
		c.refused401.Add(1)
	case 403:
		c.refused403.Add(1)
	case 429:
		c.refused429.Add(1)
	case 503:
		c.refused503.Add(1)
	}
}

// New builds a Server over clients, which it does not close.
func New(cfg Config, clients *redisq.Clients) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	events := cfg.PresenceChannel
	if events == PresenceOff {
		events = ""
	}
	q, err := redisq.New(clients.Blocking, clients.Command, redisq.Config{
		KeyPattern: cfg.KeyPattern, Instance: cfg.Instance, Batch: cfg.Batch, Logger: cfg.Logger,
		PresenceChannel: events, PresenceTTL: cfg.InstanceTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, clients: clients, q: q, greet: greetingsFor(cfg.Format)}
	s.partial.max = cfg.MaxPendingBytes
	s.pool, err = taskpool.New(taskpool.Config{
		Size: poolSize(cfg),
		PanicHandler: func(v any) {
			s.log.Error("consumer panicked", "panic", v)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	s.hub = newHub(s.pool, q, encoder{format: cfg.Format}, s.log)
	s.hub.maxPerUser = cfg.MaxConnsPerUser
	s.hub.maxUsers = cfg.usersBound()
	s.hub.workers = cfg.Workers
	s.hub.writeTimeout = cfg.WriteTimeout
	s.hub.ackTimeout = cfg.AckTimeout
	return s, nil
}

// readerMode says, for the start line, what reads the connections.
func (s *Server) readerMode() string {
	if s.rx != nil {
		return "epoll reactor (TLS connections: a goroutine each)"
	}
	return "a goroutine per connection"
}

// poolSize is how many goroutines the task pool may run. Blocking, a
// consumer holds one for its session: Workers bounds them. Hinted, Workers
// bounds the consumers that work at once (sched), but a consumer waiting
// for a slow client keeps its goroutine, so the pool holds one per online
// user.
func poolSize(cfg Config) int {
	if cfg.Consumer == ConsumerBlocking {
		return cfg.Workers
	}
	return max(cfg.usersBound(), cfg.Workers)
}

// usersBoundFrom says, for the start line, what bounds the users online
// at once (hub.maxUsers).
func (s *Server) usersBoundFrom() string {
	switch {
	case s.cfg.Consumer == ConsumerBlocking && s.cfg.Workers < s.cfg.MaxUsers:
		return "-workers: blocking, each online user holds a task"
	case s.cfg.maxUsersSet:
		return "-max-users"
	case s.cfg.Consumer == ConsumerBlocking:
		return "the open-file limit (ulimit -n): two files per user, its socket and its Redis connection, 200 kept for the rest"
	}
	return "the open-file limit (ulimit -n): a file per user, its socket, 200 kept for the rest"
}

// Run listens on Config.Addr and serves until ctx is cancelled.
func (s *Server) Run(ctx context.Context) error {
	ln, err := Listen(s.cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Listen opens the listener that Run would: Config.Addr, with Config.TLS.
// A command listens before it starts anything else, so that a port in use
// is its first and only complaint.
func Listen(cfg Config) (net.Listener, error) {
	var lc net.ListenConfig
	if cfg.ReusePort {
		lc.Control = reusePort
	}
	ln, err := lc.Listen(context.Background(), "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStart, err)
	}
	if cfg.TLS != nil {
		// The TLS handshake runs on the first read, inside the handshake
		// deadline like the HTTP one.
		// Counted below TLS: delivery is confirmed by the encrypted
		// bytes the client acknowledged (confirm.go).
		ln = tls.NewListener(countingListener{ln}, cfg.TLS)
	}
	return ln, nil
}

// Serve returns this instance's leftover messages to their queues, then
// accepts connections on ln until ctx is cancelled, then shuts down in order:
// stop accepting, close 1001 to every client, let consumers requeue what
// they hold, and return within Config.ShutdownTimeout. A Server serves once.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("server: Serve called twice")
	}
	defer ln.Close()
	// The id first: recovery returns this instance's in-flight messages,
	// which must not belong to another live process.
	claim, err := s.claim(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStart, err)
	}
	ctx, lose := context.WithCancelCause(ctx)
	defer lose(nil)
	// The claim is held until the shutdown is over, not only while serving:
	// a successor must not take the id while this process still returns
	// its in-flight messages.
	claimCtx, stopClaim := context.WithCancel(context.Background())
	claimDone := make(chan struct{})
	go func() {
		defer close(claimDone)
		s.holdClaim(claimCtx, claim, lose)
	}()
	// Every way out of Serve, a failed start included, gives the id up at
	// once (if this process still holds it): a successor need not wait for
	// the claim to expire.
	defer func() {
		stopClaim()
		<-claimDone
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = claim.Release(rctx)
	}()
	lists, msgs, err := s.q.Recover(ctx)
	if err != nil {
		return fmt.Errorf("%w: recovering in-flight messages: %w", ErrStart, err)
	}
	if lists > 0 {
		s.log.Info("returned in-flight messages of a previous run to their queues",
			"instance", s.cfg.Instance, "lists", lists, "messages", msgs)
	}
	if _, err := s.q.Heartbeat(ctx, s.cfg.InstanceTTL); err != nil {
		return fmt.Errorf("%w: heartbeat: %w", ErrStart, err)
	}
	s.hub.presence = newPresence(s.hub, s.q, s.cfg.InstanceTTL)
	pctx, stopPresence := context.WithCancel(context.Background())
	presenceDone := make(chan struct{})
	go func() {
		defer close(presenceDone)
		s.hub.presence.run(pctx)
	}()
	// After the shutdown (every connection closed) and the heartbeat's
	// end: the last presence writes go out before the claim is released.
	defer func() { stopPresence(); <-presenceDone }()
	keepAliveDone := make(chan struct{})
	kctx, stopKeepAlive := context.WithCancel(context.Background())
	defer func() { stopKeepAlive(); <-keepAliveDone }()
	go func() {
		defer close(keepAliveDone)
		s.keepAlive(kctx)
	}()
	s.hub.relay = newRelay(ctx, s.hub, s.cfg.Instance)
	defer s.hub.relay.close()
	if stop := s.startHints(ctx); stop != nil {
		defer stop()
	}
	s.httpLn = newConnListener(ln.Addr())
	hs := s.newHTTPServer()
	go func() { _ = hs.Serve(s.httpLn) }()

	if s.rx, err = newReactor(s); err != nil {
		s.log.Warn("no reactor: a goroutine reads each connection", "err", err)
	}
	if s.rx != nil {
		defer s.rx.close() // after the shutdown: every connection ended
	}
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		s.acceptLoop(ln)
	}()
	s.log.Info("redpush listening", "addr", ln.Addr().String(), "reader", s.readerMode(), "max_users", s.hub.maxUsers, "max_users_from", s.usersBoundFrom(), "workers", s.hub.workers, "consumer", s.consumerMode(),
		"instance", s.cfg.Instance, "redis", s.clients.Topology, "format", s.cfg.Format, "tls", s.cfg.TLS != nil, "auth", s.cfg.Auth != nil)
	if s.cfg.Auth == nil {
		s.log.Warn("NO AUTHENTICATION: clients name their user in ?user_id=, so any client can read any user's messages; set -jwt-secret or -jwt-public-key in production")
	}

	<-ctx.Done()
	err = s.shutdown(ln, hs, acceptDone)
	if cause := context.Cause(ctx); errors.Is(cause, redisq.ErrInstanceLost) {
		return cause
	}
	return err
}

// claim takes the instance id: Config.Instance, or, with ReusePort and no
// Instance given, the lowest free slot of DefaultInstance (host-port-0,
// host-port-1, …), so that several processes on one port get ids of their
// own that stay stable across restarts.
func (s *Server) claim(ctx context.Context) (*redisq.Claim, error) {
	if !s.cfg.slotted {
		return s.q.Claim(ctx)
	}
	c, err := s.q.ClaimSlot(ctx, maxSlots)
	if err != nil {
		return nil, err
	}
	s.cfg.Instance = s.q.Instance()
	return c, nil
}

// maxSlots bounds the processes that share one port with default ids.
const maxSlots = 256

// holdClaim renews the claim on the instance id until ctx ends (after the
// shutdown: the claim outlives serving). If another
// process took the id (this one could not renew it in time, during an
// outage or a pause), this one stops serving: lose ends Serve with
// redisq.ErrInstanceLost.
func (s *Server) holdClaim(ctx context.Context, c *redisq.Claim, lose context.CancelCauseFunc) {
	t := time.NewTicker(redisq.ClaimEvery)
	defer t.Stop()
	failing := false // this loop marked Redis down; it marks it up again
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, redisq.ClaimEvery)
		err := c.Renew(rctx)
		cancel()
		if errors.Is(err, redisq.ErrInstanceLost) {
			s.log.Error("another process took this instance id; stopping", "instance", s.cfg.Instance)
			lose(err)
			return
		}
		switch {
		case err == nil && failing:
			failing = false
			s.hub.health.ok()
		case err != nil && ctx.Err() == nil:
			// While the claim cannot be renewed, consumers soon stop
			// touching Redis (redisq.ErrClaimLapsed): the outage shows
			// here, whether or not anyone is online.
			failing = true
			s.hub.health.fail(err)
		}
	}
}

// shutdown drains in order. The listener stays open until the end, so that
// /readyz can answer 503 while clients are closed and in-flight messages
// requeued, and a client that reconnects meanwhile gets a 503 with a reason
// instead of a refused connection; with ReusePort it closes first, as
// other processes on the port serve the clients that come.
func (s *Server) shutdown(ln net.Listener, hs *http.Server, acceptDone <-chan struct{}) error {
	// New connections are refused before /readyz turns 503: a client whose
	// handshake falls between the two gets the 503 too, never a 101.
	s.hub.refuseNew()
	s.stopping.Store(true)
	if s.cfg.ReusePort {
		// Other processes share the port: closing the listener now sends
		// every new client to them instead of to this one's 503s.
		_ = ln.Close()
	}
	deadline := time.Now().Add(s.cfg.ShutdownTimeout)
	s.log.Info("shutting down", "timeout", s.cfg.ShutdownTimeout)
	// Close frames get at most a second, or half the timeout, so that
	// consumers have the rest to requeue what they hold.
	s.hub.closeAll(ws.StatusGoingAway, "server shutting down", time.Now().Add(min(time.Second, s.cfg.ShutdownTimeout/2)))
	// Consumers notice within one BLMOVE round and requeue what they hold.
	err := s.pool.Shutdown(time.Until(deadline))
	s.hub.awaitStrays(deadline)
	_ = ln.Close()
	<-acceptDone
	waitGroup(&s.conns, deadline)
	hctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	_ = hs.Shutdown(hctx)
	attrs := []any{"delivered", s.hub.stats.Delivered.Load(), "requeued", s.hub.stats.Requeued.Load()}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	s.log.Info("stopped", attrs...)
	return err
}

// scanEvery is how many heartbeats pass between two SCANs of the keyspace
// for dead instances' processing lists that the registry does not know
// (left by versions without it): 180 × 10 s, half an hour by default.
const scanEvery = 180

// registerEvery is how many heartbeats pass between two registrations of
// every online user's queue (redisq.Queue.RegisterAll): 6 × 10 s, a minute
// by default. An entry Redis lost without losing this instance's
// heartbeat (a restart from an older snapshot, a failover to a replica
// that lagged) comes back within that; the relay needs the user's
// {Q}:instances entry.
const registerEvery = 6

// registerOnline registers every online user's queue again
// (redisq.Queue.RegisterAll). A user who leaves while it is on its way
// would be registered again after its consumer unregistered it, and
// nothing would remove the entries while this instance lives (other
// instances would publish that user's batches for nobody): users whose
// session left meanwhile, with no new one, are unregistered after it. One
// who comes back just then may miss its entries until the next round.
func (s *Server) registerOnline(ctx context.Context) {
	sessions := s.hub.sessions()
	users := make([]string, len(sessions))
	for i, se := range sessions {
		users[i] = se.user
	}
	if err := s.q.RegisterAll(ctx, users); err != nil {
		s.log.Debug("registering the online users' queues failed", "err", err)
	}
	for _, u := range s.hub.goneSince(sessions) {
		if err := s.q.Unregister(ctx, u); err != nil {
			s.log.Debug("unregistering a queue failed; its entry stays", "user", u, "err", err)
		}
	}
}

// keepAlive renews this instance's heartbeat and returns the in-flight
// messages of instances whose heartbeat expired (they died and did not come
// back) to their queues.
func (s *Server) keepAlive(ctx context.Context) {
	t := time.NewTicker(s.cfg.InstanceTTL / 3)
	defer t.Stop()
	for tick := 1; ; tick++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		relisted, err := s.q.Heartbeat(ctx, s.cfg.InstanceTTL)
		if err != nil {
			s.log.Debug("heartbeat failed", "err", err)
			continue
		}
		if relisted {
			// Another instance took this one for dead (its heartbeat
			// lapsed during an outage), returned its in-flight messages
			// and dropped its registry: register what it serves again.
			s.log.Warn("this instance was taken for dead during an outage; its in-flight messages may come twice")
		}
		if relisted || tick%registerEvery == 0 {
			s.registerOnline(ctx)
		}
		s.hub.presence.refresh()
		reclaim := s.q.ReclaimDead // the registry: as cheap as the instances are few
		if tick%scanEvery == 0 {
			reclaim = s.q.ReclaimDeadScan // the safety net: every key, rarely
		}
		lists, msgs, err := reclaim(ctx)
		if err != nil {
			s.log.Debug("reclaiming dead instances' messages failed", "err", err)
		}
		if lists > 0 {
			s.log.Warn("returned in-flight messages of a dead instance to their queues", "lists", lists, "messages", msgs)
		}
	}
}

// acceptLoop accepts until ln is closed. Accept errors such as EMFILE back
// off as net/http does instead of spinning.
func (s *Server) acceptLoop(ln net.Listener) {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "err", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			s.handle(nc)
		}()
	}
}

// waitGroup waits for wg until deadline.
func waitGroup(wg *sync.WaitGroup, deadline time.Time) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// Snapshot is a point-in-time view of a Server, for tests and tools.
type Snapshot struct {
	Users, Conns, Consumers int
	ConsumerTasks           int // consumer tasks running now (a parked consumer holds none)
	Delivered, Requeued     int64
	Refused400, Refused401  int64
	Refused403, Refused429  int64
	Refused503              int64
	RedisDown               bool
}

// Snapshot reports the server's current counts.
func (s *Server) Snapshot() Snapshot {
	users, conns := s.hub.counts()
	return Snapshot{
		Users: users, Conns: conns, Consumers: int(s.hub.consumers.Load()), ConsumerTasks: int(s.hub.tasks.Load()),
		Delivered: s.hub.stats.Delivered.Load(), Requeued: s.hub.stats.Requeued.Load(),
		Refused400: s.stats.refused400.Load(), Refused401: s.stats.refused401.Load(),
		Refused403: s.stats.refused403.Load(), Refused429: s.stats.refused429.Load(),
		Refused503: s.stats.refused503.Load(),
		RedisDown:  s.hub.health.down.Load(),
	}
}
