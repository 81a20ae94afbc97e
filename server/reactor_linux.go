//go:build linux && !redpush_goroutines

package server

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/ants/v2"
	"golang.org/x/sys/unix"
)

// reactor reads the plain TCP connections of a server without a goroutine
// per connection: after the greeting, a connection's socket waits in an
// epoll set (level-triggered, EPOLLONESHOT), and a readable event hands it
// to one task of a small pool, which reads what came without blocking,
// feeds it to the connection's frameReader, and arms the socket again. An
// idle connection costs its conn and its net.Conn, no goroutine and no
// buffer. Answers (pongs, replies, pings) are queued in the connection's
// outbox and never block a reader task; a slow or partial sender holds no
// task either: between events it is only bytes kept by its frameReader.
//
// The net.Conn stays open: writes, deadlines, SIOCOUTQ and the close go
// through it as on the goroutine path, and reads use its file descriptor
// through syscall.RawConn, which holds the descriptor while a read runs
// (it cannot be closed and reused under a read). Its descriptor is then in
// Go's netpoller too, which wakes for nothing when it is readable; closing
// the net.Conn and keeping a dup instead would save ~0.9 KB per connection
// (tools/reactorprobe: epoll vs epoll-keep) but every write, deadline and
// close path would need a raw twin.
//
// Timers: one sweep every sweepEvery pings a connection silent for half of
// -idle-timeout, closes one silent for all of it, and ends one whose frame
// began -idle-timeout ago and has not ended, as the goroutine path's read
// deadlines do. TLS connections are read by a goroutine each (crypto/tls
// owns their reads). Build with -tags redpush_goroutines for the
// goroutine path alone (reactor_other.go).
type reactor struct {
	s     *Server
	epfd  int
	stopw int // eventfd: written to end the event loop
	pool  *ants.PoolWithFuncGeneric[*conn]
	idle  time.Duration

	// table holds the connections by conn.fd, the id their epoll events
	// carry, in shards: the sweep looks at one shard per tick, and an
	// event's lookup waits only for its shard's lock.
	table [tableShards]shard

	loopDone, sweepDone chan struct{}
	stopSweep           chan struct{}
	closed              atomic.Bool // epfd is closed: no more epoll calls (its number may be reused)
}

// readersPerCPU sizes the reader pool: tasks never block (reads are
// non-blocking, answers queued), so a few per core keep them busy.
const readersPerCPU = 4

// readBufSize is what a reader task reads at once; its buffer is the
// task's, not the connection's.
const readBufSize = 4096

var readBufs = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// newReactor starts the event loop and the idle sweep.
func newReactor(s *Server) (*reactor, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	stopw, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN} // data 0: no connection has id 0
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, stopw, &ev); err != nil {
		unix.Close(stopw)
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	x := &reactor{s: s, epfd: epfd, stopw: stopw, idle: s.cfg.IdleTimeout,
		loopDone: make(chan struct{}), sweepDone: make(chan struct{}), stopSweep: make(chan struct{})}
	for i := range x.table {
		x.table[i].conns = make(map[uint64]*conn)
	}
	x.pool, err = ants.NewPoolWithFuncGeneric(readersPerCPU*runtime.GOMAXPROCS(0), x.read,
		ants.WithPanicHandler(func(v any) { s.log.Error("reader task panicked", "panic", v) }))
	if err != nil {
		unix.Close(stopw)
		unix.Close(epfd)
		return nil, err
	}
	go x.loop()
	go x.sweepLoop()
	return x, nil
}

// add hands c to the reactor (true) or leaves it to its goroutine (false:
// not plain TCP, closed already, or epoll refused it). From true on, the
// reactor ends c (endConn) when it ends.
func (x *reactor) add(c *conn) bool {
	tc, ok := c.nc.(*net.TCPConn)
	if !ok {
		return false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	c.raw = raw
	c.lastRead.Store(time.Now().UnixNano())
	// Counted and in the table before a close can reach it through c.rx:
	// such a close ends it (end: forget, Done).
	x.s.conns.Add(1)
	sh := x.shardOf(c.fd)
	sh.mu.Lock()
	sh.conns[c.fd] = c
	sh.mu.Unlock()
	c.wmu.Lock()
	if c.closed { // the server closed it meanwhile: its goroutine ends it
		c.wmu.Unlock()
		x.forget(c)
		x.s.conns.Done()
		return false
	}
	c.rx = x
	c.wmu.Unlock()
	if err := x.ctl(c, unix.EPOLL_CTL_ADD); err != nil {
		x.s.log.Warn("epoll refused a connection; a goroutine reads it", "err", err)
		if c.w.stop() { // nobody else ends it: its goroutine does
			x.forget(c)
			c.wmu.Lock()
			c.rx = nil
			c.wmu.Unlock()
			x.s.conns.Done()
			return false
		}
	}
	return true
}

// ctl adds (or arms again) c's socket in the epoll set for one readable
// event; with EPOLL_CTL_DEL it removes it. It fails once c's net.Conn is
// closed: its descriptor may belong to another socket by then.
func (x *reactor) ctl(c *conn, op int) error {
	if x.closed.Load() {
		return net.ErrClosed
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
		Fd: int32(uint32(c.fd)), Pad: int32(uint32(c.fd >> 32))}
	var cerr error
	if err := c.raw.Control(func(fd uintptr) { cerr = unix.EpollCtl(x.epfd, op, int(fd), &ev) }); err != nil {
		return err
	}
	return cerr
}

// loop waits for events and hands each readable connection to a reader
// task; when every task is busy it waits for one (the sockets keep their
// bytes meanwhile).
func (x *reactor) loop() {
	defer close(x.loopDone)
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(x.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue // Go's preemption signal
		}
		if err != nil {
			x.s.log.Error("epoll wait failed; the reactor stops", "err", err)
			return
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == 0 {
				return // close
			}
			sh := x.shardOf(id)
			sh.mu.Lock()
			c := sh.conns[id]
			sh.mu.Unlock()
			if c == nil || !c.w.fire() {
				continue // it ended meanwhile
			}
			if err := x.pool.Invoke(c); err != nil {
				x.end(c, err) // the pool is closed: the reactor is closing
			}
		}
	}
}

// read is a reader task: it reads what c's socket holds, feeds it to c's
// frameReader, and arms the socket again, or ends c.
func (x *reactor) read(c *conn) {
	defer func() {
		if v := recover(); v != nil { // a bug: the connection ends, the process goes on
			x.s.log.Error("reader task panicked; its connection is closed", "user", c.user, "panic", v, "stack", string(debug.Stack()))
			x.end(c, &closeErr{code: ws.StatusInternalServerError, reason: "internal error"})
		}
	}()
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	for range 16 { // then others get their turn: the socket stays readable
		n, err := c.readRaw(buf)
		if n > 0 {
			c.lastRead.Store(time.Now().UnixNano())
			c.pinged.Store(false)
			if c.rd == nil {
				c.rd = x.s.newFrameReader(c, c.post)
			}
			if ferr := c.rd.feed(buf[:n]); ferr != nil {
				x.end(c, ferr)
				return
			}
			if c.answersPiled() {
				break // read no more until they are written (rearm pauses)
			}
		}
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			x.rearm(c)
			return
		case err != nil:
			x.end(c, &net.OpError{Op: "read", Net: "tcp", Source: c.nc.LocalAddr(), Addr: c.nc.RemoteAddr(), Err: os.NewSyscallError("read", err)})
			return
		case n == 0:
			if c.rd != nil && c.rd.mid() {
				x.end(c, io.ErrUnexpectedEOF)
			} else {
				x.end(c, io.EOF)
			}
			return
		case n < len(buf):
			x.rearm(c) // probably all there was; if not, it fires again at once
			return
		}
	}
	x.rearm(c)
}

// readRaw reads from c's socket without blocking.
func (c *conn) readRaw(buf []byte) (n int, err error) {
	if cerr := c.raw.Read(func(fd uintptr) bool {
		n, err = unix.Read(int(fd), buf)
		return true // never wait in Go's netpoller: the reactor waits
	}); cerr != nil {
		return 0, cerr // closed
	}
	return max(n, 0), err
}

// rearm arms c's socket for its next readable event, or ends c when the
// server closed it meanwhile (watch.rearm). While c's answers pile up (a
// client that sends and does not read) it pauses c instead: the outbox
// writer resumes it once they are written.
func (x *reactor) rearm(c *conn) {
	if c.rd != nil && c.rd.idle() { // between frames: an idle connection holds no reader
		c.rd.giveBack()
		c.rd = nil
	}
	if c.answersPiled() {
		if !c.w.pause() {
			x.end(c, ErrConnClosed)
			return
		}
		if c.answersPiled() || !c.w.resume() {
			return // the writer resumes it
		}
	} else if !c.w.rearm() {
		x.end(c, ErrConnClosed)
		return
	}
	x.arm(c)
}

// arm puts c's socket, armed (watch), back in the epoll set.
func (x *reactor) arm(c *conn) {
	if err := x.ctl(c, unix.EPOLL_CTL_MOD); err != nil && c.w.stop() {
		// Not closed by the server (that one ends it): an epoll failure.
		x.end(c, err)
	}
}

// resume arms c again if it was paused: its outbox writer wrote what was
// queued (writer.go).
func (x *reactor) resume(c *conn) {
	if c.w.resume() {
		c.lastRead.Store(time.Now().UnixNano()) // the pause was no silence of the client's
		x.arm(c)
	}
}

// stop is the server's close of c (conn.closeLocked): c ends now if it
// was waiting for bytes, else when its reader task is done.
func (x *reactor) stop(c *conn) {
	if c.w.stop() {
		x.end(c, ErrConnClosed)
	}
}

// end ends c, why being err: c leaves the epoll set, and on a goroutine of
// its own (a linger may take -write-timeout) the reader's part of the
// close runs, then endConn. The one party that ends c calls it (watch).
func (x *reactor) end(c *conn, err error) {
	c.w.finish()
	x.forget(c)
	_ = x.ctl(c, unix.EPOLL_CTL_DEL) // fails if closed already: then it left the set by itself
	go func() {
		defer x.s.conns.Done()
		if _, ok := err.(*closeErr); ok {
			// The answers to what came before the close (a reply, a
			// pong) go out before its close frame, as on the goroutine
			// path, where each was written before the next frame was read.
			c.flushOutbox(time.Now().Add(min(x.s.cfg.WriteTimeout, time.Second)))
		}
		x.s.readEnded(c, c.rd, err)
		x.s.endConn(c, c.nc, err)
	}()
}

// forget removes c from the reactor's table: events still on their way
// for it find nothing.
func (x *reactor) forget(c *conn) {
	sh := x.shardOf(c.fd)
	sh.mu.Lock()
	delete(sh.conns, c.fd)
	sh.mu.Unlock()
}

// sweepEvery is how often the idle sweep runs: an eighth of the idle
// timeout, between 10 and 100 ms. Often, so that the pings of clients
// that connected together (a reconnect storm) go out in many small
// bursts: a sweep a second sent them in bursts of thousands, and the
// pongs came back the same way, which showed in the pushes' tail latency
// (redpush-bench compare, 10,000 users at 2,000 msg/s: p99.9 11 → 52 ms).
func (x *reactor) sweepEvery() time.Duration {
	return min(max(x.idle/8, 10*time.Millisecond), time.Second)
}

// tableShards is how many shards the connection table has; the sweep
// looks at one per tick, so each connection once per sweepEvery.
const tableShards = 16

// shard is a part of the reactor's connection table.
type shard struct {
	mu    sync.Mutex
	conns map[uint64]*conn
}

func (x *reactor) shardOf(id uint64) *shard { return &x.table[id%tableShards] }

// sweepLoop sweeps one shard per tick, each every sweepEvery: the pings of
// clients that connected together (a reconnect storm) go out in small
// bursts, sixteen a sweep, and a sweep's cost is spread likewise. Sweeping
// the whole table at once, every second, sent them in bursts of thousands
// and the pongs came back the same way, which showed in the pushes' tail
// latency (redpush-bench compare, 10,000 users at 2,000 msg/s: p99.9
// 4.7x); the whole table every 100 ms cost ~20 % more CPU per message at
// 100,000 users (make bench-scale).
func (x *reactor) sweepLoop() {
	defer close(x.sweepDone)
	t := time.NewTicker(x.sweepEvery() / tableShards)
	defer t.Stop()
	for i := 0; ; i = (i + 1) % tableShards {
		select {
		case <-x.stopSweep:
			return
		case now := <-t.C:
			x.sweep(&x.table[i], now)
		}
	}
}

// sweep pings the connections of sh silent for half the idle timeout,
// closes those silent for all of it (1001, as the goroutine path), and
// ends those whose frame began an idle timeout ago (a read deadline
// there).
func (x *reactor) sweep(sh *shard, now time.Time) {
	var ping, idle, late []*conn
	half, full := now.Add(-x.idle/2).UnixNano(), now.Add(-x.idle).UnixNano()
	sh.mu.Lock()
	for _, c := range sh.conns {
		if c.w.state.Load() == watchPaused {
			continue // not read while its answers wait: not silent (the outbox bounds it)
		}
		switch since := c.rs.since.Load(); {
		case since != 0:
			if since < full {
				late = append(late, c)
			}
		case c.lastRead.Load() < full && c.pinged.Load():
			idle = append(idle, c)
		case c.lastRead.Load() < half && !c.pinged.Load():
			ping = append(ping, c)
		}
	}
	sh.mu.Unlock()
	for _, c := range ping {
		c.pinged.Store(true)
		_ = c.post(framePing)
	}
	for _, c := range idle { // its close frame may wait on a stalled socket: not here, and once
		if c.idleClosing.CompareAndSwap(false, true) {
			go c.closeWith(ws.StatusGoingAway, "idle timeout", time.Now().Add(min(x.s.cfg.WriteTimeout, time.Second)))
		}
	}
	for _, c := range late {
		if c.w.claim() { // not while a reader task has it: bytes came
			x.end(c, os.ErrDeadlineExceeded)
		}
	}
}

// count is how many connections the reactor reads.
func (x *reactor) count() int {
	if x == nil {
		return 0
	}
	n := 0
	for i := range x.table {
		sh := &x.table[i]
		sh.mu.Lock()
		n += len(sh.conns)
		sh.mu.Unlock()
	}
	return n
}

// close stops the reactor once every connection ended (Serve's end).
func (x *reactor) close() {
	close(x.stopSweep)
	<-x.sweepDone
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	_, _ = unix.Write(x.stopw, one)
	<-x.loopDone
	_ = x.pool.ReleaseTimeout(time.Second)
	x.closed.Store(true) // connections that outlived the shutdown's deadline end without it
	unix.Close(x.stopw)
	unix.Close(x.epfd)
}
