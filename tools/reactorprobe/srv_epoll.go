//go:build linux

package main

import (
	"errors"
	"log"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/ants/v2"
	"golang.org/x/sys/unix"
)

// epollServer: accept loop + ws.Upgrade in a pool task, then the socket is
// taken away from Go's netpoller (dup of the fd, net.Conn closed) and put in
// an epoll set of our own; no goroutine and no buffer per idle connection.
// One goroutine waits in EpollWait and hands readable connections to an
// ants pool; the task reads once into a pooled buffer, handles the complete
// frames, keeps only an incomplete tail (rare), and re-arms.
//
// Level-triggered + EPOLLONESHOT: the one-shot gives a connection to at
// most one task at a time (no two workers reading one socket) and the task
// re-arms with EPOLL_CTL_MOD when done; level-triggered means a task may
// read just once (one 4 KB read) and anything left in the socket fires again
// on re-arm, so no drain-until-EAGAIN loop is needed and a busy connection
// cannot starve the others. Edge-triggered would need the drain loop and
// still a lock against two workers; it saves nothing here.
type epollServer struct {
	workers int
	keep    bool // epoll-keep: keep the net.Conn, its fd in both pollers
	epfd    int
	upPool  *ants.Pool
	rdPool  *ants.PoolWithFunc
	tab     []atomic.Pointer[econn] // by fd
	gen     atomic.Uint32

	mu    sync.Mutex
	conns []*econn // push index -> conn
}

// econn is all an idle connection costs: no goroutine, no buffer.
type econn struct {
	mu     sync.Mutex
	fd     int32
	gen    uint32 // guards against a stale event for a reused fd number
	closed bool
	ev     atomic.Uint32 // events not yet handled
	in     []byte        // incomplete frame tail; nil when idle
	out    []byte        // unsent bytes; nil when idle
	nc     net.Conn      // epoll-keep only
}

const armIn = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

var rbufPool = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

func (s *epollServer) start(addr string) error {
	var err error
	if s.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return err
	}
	s.tab = make([]atomic.Pointer[econn], 1<<16)
	if s.upPool, err = ants.NewPool(s.workers); err != nil {
		return err
	}
	if s.rdPool, err = ants.NewPoolWithFunc(s.workers, func(a any) { s.handle(a.(*econn)) }); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go s.poll()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			if err := s.upPool.Submit(func() { s.upgrade(nc) }); err != nil {
				nc.Close()
			}
		}
	}()
	return nil
}

func (s *epollServer) upgrade(nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := ws.Upgrade(nc); err != nil {
		nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	i := registered.Add(1) - 1
	if _, err := nc.Write(greeting(i)); err != nil {
		nc.Close()
		return
	}
	// Take the fd away from Go. SyscallConn().Control gives the fd without
	// touching its mode; we dup it (F_DUPFD_CLOEXEC) and close the net.Conn,
	// which removes the fd from Go's netpoller and frees the netFD. The dup
	// shares the open file description, so it stays O_NONBLOCK.
	// Traps avoided: (*net.TCPConn).File() also dups, but File.Fd() puts
	// the descriptor (and so the shared open file description: the original
	// too) in blocking mode; keeping the net.Conn AND registering its fd in our epoll
	// leaves it in two pollers (Go's edge-triggered one wakes for nothing on
	// every readable event) and its finalizer closes the fd if the net.Conn
	// is ever dropped.
	rc, err := nc.(*net.TCPConn).SyscallConn()
	if err != nil {
		nc.Close()
		return
	}
	fd := -1
	var cerr error
	var keep net.Conn
	if s.keep {
		// epoll-keep: the variant to avoid, measured for the record. The
		// net.Conn stays (and must stay reachable: its finalizer would close
		// the fd), Go's netpoller keeps its registration and wakes on every
		// readable event for nothing; we read and write the raw fd.
		cerr = rc.Control(func(f uintptr) { fd = int(f) })
		keep = nc
	} else {
		cerr = rc.Control(func(f uintptr) { fd, err = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) })
		nc.Close()
	}
	if cerr != nil || err != nil {
		return
	}
	if fd >= len(s.tab) {
		unix.Close(fd)
		return
	}
	c := &econn{fd: int32(fd), gen: s.gen.Add(1), nc: keep}
	s.tab[fd].Store(c)
	s.mu.Lock()
	for int64(len(s.conns)) <= i {
		s.conns = append(s.conns, nil)
	}
	s.conns[i] = c
	s.mu.Unlock()
	live.Add(1)
	ev := unix.EpollEvent{Events: armIn, Fd: int32(fd), Pad: int32(c.gen)}
	if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		c.mu.Lock()
		s.closeLocked(c)
		c.mu.Unlock()
	}
}

func (s *epollServer) poll() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(s.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) { // Go's preemption signals
				continue
			}
			log.Fatalf("epoll_wait: %v", err)
		}
		for k := 0; k < n; k++ {
			e := events[k]
			c := s.tab[e.Fd].Load()
			if c == nil || c.gen != uint32(e.Pad) {
				continue
			}
			for { // c.ev |= e.Events
				old := c.ev.Load()
				if c.ev.CompareAndSwap(old, old|e.Events) {
					break
				}
			}
			_ = s.rdPool.Invoke(c)
		}
	}
}

func (s *epollServer) handle(c *econn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	ev := c.ev.Swap(0)
	if ev&unix.EPOLLOUT != 0 && len(c.out) > 0 {
		out := c.out
		c.out = nil
		if !s.writeLocked(c, out) {
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		bp := rbufPool.Get().(*[]byte)
		n, err := unix.Read(int(c.fd), *bp)
		if err == unix.EAGAIN {
			rbufPool.Put(bp)
		} else if n <= 0 || err != nil {
			rbufPool.Put(bp)
			s.closeLocked(c)
			return
		} else {
			data := (*bp)[:n]
			if len(c.in) > 0 {
				c.in = append(c.in, data...)
				data = c.in
			}
			closing := false
			used, perr := parseFrames(data, func(op ws.OpCode, p []byte) {
				switch op {
				case ws.OpText, ws.OpBinary:
					s.writeLocked(c, serverFrame(op, p))
				case ws.OpPing:
					s.writeLocked(c, serverFrame(ws.OpPong, p))
				case ws.OpClose:
					closing = true
				}
			})
			if rest := data[used:]; len(rest) > 0 && perr == nil {
				c.in = append(c.in[:0:0], rest...) // a partial frame: keep only it
			} else {
				c.in = nil
			}
			rbufPool.Put(bp)
			if closing || perr != nil || c.closed {
				if !c.closed {
					s.closeLocked(c)
				}
				return
			}
		}
	}
	s.arm(c)
}

func (s *epollServer) arm(c *econn) {
	events := uint32(armIn)
	if len(c.out) > 0 {
		events |= unix.EPOLLOUT
	}
	ev := unix.EpollEvent{Events: events, Fd: c.fd, Pad: int32(c.gen)}
	if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev); err != nil {
		s.closeLocked(c)
	}
}

// writeLocked writes what the socket takes now and keeps the rest for
// EPOLLOUT; false if the connection was closed.
func (s *epollServer) writeLocked(c *econn, f []byte) bool {
	if c.closed {
		return false
	}
	if len(c.out) > 0 {
		c.out = append(c.out, f...)
		return true
	}
	n, err := unix.Write(int(c.fd), f)
	if err == unix.EAGAIN {
		n, err = 0, nil
	}
	if err != nil {
		s.closeLocked(c)
		return false
	}
	if n < len(f) {
		c.out = append([]byte(nil), f[n:]...)
	}
	return true
}

func (s *epollServer) closeLocked(c *econn) {
	c.closed = true
	c.in, c.out = nil, nil
	s.tab[c.fd].Store(nil)
	_ = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
	if c.nc != nil {
		_ = c.nc.Close()
		c.nc = nil
	} else {
		_ = unix.Close(int(c.fd))
	}
	live.Add(-1)
}

func (s *epollServer) push(i int, f []byte) error {
	s.mu.Lock()
	c := s.conns[i]
	s.mu.Unlock()
	if c == nil {
		return net.ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	had := len(c.out) > 0
	if !s.writeLocked(c, f) {
		return net.ErrClosed
	}
	if !had && len(c.out) > 0 {
		s.arm(c) // wait for EPOLLOUT too
	}
	return nil
}
