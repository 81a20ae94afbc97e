package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// clients holds the bench's WebSocket connections.
type clients struct {
	cfg       *config
	tr        *tracker
	connected atomic.Int64
	failed    atomic.Int64
	wg        sync.WaitGroup
	mu        sync.Mutex
	conns     []net.Conn
	states    []*connState
}

// connectAll dials users × conns-per-user connections at -connect-rate,
// spreading them over -source-ips, and starts a reader for each.
func (cs *clients) connectAll(ctx context.Context) {
	var tick <-chan time.Time
	if cs.cfg.connectRate > 0 {
		t := time.NewTicker(time.Second / time.Duration(cs.cfg.connectRate))
		defer t.Stop()
		tick = t.C
	}
	sem := make(chan struct{}, 64) // dials in flight
	var wg sync.WaitGroup
	i := 0
	for u := cs.cfg.firstUser; u < cs.cfg.firstUser+cs.cfg.users; u++ {
		for range cs.cfg.connsPerUser {
			if tick != nil {
				select {
				case <-tick:
				case <-ctx.Done():
					wg.Wait()
					return
				}
			}
			sem <- struct{}{}
			wg.Add(1)
			go func(user string, i int) {
				defer wg.Done()
				defer func() { <-sem }()
				cs.connect(ctx, user, i)
			}(userName(u), i)
			i++
		}
	}
	wg.Wait()
}

func userName(u int) string { return fmt.Sprint(u) }

func (cs *clients) connect(ctx context.Context, user string, i int) {
	d := ws.Dialer{Timeout: 10 * time.Second}
	if ips := cs.cfg.sourceIPs; len(ips) > 0 {
		local := &net.TCPAddr{IP: ips[i%len(ips)]}
		d.NetDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return (&net.Dialer{LocalAddr: local}).DialContext(ctx, network, addr)
		}
	}
	u := cs.cfg.url + "?user_id=" + url.QueryEscape(user)
	if cs.cfg.ack {
		u += "&ack=1"
	}
	c, br, _, err := d.Dial(ctx, u)
	if err != nil {
		cs.failed.Add(1)
		if cs.failed.Load() <= 3 {
			logf("connect %s: %v", user, err)
		}
		return
	}
	r := bufio.NewReaderSize(c, 16<<10)
	if br != nil {
		r = bufio.NewReaderSize(io.MultiReader(br, c), 16<<10)
	}
	st := cs.tr.newConn(user, i)
	cs.mu.Lock()
	cs.conns = append(cs.conns, c)
	cs.states = append(cs.states, st)
	cs.mu.Unlock()
	greeted := make(chan struct{})
	cs.wg.Add(1)
	go func() {
		defer cs.wg.Done()
		cs.read(c, r, st, greeted)
	}()
	select { // counted as connected once the greeting arrived
	case <-greeted:
		cs.connected.Add(1)
	case <-time.After(10 * time.Second):
		cs.failed.Add(1)
	}
}

// read parses frames until the connection closes. It answers pings (the
// server's idle check) and skips the greeting and the hello replies.
func (cs *clients) read(c net.Conn, r *bufio.Reader, st *connState, greeted chan struct{}) {
	var wmu sync.Mutex
	buf := make([]byte, 0, 4096)
	first := true
	for {
		h, err := ws.ReadHeader(r)
		if err != nil {
			return
		}
		if int64(cap(buf)) < h.Length {
			buf = make([]byte, h.Length)
		}
		p := buf[:h.Length]
		if _, err := io.ReadFull(r, p); err != nil {
			return
		}
		now := time.Now()
		switch h.OpCode {
		case ws.OpPing:
			wmu.Lock()
			_ = ws.WriteFrame(c, ws.MaskFrameInPlace(ws.NewPongFrame(p)))
			wmu.Unlock()
			continue
		case ws.OpClose:
			return
		case ws.OpText, ws.OpBinary:
		default:
			continue
		}
		if first {
			first = false
			close(greeted)
			continue
		}
		if cs.cfg.ack {
			cs.takeAcked(c, &wmu, st, p, now)
			continue
		}
		s, err := parseFrame(cs.cfg.format, p)
		if err != nil {
			cs.tr.garbage.Add(1)
			continue
		}
		cs.tr.record(st, s, now)
	}
}

// takeAcked books a pushed frame of acknowledged delivery and acknowledges
// it at once, as a client that handled it would: the time from the push
// to that acknowledgement's write is the ack latency.
func (cs *clients) takeAcked(c net.Conn, wmu *sync.Mutex, st *connState, p []byte, now time.Time) {
	id, data, redelivered, ok := parseAckFrame(p)
	if !ok {
		cs.tr.garbage.Add(1)
		return
	}
	s, err := parsePayload(data)
	if err != nil {
		cs.tr.garbage.Add(1)
		return
	}
	if redelivered {
		cs.tr.redelivered.Add(1)
	}
	cs.tr.record(st, s, now)
	frame := ackFrame(id)
	wmu.Lock()
	err = ws.WriteFrame(c, ws.MaskFrameInPlace(frame))
	wmu.Unlock()
	if err == nil {
		cs.tr.recordAck(st, s, time.Now())
	}
}

// closeAll closes every connection and waits for the readers.
func (cs *clients) closeAll() {
	cs.mu.Lock()
	for _, c := range cs.conns {
		_ = c.Close()
	}
	cs.mu.Unlock()
	cs.wg.Wait()
}

// userIndex is the index of userName(u+1) in a run whose first user is 1.
func userIndex(name string) int {
	n, _ := strconv.Atoi(name)
	return n - 1
}
