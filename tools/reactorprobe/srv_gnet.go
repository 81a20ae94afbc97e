package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/ants/v2"
	"github.com/panjf2000/gnet/v2"
	"github.com/panjf2000/gnet/v2/pkg/logging"
)

// gnetServer runs gnet/v2 event loops (one per core). Two ways in:
//
//   - gnet: gnet owns the listener. The HTTP request arrives as bytes in
//     OnTraffic; the handshake is parsed from gnet's buffer with ws.Upgrade
//     on an io.ReadWriter (a bytes.Reader over the request head, gnet.Conn as
//     the writer). A request that is not a WebSocket upgrade is parsed with
//     http.ReadRequest and served by an http.Handler through a buffering
//     ResponseWriter, then closed: that is what "HTTP on the same port" costs
//     when gnet owns the port (no keep-alive, no request body streaming, no
//     TLS, no HTTP/2 unless written by hand).
//   - gnet-enroll: Go's net.Listener (or net/http + Hijack) keeps the port
//     and does ws.Upgrade as today; the upgraded net.Conn is handed to gnet
//     with Engine.Register(NewNetConnContext(...)), which dups the fd,
//     closes the net.Conn and polls the dup in its own loop. gnet itself
//     still needs a listener of its own (here on 127.0.0.1:0, unused).
//
// An open connection's context is the bool true (no allocation); nil means
// the handshake is not done.
type gnetServer struct {
	gnet.BuiltinEventEngine
	enroll  bool
	workers int

	eng    gnet.Engine
	booted chan struct{}
	pool   *ants.Pool

	mu    sync.Mutex
	conns []gnet.Conn
}

func (s *gnetServer) start(addr string) error {
	s.booted = make(chan struct{})
	gaddr := "tcp://" + addr
	if s.enroll {
		gaddr = "tcp://127.0.0.1:0"
	}
	errc := make(chan error, 1)
	go func() {
		errc <- gnet.Run(s, gaddr,
			gnet.WithMulticore(true),
			gnet.WithLoadBalancing(gnet.LeastConnections), // Register needs a non-RoundRobin balancer
			gnet.WithLogLevel(logging.WarnLevel),
		)
	}()
	select {
	case err := <-errc:
		return err
	case <-s.booted:
	}
	if !s.enroll {
		return nil
	}
	var err error
	if s.pool, err = ants.NewPool(s.workers); err != nil {
		return err
	}
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
			if err := s.pool.Submit(func() { s.upgradeEnroll(nc) }); err != nil {
				nc.Close()
			}
		}
	}()
	return nil
}

func (s *gnetServer) upgradeEnroll(nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := ws.Upgrade(nc); err != nil {
		nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	ctx := gnet.NewContext(gnet.NewNetConnContext(context.Background(), nc), true)
	ch, err := s.eng.Register(ctx)
	if err != nil {
		nc.Close()
		return
	}
	<-ch // OnOpen has run (and greeted) on the loop
}

func (s *gnetServer) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	close(s.booted)
	return gnet.None
}

func (s *gnetServer) register(c gnet.Conn) []byte {
	s.mu.Lock()
	i := len(s.conns)
	s.conns = append(s.conns, c)
	s.mu.Unlock()
	registered.Add(1)
	live.Add(1)
	return greeting(int64(i))
}

func (s *gnetServer) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	if c.Context() == true { // enrolled, already upgraded
		return s.register(c), gnet.None
	}
	return nil, gnet.None
}

func (s *gnetServer) OnClose(c gnet.Conn, _ error) gnet.Action {
	if c.Context() == true {
		live.Add(-1)
	}
	return gnet.None
}

var crlf2 = []byte("\r\n\r\n")

func (s *gnetServer) OnTraffic(c gnet.Conn) gnet.Action {
	buf, _ := c.Peek(-1)
	if probeDebug {
		log.Printf("traffic fd=%d ctx=%v n=%d", c.Fd(), c.Context(), len(buf))
	}
	if c.Context() == nil {
		end := bytes.Index(buf, crlf2)
		if end < 0 {
			if len(buf) > 8<<10 {
				return gnet.Close
			}
			return gnet.None // wait for the rest of the head, gnet keeps it
		}
		head := buf[:end+4]
		if !isUpgrade(head) {
			serveHTTP(c, head)
			return gnet.Close
		}
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(head), c}
		if _, err := ws.Upgrade(rw); err != nil {
			return gnet.Close
		}
		c.SetContext(true)
		_, _ = c.Discard(len(head))
		if _, err := c.Write(s.register(c)); err != nil {
			return gnet.Close
		}
		if buf, _ = c.Peek(-1); len(buf) == 0 {
			return gnet.None
		}
	}
	closing := false
	used, err := parseFrames(buf, func(op ws.OpCode, p []byte) {
		switch op {
		case ws.OpText, ws.OpBinary:
			_, _ = c.Write(serverFrame(op, p))
		case ws.OpPing:
			_, _ = c.Write(serverFrame(ws.OpPong, p))
		case ws.OpClose:
			closing = true
		}
	})
	// An incomplete tail stays in gnet's inbound buffer. Trap: Discard(n)
	// with n <= 0 discards EVERYTHING buffered, so never call Discard(0).
	if used > 0 {
		_, _ = c.Discard(used)
	}
	if err != nil || closing {
		return gnet.Close
	}
	return gnet.None
}

func (s *gnetServer) push(i int, f []byte) error {
	s.mu.Lock()
	c := s.conns[i]
	s.mu.Unlock()
	return c.AsyncWrite(f, nil) // concurrency-safe: queued to the loop
}

func isUpgrade(head []byte) bool {
	h := strings.ToLower(string(head))
	return strings.Contains(h, "\r\nupgrade: websocket")
}

// serveHTTP answers a plain HTTP request on the gnet port: parse, run an
// http.Handler into a buffer, write, close. Enough for /healthz or
// /metrics; not a real HTTP server.
func serveHTTP(c gnet.Conn, head []byte) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"))
		return
	}
	rw := &bufResponse{h: http.Header{}, code: 200}
	httpMux.ServeHTTP(rw, req)
	var out bytes.Buffer
	fmt.Fprintf(&out, "HTTP/1.1 %d %s\r\n", rw.code, http.StatusText(rw.code))
	rw.h.Set("Content-Length", fmt.Sprint(rw.body.Len()))
	rw.h.Set("Connection", "close")
	_ = rw.h.Write(&out)
	out.WriteString("\r\n")
	out.Write(rw.body.Bytes())
	_, _ = c.Write(out.Bytes())
}

type bufResponse struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func (r *bufResponse) Header() http.Header         { return r.h }
func (r *bufResponse) Write(p []byte) (int, error) { return r.body.Write(p) }
func (r *bufResponse) WriteHeader(code int)        { r.code = code }

var httpMux = func() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "ok live=%d\n", live.Load())
	})
	return m
}()

var probeDebug = os.Getenv("PROBE_DEBUG") != ""
