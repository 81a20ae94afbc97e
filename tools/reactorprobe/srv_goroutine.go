package main

import (
	"bufio"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// goroutineServer is today's model: a goroutine per connection that does the
// upgrade, greets, then sits in a read on a small bufio.Reader (redpush's
// reader uses bufio.NewReaderSize(conn, 256) and blocks in Peek(1)).
type goroutineServer struct {
	mu    sync.Mutex
	conns []*gconnG
}

type gconnG struct {
	wmu sync.Mutex
	nc  net.Conn
}

func (s *goroutineServer) start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(nc)
		}
	}()
	return nil
}

func (s *goroutineServer) serve(nc net.Conn) {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := ws.Upgrade(nc); err != nil {
		return
	}
	_ = nc.SetDeadline(time.Time{})
	c := &gconnG{nc: nc}
	s.mu.Lock()
	i := int64(len(s.conns))
	s.conns = append(s.conns, c)
	s.mu.Unlock()
	if _, err := nc.Write(greeting(i)); err != nil {
		return
	}
	registered.Add(1)
	live.Add(1)
	defer live.Add(-1)

	br := bufio.NewReaderSize(nc, 256)
	for {
		if _, err := br.Peek(1); err != nil { // the idle wait
			return
		}
		h, err := ws.ReadHeader(br)
		if err != nil {
			return
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(br, p); err != nil {
			return
		}
		if h.Masked {
			ws.Cipher(p, h.Mask, 0)
		}
		switch h.OpCode {
		case ws.OpText:
			c.write(serverFrame(ws.OpText, p))
		case ws.OpClose:
			return
		}
	}
}

func (c *gconnG) write(f []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(f)
	return err
}

func (s *goroutineServer) push(i int, f []byte) error {
	s.mu.Lock()
	c := s.conns[i]
	s.mu.Unlock()
	return c.write(f)
}
