package main

import (
	"bufio"
	"net"
	"time"

	"github.com/redpush/redpush/internal/resp3"
)

// respConn is one full-duplex RESP3 connection: pushes and replies
// interleave on it (go-redis cannot read a push on an idle connection;
// internal/resp3 says why).
type respConn struct {
	c   net.Conn
	r   *resp3.Reader
	w   *bufio.Writer
	buf []byte
}

func dialRESP3(addr string) (*respConn, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	rc := &respConn{c: c, r: resp3.NewReader(c), w: bufio.NewWriterSize(c, 64<<10)}
	if _, err := rc.do("HELLO", "3"); err != nil {
		c.Close()
		return nil, err
	}
	return rc, nil
}

// do sends one command and reads its reply (setup only: pushes that come
// first are skipped).
func (rc *respConn) do(args ...string) (any, error) {
	rc.write(args...)
	if err := rc.w.Flush(); err != nil {
		return nil, err
	}
	for {
		v, err := rc.read()
		if err != nil {
			return nil, err
		}
		if _, ok := v.(resp3.Push); ok {
			continue
		}
		if e, ok := v.(resp3.Error); ok {
			return nil, e
		}
		return v, nil
	}
}

// write buffers one command; the caller flushes rc.w.
func (rc *respConn) write(args ...string) {
	rc.buf = resp3.AppendCommand(rc.buf[:0], args...)
	rc.w.Write(rc.buf)
}

func (rc *respConn) read() (any, error) { return rc.r.Read() }
