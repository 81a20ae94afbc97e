package testutil

import (
	"bytes"
	"net"
	"sync"
	"testing"
)

// Proxy forwards TCP connections to a real server (a redis-server) and
// injects the network faults a test needs: an outage (every connection
// cut, new ones closed at once) and a reply lost on its way back. It
// forwards bytes as they are; it does not speak or mimic Redis.
type Proxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu     sync.Mutex
	down   bool
	cutOn  []byte            // when a reply holds these bytes: drop it, go down
	cut    chan struct{}     // closed when cutOn struck
	conns  map[net.Conn]bool // true: a client's side
	muted  map[net.Conn]bool // client sides whose bytes are dropped (MuteClients)
	closed bool
}

// StartProxy listens on a free loopback port and forwards to target.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{t: t, ln: ln, target: target, conns: map[net.Conn]bool{}, muted: map[net.Conn]bool{}}
	go p.accept()
	t.Cleanup(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		_ = ln.Close()
		p.dropAll()
	})
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Down cuts every connection and closes new ones at once, until Heal.
func (p *Proxy) Down() {
	p.mu.Lock()
	p.down = true
	p.mu.Unlock()
	p.dropAll()
}

// Heal forwards new connections again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// CutOnReply arms the proxy: the first chunk the server sends that holds
// marker is not forwarded, and the proxy goes Down at once (so that a
// client's retries fail too). The returned channel closes when that
// happened: the server executed the command, its client never learns it.
func (p *Proxy) CutOnReply(marker string) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutOn = []byte(marker)
	p.cut = make(chan struct{})
	return p.cut
}

// MuteClients drops, from now on, whatever the clients of the connections
// open now send; the server's bytes still reach them. New connections are
// not muted: a client whose requests never arrived reconnects normally.
func (p *Proxy) MuteClients() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c, client := range p.conns {
		if client {
			p.muted[c] = true
		}
	}
}

func (p *Proxy) isMuted(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.muted[c]
}

func (p *Proxy) dropAll() {
	p.mu.Lock()
	all := p.conns
	p.conns = map[net.Conn]bool{}
	p.mu.Unlock()
	for c := range all {
		_ = c.Close()
	}
}

func (p *Proxy) track(client, server net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down || p.closed {
		return false
	}
	p.conns[client], p.conns[server] = true, false
	return true
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			_ = c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !p.track(c, s) {
			_ = c.Close()
			_ = s.Close()
			continue
		}
		go p.pipe(c, s, false)
		go p.pipe(s, c, true)
	}
}

// pipe copies from src to dst; reply says src is the server.
func (p *Proxy) pipe(src, dst net.Conn, reply bool) {
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if reply && p.strike(buf[:n]) {
				p.Down()
				return
			}
			if !reply && p.isMuted(src) {
				continue
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// strike reports whether chunk holds the armed marker, disarming it.
func (p *Proxy) strike(chunk []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cutOn == nil || !bytes.Contains(chunk, p.cutOn) {
		return false
	}
	p.cutOn = nil
	p.down = true
	close(p.cut)
	return true
}
