package server

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/taskpool"
)

// hub is the connection registry (fd → conn, user → session → conns) and
// the home of the per-user consumers.
type hub struct {
	pool   *taskpool.Pool
	q      *redisq.Queue
	enc    encoder
	log    *slog.Logger
	health *health
	m      *metrics
	relay  *relay // nil in unit benchmarks
	// presence is nil in unit benchmarks.
	presence *presence
	// hints, when set, is hinted consumption (redisq.Hints): consumers
	// wait for a hint instead of blocking in BLMOVE on a connection each.
	hints *redisq.Hints

	maxPerUser   int           // Config.MaxConnsPerUser; 0: unbounded (unit benchmarks)
	maxUsers     int           // Config.usersBound: users online at once
	workers      int           // Config.Workers: hinted consumers working at once (sched)
	writeTimeout time.Duration // Config.WriteTimeout: how long a closing connection may linger
	ackTimeout   time.Duration // Config.AckTimeout

	mu      sync.Mutex
	users   map[string]*session
	conns   map[uint64]*conn
	closing bool // set by closeAll: no new sessions or connections

	consumers atomic.Int64 // consumers of online users: running a task, or parked
	tasks     atomic.Int64 // consumer tasks running now
	stopBy    atomic.Int64 // unix nanos: the shutdown's deadline for closes, 0 until closeAll
	sched     sched        // hinted: the consumers' slots
	strays    atomic.Int64 // consumers run outside the pool once it was shut (shutOut)
	stats     Stats
}

// session is one online user on this process. refs counts its connections
// plus handshakes that were admitted but are not yet open; the consumer ends
// when refs drops to zero, and only the consumer removes the session from
// hub.users, so a user never has two consumers at once in one process.
type session struct {
	user    string
	refs    int             // under hub.mu
	conns   []*conn         // under hub.mu
	blocker *redisq.Blocker // under hub.mu; set by the consumer
	// blocking is set (under hub.mu) while the consumer is about to block
	// in, or blocks in, a BLMOVE: only then is there anything to wake.
	blocking bool
	dead     bool // under hub.mu: its consumer panicked; no connection attaches any more
	// parked is the consumer while it waits for a hint with no task
	// (hinted consumption, an empty queue, nothing held): under hub.mu;
	// whoever takes it out schedules it to go on (hub.resume).
	parked *consumer
	// ackRecheck: an instance's ack connections of the user came or went;
	// the consumer reads again where they are (deferToAckers).
	ackRecheck atomic.Bool
	// ackConns counts the ack connections among conns (changed under
	// hub.mu): a consumer of a user with none needs no lock to know it.
	ackConns atomic.Int32
	// announced is when a relay that should not have come made this
	// instance announce its ack connections again (relayedWhileAcking);
	// under hub.mu.
	announced time.Time
	wake      chan struct{} // the consumer waits on it for connections
	hint      chan struct{} // hinted: the queue was written to (nil when blocking)
	done      chan struct{} // blocking: closed when the consumer returned (nil when hinted)
}

// Stats counts what the consumers did since start.
type Stats struct {
	Delivered atomic.Int64 // messages a connection's peer acknowledged, and acked in Redis
	Requeued  atomic.Int64 // messages put back: no connection took them, or no peer acknowledged them
}

func newHub(pool *taskpool.Pool, q *redisq.Queue, enc encoder, log *slog.Logger) *hub {
	m := newMetrics()
	return &hub{
		pool: pool, q: q, enc: enc, log: log,
		health: &health{log: log, m: m},
		m:      m,
		users:  make(map[string]*session),
		conns:  make(map[uint64]*conn),
	}
}

// acquire admits one more connection of user, starting the user's consumer
// if it has none. It fails with taskpool.ErrFull when maxUsers users are
// online already (users already online are never refused for that), or,
// blocking, the pool has no task for a new user's consumer, and with
// errTooManyConns when the user holds maxPerUser connections.
func (h *hub) acquire(user string) (*session, error) {
	s, hinted, err := h.admit(user)
	if hinted != nil {
		h.schedule(hinted) // outside h.mu: a shut pool ends it, under h.mu
	}
	return s, err
}

// admit is acquire under h.mu. It returns the new consumer of a hinted
// user, for acquire to schedule.
func (h *hub) admit(user string) (*session, *consumer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return nil, nil, taskpool.ErrClosed
	}
	s := h.users[user]
	if h.full(s) {
		return nil, nil, errTooManyConns
	}
	var hinted *consumer
	if s == nil {
		if len(h.users) >= h.maxUsers {
			return nil, nil, taskpool.ErrFull
		}
		s = h.newSession(user)
		c := &consumer{h: h, s: s, room: -1}
		if h.hints == nil {
			if err := h.startBlocking(c); err != nil {
				return nil, nil, err
			}
		} else {
			hinted = c
			h.consumers.Add(1)
		}
		h.users[user] = s
		if h.relay != nil {
			h.relay.watch(user)
		}
	}
	s.refs++
	return s, hinted, nil
}

// startBlocking starts the blocking consumer c on a task of its own for
// its session's life. Called with h.mu held.
func (h *hub) startBlocking(c *consumer) error {
	c.b = h.q.Blocker()
	c.s.blocker = c.b
	h.consumers.Add(1)
	if err := h.pool.Submit(func(ctx context.Context) { h.run(ctx, c) }); err != nil {
		c.b.Close()
		h.consumers.Add(-1)
		return err
	}
	return nil
}

// newSession is the session of a user coming online. Each channel costs
// ~100 bytes an online user: a session has only those its mode uses.
func (h *hub) newSession(user string) *session {
	s := &session{user: user, wake: make(chan struct{}, 1)}
	if h.hints != nil {
		s.hint = make(chan struct{}, 1)
	} else {
		s.done = make(chan struct{}) // interrupt waits on it
	}
	return s
}

// full reports whether session s (nil: none yet) holds the most
// connections a user may. Called with h.mu held.
func (h *hub) full(s *session) bool {
	return s != nil && h.maxPerUser > 0 && s.refs >= h.maxPerUser
}

// admissible reports whether acquire(user) would succeed now, without
// admitting anyone: for GET /check, so it may be stale a moment later.
func (h *hub) admissible(user string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closing:
		return taskpool.ErrClosed
	case h.full(h.users[user]):
		return errTooManyConns
	case h.users[user] != nil:
		return nil
	case len(h.users) >= h.maxUsers:
		return taskpool.ErrFull
	}
	return nil
}

// attach registers an open connection. It fails during shutdown
// (errShuttingDown), and when the consumer of the connection's session
// panicked meanwhile (errConsumerCrashed): the client is to reconnect.
func (h *hub) attach(c *conn) error {
	h.mu.Lock()
	if h.closing || c.sess.dead {
		h.mu.Unlock()
		if c.sess.dead {
			return errConsumerCrashed
		}
		return errShuttingDown
	}
	c.sess.conns = append(c.sess.conns, c)
	if c.ack != nil {
		c.sess.ackConns.Add(1)
	}
	h.conns[c.fd] = c
	h.mu.Unlock()
	c.sess.notify()
	if h.presence != nil {
		h.presence.userChanged(c.user)
	}
	return nil
}

// release undoes acquire (and attach, when c is not nil).
func (h *hub) release(s *session, c *conn) {
	h.mu.Lock()
	if c != nil {
		n := len(s.conns)
		s.conns = slices.DeleteFunc(s.conns, func(x *conn) bool { return x == c })
		if c.ack != nil && len(s.conns) < n {
			s.ackConns.Add(-1)
		}
		delete(h.conns, c.fd)
	}
	s.refs--
	last := s.refs == 0
	var pc *consumer
	if last { // a parked consumer goes on to retire the session
		pc, s.parked = s.parked, nil
	}
	h.mu.Unlock()
	s.notify()
	if c != nil && h.presence != nil {
		h.presence.userChanged(s.user)
	}
	if pc != nil {
		h.resume(pc)
	}
	if last {
		go h.interrupt(s)
	}
}

// interrupt ends the BLMOVE the consumer of s may be blocked in, so that it
// sees at once that its user left or that the server shuts down. A wake
// that arrives between the consumer's last look (beginBlock) and its
// BLMOVE finds nothing to end, so it is repeated until the consumer is no
// longer blocking, returned, or has a reason to go on. A consumer busy
// elsewhere (settling what it holds) looks again before it blocks.
func (h *hub) interrupt(s *session) {
	const retry = 20 * time.Millisecond
	for {
		h.mu.Lock()
		b, needed := s.blocker, (s.refs == 0 || h.closing) && s.blocking
		h.mu.Unlock()
		if !needed {
			return
		}
		if b != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			woke, err := b.Wake(ctx)
			cancel()
			if woke {
				return
			}
			if err != nil {
				h.log.Debug("wake failed", "user", s.user, "err", err)
			}
		}
		t := time.NewTimer(retry)
		select {
		case <-s.done:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (s *session) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// connsOf returns a snapshot of the open connections of s.
func (h *hub) connsOf(s *session) []*conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	open := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		if !c.gone.Load() {
			open = append(open, c)
		}
	}
	return open
}

// online reports whether s has an open connection. Called with h.mu held.
func (s *session) online() bool {
	return slices.ContainsFunc(s.conns, func(c *conn) bool { return !c.gone.Load() })
}

// waitOnline blocks until s has an open connection (true) or must end:
// its last reference is gone or the server shuts down (false).
func (h *hub) waitOnline(ctx context.Context, s *session) bool {
	for {
		h.mu.Lock()
		switch {
		case ctx.Err() == nil && s.online():
			h.mu.Unlock()
			return true
		case ctx.Err() != nil || s.refs == 0:
			h.mu.Unlock()
			return false
		}
		h.mu.Unlock()
		select {
		case <-s.wake:
		case <-ctx.Done():
		}
	}
}

// isOnline reports whether s has an open connection.
func (h *hub) isOnline(s *session) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return s.online()
}

// hinted tells the consumer of user, if it is online here, that its queue
// was written to. Called by the hint connections' readers: it must not
// block.
func (h *hub) hinted(user string) {
	h.mu.Lock()
	s := h.users[user]
	var c *consumer
	if s != nil {
		c, s.parked = s.parked, nil
		if c == nil {
			// Under the lock: a consumer about to park must see it
			// (park looks under the same lock), or it would wait for
			// the next sweep.
			select {
			case s.hint <- struct{}{}:
			default:
			}
		}
	}
	h.mu.Unlock()
	if c != nil {
		c.more, c.hinted = true, true
		h.resume(c)
	}
}

// park leaves c without a task while its user's queue is empty. It
// parks only a consumer that holds nothing (no batch in flight, no call
// of unknown outcome) and whose user is online here: all it needs to go
// on is a hint (hinted) or its user's last connection leaving (release),
// and either takes it out and resumes it. An idle user costs no
// goroutine this way, only its session. When it does not park, again
// says whether a hint or a change of connections came meanwhile (the
// consumer looks again at once) rather than that it holds something or
// its user is not online (it waits, awaitHint).
func (h *hub) park(c *consumer) (ok, again bool) {
	if len(c.flights) > 0 || c.token != 0 {
		return false, false
	}
	s := c.s
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-s.hint:
		c.more, c.hinted = true, true
		return false, true
	case <-s.wake:
		return false, true
	default:
	}
	if h.closing || !s.online() {
		return false, false
	}
	s.parked = c
	return true, false
}

// resume goes on with the parked consumer c (schedule: at once, or in
// line).
func (h *hub) resume(c *consumer) {
	c.resumed = true
	h.schedule(c)
}

// cameBack reports whether s, whose connections all went, has an open one
// again, and the server is not shutting down.
func (h *hub) cameBack(ctx context.Context, s *session) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return s.online() && ctx.Err() == nil
}

// beginBlock reports whether the consumer of s may block for the next
// message: its user is online. From then until endBlock, interrupt wakes
// it when the user leaves or the server shuts down.
func (h *hub) beginBlock(s *session) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !s.online() {
		return false
	}
	s.blocking = true
	return true
}

// endBlock ends what beginBlock began.
func (h *hub) endBlock(s *session) {
	h.mu.Lock()
	s.blocking = false
	h.mu.Unlock()
}

// retire removes s from the registry once its consumer is done with it
// (true), unless a connection of its user came meanwhile and the server is
// not shutting down (false): the consumer then serves on.
func (h *hub) retire(ctx context.Context, s *session) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.refs > 0 && ctx.Err() == nil {
		return false
	}
	h.dropSession(s)
	return true
}

// dropSession removes s from the hub, if it is still there: no consumer
// serves it any more. Called with h.mu held.
func (h *hub) dropSession(s *session) {
	if h.users[s.user] == s {
		delete(h.users, s.user)
		if h.relay != nil {
			h.relay.unwatch(s.user)
		}
	}
}

// refuseNew makes acquire and attach refuse from now on.
func (h *hub) refuseNew() {
	h.mu.Lock()
	h.closing = true
	h.mu.Unlock()
}

// closeAll refuses new connections and sends close code to every client,
// and returns by deadline, however many clients stopped reading: every
// write, the ones in progress and the ones a consumer starts later, is
// bounded by deadline first, so no close waits on a stalled write for
// longer than that.
func (h *hub) closeAll(code ws.StatusCode, reason string, deadline time.Time) {
	h.stopBy.Store(deadline.UnixNano()) // every write and linger ends by it, of connections gone from the hub too
	h.mu.Lock()
	h.closing = true
	all := make([]*conn, 0, len(h.conns))
	for _, c := range h.conns {
		all = append(all, c)
	}
	for _, s := range h.users {
		go h.interrupt(s)
	}
	h.mu.Unlock()
	for _, c := range all {
		c.stop(deadline)
	}
	for _, c := range all {
		c.closeWith(code, reason, deadline)
	}
}

// closeBound is d, or a moment after the shutdown's deadline when that
// comes first: by then every connection has closed (its linger ends at
// the deadline).
func (h *hub) closeBound(d time.Time) time.Time {
	if by := h.stopBy.Load(); by != 0 {
		if b := time.Unix(0, by).Add(250 * time.Millisecond); b.Before(d) {
			return b
		}
	}
	return d
}

// backlog is how many messages wait in the queues of the users online
// here, or -1 when Redis did not answer within a second.
func (h *hub) backlog() int64 {
	users := h.onlineUsers()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	n, err := h.q.Backlog(ctx, users)
	if err != nil {
		return -1
	}
	return n
}

// sessions returns the sessions of the users online here.
func (h *hub) sessions() []*session {
	h.mu.Lock()
	defer h.mu.Unlock()
	all := make([]*session, 0, len(h.users))
	for _, s := range h.users {
		all = append(all, s)
	}
	return all
}

// goneSince returns the users of sessions that left the hub and have no
// new session.
func (h *hub) goneSince(sessions []*session) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var gone []string
	for _, s := range sessions {
		if h.users[s.user] == nil {
			gone = append(gone, s.user)
		}
	}
	return gone
}

// onlineUsers lists the users with a session here.
func (h *hub) onlineUsers() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	users := make([]string, 0, len(h.users))
	for u := range h.users {
		users = append(users, u)
	}
	return users
}

// connCounts reports how many connections each of users holds here.
func (h *hub) connCounts(users []string) []redisq.PresenceUpdate {
	h.mu.Lock()
	defer h.mu.Unlock()
	ups := make([]redisq.PresenceUpdate, len(users))
	for i, u := range users {
		ups[i].User = u
		if s := h.users[u]; s != nil {
			ups[i].Conns = len(s.conns)
			ups[i].Acks = int(s.ackConns.Load())
		}
	}
	return ups
}

// counts reports online users and open connections.
func (h *hub) counts() (users, conns int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.users), len(h.conns)
}
