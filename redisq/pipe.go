package redisq

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/resp3"
)

// pipe is one RESP3 connection to one Redis server with client tracking
// on (CLIENT TRACKING on BCAST PREFIX <queue prefix> NOLOOP): Redis sends
// it an invalidate push naming every queue key written by another
// connection, and the pops and acks of every consumer of this server's
// users travel on it, pipelined: whatever the callers queue meanwhile goes
// out in one write. Its own pops raise no hints (NOLOOP; they are plain
// commands, which NOLOOP covers, unlike a script's writes).
//
// When the connection breaks, calls in flight fail with an unknown outcome
// (their callers requeue what they hold), and before the next connection
// carries anything the old one is fenced: a command still unread in
// Redis's socket buffer (bytes on their way through a partition) would
// otherwise run later, after its caller requeued and popped anew. If the
// server is the one the old connection reached (same run_id), the old
// connection is killed there (CLIENT KILL ID, through the go-redis client
// of the server); if it restarted or is another server (a failover), the
// old connection died with it or reaches a replica, which refuses
// writes. Then onConnect runs: hints may have been lost while no
// connection listened.
type pipe struct {
	srv       *redis.Client // the go-redis client of the same server: dial options, CLIENT KILL
	prefix    string        // the queue keys' prefix: what Redis hints
	name      string        // CLIENT SETNAME: redpush-hints-<instance>
	onPush    func(keys []string)
	onConnect func()
	log       *slog.Logger
	loadSHA   string // the ack script, loaded at every connect

	mu        sync.Mutex
	nc        net.Conn     // nil while down
	down      error        // why nc is nil
	obsolete  bool         // srv was closed: the pipe gave up; Hints replaces it
	queued    []*call      // not written yet
	inflight  []*call      // written, oldest first: replies come in this order
	writing   bool         // a caller is writing: it writes what others queue meanwhile too
	wbuf      []byte       // the writer's buffer, under writing
	armed     bool         // a lazy call waits in queued: a flush is due within lazyDelay
	lastReply atomic.Int64 // unix nanos of the last reply read: the connection answers
	cur       *link        // the connection being served, or the last one: what a replacement fences
	// slots bounds the pops in flight on this connection (popsInFlight):
	// under load consumers wait their turn, their queues grow meanwhile,
	// and each pop takes more (as blocking consumers' pops do, which share
	// the command client's pool). A slot is held until the call finished,
	// whether or not its caller still waits.
	slots  chan struct{}
	closed bool
	stop   chan struct{}
	life   context.Context // ends when the pipe closes: dials and fences give up then
	end    context.CancelFunc
	wg     sync.WaitGroup
}

// call is one batch of commands and their replies.
type call struct {
	ctx     context.Context
	buf     []byte // the encoded commands
	n       int    // replies expected
	replies []any
	err     error
	nc      net.Conn // the connection it was written on
	release func()   // called when it finished, if set: frees its slot
	done    chan struct{}
}

// errPipeDown fails a call while the hint connection is being replaced.
var errPipeDown = errors.New("redisq: hint connection down")

// refusedLogEvery is how often a refusal by Redis after start (of the
// setup, or of the fence) is logged.
const refusedLogEvery = time.Minute

const (
	pingEvery   = 5 * time.Second // the connection is PINGed when nothing was read for this long
	pingTimeout = 3 * time.Second // and taken for dead when PING takes longer
)

func newPipe(srv *redis.Client, prefix, name string, log *slog.Logger, onPush func([]string), onConnect func()) *pipe {
	life, end := context.WithCancel(context.Background())
	return &pipe{srv: srv, prefix: prefix, name: name, log: log, onPush: onPush, onConnect: onConnect,
		loadSHA: ackPop.Hash(), stop: make(chan struct{}), slots: make(chan struct{}, popsInFlight),
		down: errPipeDown, life: life, end: end}
}

// start connects once (so that a server that refuses tracking is known at
// once: the error), then keeps the connection up in the background.
func (p *pipe) start(ctx context.Context) error {
	l, err := p.dial(ctx)
	if err != nil && isRefusal(err) {
		return err
	}
	if l != nil {
		// Usable as soon as start returns (serve takes it on): a call
		// made before would find the pipe down.
		p.mu.Lock()
		p.nc, p.down, p.cur = l.nc, nil, l
		p.lastReply.Store(time.Now().UnixNano())
		p.mu.Unlock()
	}
	p.wg.Add(1)
	go p.run(l)
	return nil
}

// isRefusal reports whether err is Redis answering no (an unknown command,
// a permission), as opposed to Redis not answering.
func isRefusal(err error) bool {
	var rerr resp3.Error
	return errors.As(err, &rerr)
}

// link is one set-up connection.
type link struct {
	nc    net.Conn
	r     *resp3.Reader // what the handshake read ahead stays in its buffer
	id    int64         // CLIENT ID
	runID string        // the server's run_id: a restart or another server has another
	last  string        // the last setup command's reply, if a string
}

// run serves one connection after another until close.
func (p *pipe) run(l *link) {
	defer p.wg.Done()
	var bo backoffDelay
	var refusedAt time.Time
	for {
		if l != nil {
			bo.reset()
			p.serve(l)
			if !p.fence(l) {
				return
			}
		}
		if !bo.sleep(p.stop) {
			return
		}
		ctx, cancel := context.WithTimeout(p.life, 5*time.Second)
		var err error
		l, err = p.dial(ctx)
		cancel()
		switch {
		case errors.Is(err, redis.ErrClosed):
			p.retire()
			return
		case err != nil && isRefusal(err) && time.Since(refusedAt) >= refusedLogEvery:
			// Accepted at start, refused now (an ACL changed, another
			// server after a failover): its users wait until it passes.
			refusedAt = time.Now()
			p.log.Warn("Redis refuses to set up the hint connection; its users' messages wait until it accepts", "err", err)
		case err != nil:
			p.log.Debug("hint connection: dial failed", "err", err)
		}
	}
}

// retire gives the pipe up for good: its go-redis client was closed (a
// cluster node that left the slot map); Hints opens a new pipe for the
// server if it comes back.
func (p *pipe) retire() {
	p.mu.Lock()
	p.obsolete = true
	p.down = fmt.Errorf("%w: its client was closed", errPipeDown)
	p.mu.Unlock()
}

// isObsolete reports whether the pipe gave up (retire).
func (p *pipe) isObsolete() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.obsolete
}

// dial opens a connection to the server and sets it up: RESP3, auth, db,
// tracking, the ack script; INFO names the server's run_id (fence).
func (p *pipe) dial(ctx context.Context) (*link, error) {
	l, err := dialLink(ctx, p.srv, p.name, [][]string{
		{"CLIENT", "TRACKING", "on", "BCAST", "PREFIX", p.prefix, "NOLOOP"},
		{"SCRIPT", "LOAD", ackPopSource},
		{"INFO", "server"},
	})
	if err != nil {
		return nil, err
	}
	if l.runID = infoField(l.last, "run_id"); l.runID == "" {
		_ = l.nc.Close()
		return nil, fmt.Errorf("%w: INFO did not name the server's run_id", resp3.ErrProtocol)
	}
	return l, nil
}

// dialLink opens a RESP3 connection to srv with srv's dial options and
// credentials, names it, selects srv's database, and runs setup (the last
// command's reply, if a string, is kept in link.last); it fails with
// redis.ErrClosed if srv was closed (a cluster node that left the slot
// map). ctx bounds it all: a server that stops answering mid-handshake
// does not hold it longer.
func dialLink(ctx context.Context, srv *redis.Client, name string, setup [][]string) (*link, error) {
	if err := srv.Ping(ctx).Err(); errors.Is(err, redis.ErrClosed) {
		return nil, err
	}
	opt := srv.Options()
	nc, err := opt.Dialer(ctx, opt.Network, opt.Addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	user, pass := opt.Username, opt.Password
	if opt.CredentialsProviderContext != nil {
		if user, pass, err = opt.CredentialsProviderContext(ctx); err != nil {
			stop()
			_ = nc.Close()
			return nil, err
		}
	} else if opt.CredentialsProvider != nil {
		user, pass = opt.CredentialsProvider()
	}
	hello := []string{"HELLO", "3"}
	if pass != "" {
		if user == "" {
			user = "default"
		}
		hello = append(hello, "AUTH", user, pass)
	}
	cmds := [][]string{append(hello, "SETNAME", name)}
	if opt.DB != 0 {
		cmds = append(cmds, []string{"SELECT", strconv.Itoa(opt.DB)})
	}
	cmds = append(cmds, setup...)
	var buf []byte
	for _, c := range cmds {
		buf = resp3.AppendCommand(buf, c...)
	}
	l := &link{nc: nc, r: resp3.NewReader(nc)}
	err = l.handshake(buf, len(cmds))
	if !stop() && err == nil {
		err = ctx.Err() // ctx ended as the handshake did: nc is closed
	}
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	return l, nil
}

// handshake writes the setup commands and reads their n replies; the first
// is HELLO's map, which names the connection's id; the last is kept in
// l.last if it is a string. Pushes that come meanwhile are dropped: the
// sweep after connecting covers them.
func (l *link) handshake(buf []byte, n int) error {
	if _, err := l.nc.Write(buf); err != nil {
		return err
	}
	for i := 0; i < n; {
		v, err := l.r.Read()
		if err != nil {
			return err
		}
		switch v := v.(type) {
		case resp3.Push:
			continue
		case resp3.Error:
			return v
		}
		if i == 0 {
			l.id = helloID(v)
		}
		if i == n-1 {
			l.last, _ = v.(string)
		}
		i++
	}
	if l.id == 0 {
		return fmt.Errorf("%w: HELLO did not name the connection's id", resp3.ErrProtocol)
	}
	return nil
}

// infoField is the value of field in an INFO reply ("field:value" lines).
func infoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// helloID finds "id" in HELLO's reply (a map, read as keys and values in
// turn).
func helloID(v any) int64 {
	kv, _ := v.([]any)
	for i := 0; i+1 < len(kv); i += 2 {
		if k, _ := kv[i].(string); k == "id" {
			id, _ := kv[i+1].(int64)
			return id
		}
	}
	return 0
}

// serve carries calls on nc until it breaks or the pipe closes.
func (p *pipe) serve(l *link) {
	nc := l.nc
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = nc.Close()
		return
	}
	p.nc, p.down, p.cur = nc, nil, l
	p.lastReply.Store(time.Now().UnixNano())
	p.mu.Unlock()
	p.onConnect()
	go p.keepAlive(nc)
	p.breakConn(nc, p.readLoop(l.r))
}

// breakConn closes nc, if it is still the connection, and fails every call
// on it: their outcome is unknown.
func (p *pipe) breakConn(nc net.Conn, err error) {
	p.mu.Lock()
	if p.nc != nc {
		p.mu.Unlock()
		return
	}
	if err == nil {
		err = errPipeDown
	}
	down := fmt.Errorf("%w: %v", errPipeDown, err)
	p.nc, p.down = nil, down
	calls := append(p.inflight, p.queued...)
	p.inflight, p.queued = nil, nil
	p.mu.Unlock()
	_ = nc.Close()
	for _, c := range calls {
		c.finish(down)
	}
	if !p.isClosed() {
		p.log.Warn("hint connection to Redis lost; reconnecting", "err", err)
	}
}

// fence makes sure the old connection l can carry nothing more before a
// new one carries anything (see pipe), retrying until Redis answers; false
// when the pipe closed, or retired because its go-redis client was closed.
func (p *pipe) fence(l *link) bool {
	var bo backoffDelay
	var warned time.Time
	for !p.isClosed() {
		ctx, cancel := context.WithTimeout(p.life, 2*time.Second)
		err := endOn(ctx, p.srv, l)
		cancel()
		switch {
		case err == nil:
			return true
		case errors.Is(err, redis.ErrClosed):
			p.retire()
			return false
		case isRedisReply(err) && time.Since(warned) >= refusedLogEvery:
			warned = time.Now()
			p.log.Warn("Redis refuses to end the old hint connection (CLIENT KILL, INFO); no new one until it does", "err", err)
		}
		if !bo.sleep(p.stop) {
			return false
		}
	}
	return false
}

// endOn ends l's connection through via, if via reaches the server l did
// (same run_id: client ids are reused after a restart); a restarted or
// another server holds nothing of it. The new-style filter form of CLIENT
// KILL answers how many it killed: 0 when the connection is gone already.
func endOn(ctx context.Context, via *redis.Client, l *link) error {
	info, err := via.Info(ctx, "server").Result()
	if err != nil || infoField(info, "run_id") != l.runID {
		return err
	}
	return via.Do(ctx, "CLIENT", "KILL", "ID", l.id).Err()
}

// isRedisReply reports whether err is an error reply of Redis's.
func isRedisReply(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr)
}

func (p *pipe) readLoop(r *resp3.Reader) error {
	for {
		v, err := r.Read()
		if err != nil {
			return err
		}
		if push, ok := v.(resp3.Push); ok {
			p.pushed(push) // hints come whether or not Redis reads what we write
			continue
		}
		p.lastReply.Store(time.Now().UnixNano())
		if err := p.reply(v); err != nil {
			return err
		}
	}
}

// pushed hands the keys of an invalidate push on; a null list means that
// Redis flushed its keys (FLUSHALL): every queue may have changed.
func (p *pipe) pushed(push resp3.Push) {
	if push.Kind != "invalidate" || len(push.Vals) == 0 {
		return
	}
	list, ok := push.Vals[0].([]any)
	if !ok {
		p.onConnect()
		return
	}
	keys := make([]string, 0, len(list))
	for _, k := range list {
		if s, ok := k.(string); ok {
			keys = append(keys, s)
		}
	}
	p.onPush(keys)
}

// reply gives v to the oldest call still waiting for replies.
func (p *pipe) reply(v any) error {
	p.mu.Lock()
	if len(p.inflight) == 0 {
		p.mu.Unlock()
		return fmt.Errorf("%w: a reply nobody asked for", resp3.ErrProtocol)
	}
	c := p.inflight[0]
	c.replies = append(c.replies, v)
	if len(c.replies) < c.n {
		p.mu.Unlock()
		return nil
	}
	p.inflight[0] = nil
	p.inflight = p.inflight[1:]
	p.mu.Unlock()
	c.finish(nil)
	return nil
}

// minWriteTime is the least time before its deadline a call must have left
// to be written: a context's timer fires late, and a write whose deadline
// has passed fails for every call it carries.
const minWriteTime = 50 * time.Millisecond

// flushPasses bounds the writes of one flush: a caller that takes the
// writer's turn does not write for others forever.
const flushPasses = 4

// takeTurn writes what callers queued unless a write is in progress (its
// writer takes it along). Called with p.mu held. The caller that finds no
// write in progress writes (flat combining): no goroutine to wake per
// call, and calls queued meanwhile share a write.
func (p *pipe) takeTurn() {
	if p.writing {
		return
	}
	p.writing = true
	p.flush()
	p.writing = false
	if len(p.queued) > 0 && p.nc != nil {
		go p.flushQueued() // the next turn, for what came during the last write
	}
}

// flush writes what callers queued, all of it in one write, a few times
// over while more comes; called with p.mu held and p.writing set, it
// returns so.
func (p *pipe) flush() {
	for pass := 0; pass < flushPasses && len(p.queued) > 0 && p.nc != nil; pass++ {
		nc := p.nc
		buf := p.wbuf[:0]
		var expired []*call
		// A command must reach Redis before its caller's deadline (the
		// instance claim's: redisq.Queue.leased): the write may not
		// outlast the earliest one.
		now := time.Now()
		deadline := now.Add(pingTimeout)
		for _, c := range p.queued {
			d, ok := c.ctx.Deadline()
			if c.ctx.Err() != nil || ok && d.Sub(now) < minWriteTime {
				// Not written, so it never runs: one call too close to
				// its deadline must not fail the write of all the others.
				expired = append(expired, c)
				continue
			}
			if ok && d.Before(deadline) {
				deadline = d
			}
			c.nc = nc
			buf = append(buf, c.buf...)
			p.inflight = append(p.inflight, c)
		}
		clear(p.queued)
		p.queued = p.queued[:0]
		p.mu.Unlock()
		for _, c := range expired {
			c.finish(cmp.Or(c.ctx.Err(), context.DeadlineExceeded))
		}
		var err error
		if len(buf) > 0 {
			_ = nc.SetWriteDeadline(deadline)
			_, err = nc.Write(buf)
		}
		if err != nil {
			p.breakConn(nc, err)
		}
		p.mu.Lock()
		if cap(buf) <= 1<<20 { // a burst's buffer is not kept
			p.wbuf = buf
		}
	}
}

// flushQueued takes a writer's turn for calls that no other call takes
// along: lazy ones, and those that came during another's last write.
func (p *pipe) flushQueued() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.takeTurn()
}

// keepAlive checks the connection when no reply came on it for pingEvery:
// a dead peer (a partition, a host gone) is otherwise noticed only when
// TCP gives up, many minutes later, and a call waits for its reply until
// then. A connection that delivers replies is alive, however long a PING
// would wait behind a backlog of pops; hints alone do not say that Redis
// reads what is written.
func (p *pipe) keepAlive(nc net.Conn) {
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		current := p.nc == nc
		p.mu.Unlock()
		if !current {
			return
		}
		if p.readSince(pingEvery) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
		_, _, err := p.do(ctx, 1, resp3.AppendCommand(nil, "PING"), false, nil)
		cancel()
		switch {
		case errors.Is(err, errPipeDown):
			return // broken already
		case err != nil && !p.readSince(pingTimeout):
			p.breakConn(nc, fmt.Errorf("nothing read for %v: PING: %w", pingTimeout, err))
			return
		}
	}
}

// readSince reports whether a reply was read within d.
func (p *pipe) readSince(d time.Duration) bool {
	return time.Since(time.Unix(0, p.lastReply.Load())) < d
}

// lazyDelay is how long a lazy call (an ack that nothing waits for) may
// wait in the queue for company: acks of many users then share a write,
// and Redis reads them in one go.
const lazyDelay = 2 * time.Millisecond

// do queues the n commands in buf and waits for their replies, and says
// which connection carried them; release, if set, runs when the call
// finished (even after do returned on ctx). A call
// whose ctx ends before it was written never runs; one whose ctx ends
// while it waits for its replies may have run. A lazy call is written with
// the next call that is not, or within lazyDelay: calls run in the order
// they were queued either way.
func (p *pipe) do(ctx context.Context, n int, buf []byte, lazy bool, release func()) ([]any, net.Conn, error) {
	c := &call{ctx: ctx, buf: buf, n: n, release: release, done: make(chan struct{})}
	p.mu.Lock()
	if p.nc == nil || p.closed {
		err := p.down
		p.mu.Unlock()
		if release != nil {
			release()
		}
		return nil, nil, err
	}
	p.queued = append(p.queued, c)
	switch {
	case p.writing: // the writer takes it
	case lazy:
		if !p.armed {
			p.armed = true
			time.AfterFunc(lazyDelay, p.flushLazy)
		}
	default:
		p.takeTurn()
	}
	p.mu.Unlock()
	select {
	case <-c.done:
		return c.replies, c.nc, c.err
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// flushLazy writes the lazy calls that no other call took along.
func (p *pipe) flushLazy() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed = false
	p.takeTurn()
}

func (c *call) finish(err error) {
	c.err = err
	close(c.done)
	if c.release != nil {
		c.release()
	}
}

// acquire takes a slot for a pop (see slots); false when the pipe closed
// first. It does not give up otherwise: the calls that hold the slots end
// with a reply or with the connection, which the keep-alive breaks when
// nothing comes for a while.
func (p *pipe) acquire() bool {
	select {
	case p.slots <- struct{}{}:
		return true
	case <-p.stop:
		return false
	}
}

// release frees a slot taken by acquire.
func (p *pipe) release() { <-p.slots }

// reconnect replaces nc, if it is still the connection.
func (p *pipe) reconnect(nc net.Conn, why string) {
	p.breakConn(nc, errors.New(why))
}

func (p *pipe) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// closeFenced closes the pipe and kills its last connection in Redis,
// through via (the client that replaces the pipe's), if the server is
// the one it reached: before a replacement carries anything, a command
// still unread in the old socket must not run (see pipe). Best effort:
// a failure is logged.
func (p *pipe) closeFenced(via *redis.Client) {
	p.mu.Lock()
	l := p.cur
	p.mu.Unlock()
	p.close()
	if l == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := endOn(ctx, via, l); err != nil {
		p.log.Warn("could not end a replaced hint connection; a command still on its way may run late", "err", err)
	}
}

// close ends the pipe: calls fail, the connection closes.
func (p *pipe) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	nc := p.nc
	p.mu.Unlock()
	close(p.stop)
	p.end()
	if nc != nil {
		p.breakConn(nc, errPipeDown)
	}
	p.wg.Wait()
}

// backoffDelay is a capped exponential delay between reconnects.
type backoffDelay struct{ d time.Duration }

func (b *backoffDelay) reset() { b.d = 0 }

// sleep waits for the next delay; false when stop closed first.
func (b *backoffDelay) sleep(stop <-chan struct{}) bool {
	b.d = min(max(2*b.d, 50*time.Millisecond), 2*time.Second)
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}
